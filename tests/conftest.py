"""Shared fixtures: the local index server, the real uv binaries, an isolated uv cache."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# `tests.support` is imported by its package path (also what `python -m tests.support.index_server`
# uses); the pytest entry script does not put the repo root on sys.path by itself.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.index_server import IndexServer  # noqa: E402
from tests.support.projects import uv_env  # noqa: E402
from tests.support.tls import TlsFiles, make_tls  # noqa: E402

UV_OLD_VERSION = "0.8.2"


@pytest.fixture
def index_server() -> Iterator[IndexServer]:
    """A started PyTorch-like index on 127.0.0.1 (no-store wheels), stopped after the test."""
    with IndexServer() as server:
        yield server


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A CA made for this test run and a certificate it issued for 127.0.0.1."""
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def https_index_server(tls_files: TlsFiles) -> Iterator[IndexServer]:
    """index_server over HTTPS: clients trust it only through SSL_CERT_FILE (see https_environ)."""
    with IndexServer(tls=tls_files) as server:
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


def _old_uv_path() -> Path:
    override = os.environ.get("WARMD_TEST_UV_OLD")
    if override:
        return Path(override)
    return REPO / ".tools" / f"uv-{UV_OLD_VERSION}" / "bin" / "uv"


@pytest.fixture(scope="session")
def uv_old_bin(uv_bin: Path) -> Path:
    """uv 0.8.2 (the release of the original report): WARMD_TEST_UV_OLD, or installed once into .tools/."""
    path = _old_uv_path()
    if path.is_file():
        return path
    if os.environ.get("WARMD_TEST_UV_OLD"):
        pytest.skip(f"WARMD_TEST_UV_OLD={path} does not exist")
    target = path.parent.parent
    target.parent.mkdir(parents=True, exist_ok=True)
    # install beside the final folder and rename, so a parallel or interrupted run never sees half
    staging = Path(tempfile.mkdtemp(prefix=f".uv-{UV_OLD_VERSION}-", dir=target.parent))
    staging.chmod(0o755)
    try:
        proc = subprocess.run(
            [str(uv_bin), "pip", "install", "--quiet", "--target", str(staging), f"uv=={UV_OLD_VERSION}"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if proc.returncode != 0:
            pytest.skip(f"uv {UV_OLD_VERSION} not available and could not be installed: {proc.stderr.strip()[-300:]}")
        try:
            staging.rename(target)
        except OSError:
            if not path.is_file():  # another run won the race only if its binary is there
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not path.is_file():
        pytest.skip(f"installing uv {UV_OLD_VERSION} left no {path}")
    return path


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
