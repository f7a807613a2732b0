"""Shared fixtures: the local index server, the real uv binaries, an isolated uv cache."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# `tests.support` is imported by its package path (also what `python -m tests.support.index_server`
# uses); the pytest entry script does not put the repo root on sys.path by itself.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.config import forget as forget_configs  # noqa: E402
from tests.support.index_server import IndexServer  # noqa: E402
from tests.support.network import (  # noqa: E402,F401  (pytest finds hooks and fixtures by name here)
    _internet_when_marked,
    pytest_collection_finish,
    pytest_report_header,
    pytest_runtest_call,
    pytest_runtest_teardown,
    pytest_terminal_summary,
    pytest_unconfigure,
)
from tests.support.prereqs import need  # noqa: E402
from tests.support.projects import uv_env  # noqa: E402
from tests.support.tls import TlsFiles, make_tls  # noqa: E402

pytest_plugins = ["pytester"]  # test_loopback runs whole pytest sessions to show the guard fails them


@pytest.fixture(scope="session", autouse=True)
def _per_user_folders_of_the_runs_own(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The per-user folders warmd and uv default to (XDG config, cache and state) lie in the run's own
    tmp, for this process and every child: no test reads or writes the real user's (a state database
    a newer warmd left there, a uv.toml of the developer's)."""
    base = tmp_path_factory.mktemp("xdg")
    folders = {"XDG_CONFIG_HOME": base / "config", "XDG_CACHE_HOME": base / "cache", "XDG_STATE_HOME": base / "state"}
    saved = {k: os.environ.get(k) for k in folders}
    os.environ.update({k: str(v) for k, v in folders.items()})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(autouse=True)
def _configs_of_this_test() -> Iterator[None]:
    """A lab server started in a later test rewrites none of this test's configs."""
    yield
    forget_configs()


@pytest.fixture
def index_server() -> Iterator[IndexServer]:
    """A started PyTorch-like index on 127.0.0.1 (no-store wheels), stopped after the test."""
    with IndexServer(vouched=True) as server:
        yield server


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A CA made for this test run and a certificate it issued for 127.0.0.1."""
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def https_index_server(tls_files: TlsFiles) -> Iterator[IndexServer]:
    """index_server over HTTPS: clients trust it only through SSL_CERT_FILE (see https_environ)."""
    with IndexServer(tls=tls_files, vouched=True) as server:
        yield server


@pytest.fixture
def https_environ(uv_environ: dict[str, str], tls_files: TlsFiles) -> dict[str, str]:
    """uv_environ plus SSL_CERT_FILE naming the run's CA, for uv and warmd alike."""
    return uv_environ | tls_files.env()


@pytest.fixture(scope="session")
def uv_bin() -> Path:
    """The uv pinned in the dev dependencies (0.13.9), from the venv running the tests."""
    found = shutil.which("uv", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(f"no uv beside {sys.executable}: run `uv sync` in {REPO}")
    return Path(found)


@pytest.fixture(scope="session")
def uv_old_bin() -> Path:
    """uv 0.8.2 (the release of the original report): WARMD_TEST_UV_OLD, or .tools/ (installed at set-up)."""
    return need("uv-old")


@pytest.fixture(scope="session")
def uv_older_bin() -> Path:
    """uv 0.8.0, older than warmd supports (doctor warns about it)."""
    return need("uv-older")


@pytest.fixture
def uv_cache(tmp_path: Path) -> Path:
    """An empty uv cache folder for this test."""
    path = tmp_path / "uv-cache"
    path.mkdir()
    return path


@pytest.fixture
def uv_environ(uv_cache: Path) -> dict[str, str]:
    """Environment for running uv against uv_cache, isolated from the developer's uv settings."""
    return uv_env(uv_cache)


@pytest.fixture
def wheel_dir(tmp_path: Path) -> Path:
    """A folder for synthetic wheels."""
    path = tmp_path / "wheels"
    path.mkdir()
    return path
