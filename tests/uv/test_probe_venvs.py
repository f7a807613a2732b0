"""The probe names an empty venv of warmd's (state folder, `probe-venvs`) as the project's environment.

With a path that does not exist, uv builds a throw-away venv in `<cache>/builds-v0` and removes it
again on every probe: on a disk that churn slows every later file creation (bench row 13). These
check that the pooled venv gives uv's same answer with every uv warmd meets, leaves uv's cache
without that folder, is never changed by the dry run but for uv's `.lock`, serves one probe at a
time, keeps its path from process to process (uv records an interpreter entry per venv path), and
is made again when it no longer fits its interpreter.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import run_warmd
from tests.support.config import OFFLINE_PACKAGES, write_warmd_config
from tests.support.daemon import WAIT, uv_children
from tests.support.index_server import PYPI_CACHE_CONTROL, IndexServer
from tests.support.prereqs import need
from tests.support.projects import locked_project, run_uv, torch_like_set, uv_env
from tests.support.uvplan import find_interpreter, tree
from warmd.uv import PROBE_VENVS, ProbeResult, Uv

KiB = 1024
NAMES = ["torch", "pytorch-triton", "nvidia-nvtx-cu12", "filelock"]


@pytest.fixture
def keeping_server() -> Iterator[IndexServer]:
    """A lab index whose files uv keeps (PyPI's headers everywhere), so a real `uv sync` warms its cache."""
    with IndexServer(vouched=True, cache_control=PYPI_CACHE_CONTROL) as server:
        yield server


def _uv_named(name: str, uv_bin: Path) -> Path:
    return uv_bin if name == "uv" else need(name)


def _slots(folder: Path) -> dict[str, int]:
    """The pool's venvs by name, each with its folder's inode (a venv made again is a new folder)."""
    return {p.name: p.stat().st_ino for p in folder.iterdir()} if folder.exists() else {}


def _venv_tree(venv: Path) -> dict[str, tuple]:
    """Everything in a venv, folder mtimes included, but uv's `.lock` (the flock it takes there)."""
    return {k: v for k, v in tree(venv, folder_mtimes=True).items() if k != ".lock"}


def _sync(uv: Path, project: Path, python: Path, env: dict[str, str], venv: Path, *, leave_out: list[str]) -> None:
    """A real `uv sync` into a venv of the test's, which warms uv's cache with what it installs."""
    run_uv(uv, ["sync", "--frozen", f"--python={python}", *(f"--no-install-package={n}" for n in leave_out)],
           cwd=project, env=dict(env, UV_PROJECT_ENVIRONMENT=str(venv)))
    shutil.rmtree(venv)


@pytest.mark.parametrize("uv_name", ["uv", "uv-old", "uv-older"])
def test_the_pooled_venv_answers_as_a_fresh_one_and_leaves_no_builds_folder_in_uvs_cache(
        uv_name: str, tmp_path: Path, keeping_server: IndexServer, wheel_dir: Path, uv_bin: Path, uv_cache: Path,
        uv_environ: dict[str, str]) -> None:
    """uv 0.13.9, 0.8.2 and 0.8.0 alike: cold, partly warm and warm, the same answer as with a venv path
    that does not exist (today's probe, kept for the dry run), and nothing in the venv changes."""
    uv_exe = _uv_named(uv_name, uv_bin)
    ws = torch_like_set(keeping_server, wheel_dir, "cu128", size=16 * KiB, pythons=("cp311",))
    # Locked with a cache of its own: the probe's cache starts empty.
    app = locked_project(tmp_path, "app", server=keeping_server, ws=ws, uv=uv_exe, env=uv_env(tmp_path / "lock-cache"))
    python = find_interpreter("3.11", uv_bin)
    pool = tmp_path / "state" / PROBE_VENVS
    pooled = Uv(str(uv_exe), cache_dir=uv_cache, env=uv_environ, probe_venvs=pool)
    fresh = Uv(str(uv_exe), cache_dir=uv_cache, env=uv_environ)

    def both() -> ProbeResult:
        answer = pooled.probe(app, selected=NAMES, others=NAMES, python=str(python))
        assert answer == fresh.probe(app, selected=NAMES, others=NAMES, python=str(python))
        return answer

    cold = pooled.probe(app, selected=NAMES, others=NAMES, python=str(python))
    assert not (uv_cache / "builds-v0").exists(), sorted(os.listdir(uv_cache))
    assert cold == ProbeResult(cold=frozenset(NAMES))
    [slot] = pool.iterdir()
    venv = _venv_tree(slot)
    assert both() == cold

    _sync(uv_exe, app, python, uv_environ, tmp_path / "venv", leave_out=["pytorch-triton", "nvidia-nvtx-cu12"])
    assert both() == ProbeResult(warm=frozenset({"torch", "filelock"}), cold=frozenset({"pytorch-triton", "nvidia-nvtx-cu12"}))
    _sync(uv_exe, app, python, uv_environ, tmp_path / "venv", leave_out=[])
    assert both() == ProbeResult(warm=frozenset(NAMES))
    assert [p.name for p in pool.iterdir()] == [slot.name]
    assert _venv_tree(slot) == venv, "the dry run changed the pooled venv"


def _sync_children() -> list[int]:
    """This process's uv children that run `uv sync` (not `uv venv` making a pooled venv)."""
    found = []
    for pid in uv_children():
        try:
            if b"\0sync\0" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


def test_two_probes_of_one_interpreter_at_once_both_answer_each_in_a_venv_of_its_own(
        tmp_path: Path, index_server: IndexServer, wheel_dir: Path, uv_bin: Path, uv_cache: Path,
        uv_environ: dict[str, str]) -> None:
    """uv holds a venv's `.lock` for the whole dry run: a probe never waits on one another probe of
    the process holds; the pool grows to the probes that ran at once, no further."""
    ws = torch_like_set(index_server, wheel_dir, "cu128", size=16 * KiB, pythons=("cp311",))
    app = locked_project(tmp_path, "app", server=index_server, ws=ws, uv=uv_bin, env=uv_env(tmp_path / "lock-cache"))
    python = find_interpreter("3.11", uv_bin)
    pool = tmp_path / "state" / PROBE_VENVS
    uv = Uv(str(uv_bin), cache_dir=uv_cache, env=uv_environ, probe_venvs=pool)
    answers: list[ProbeResult] = []
    # Both uv's wait on uv's cache, held as `uv cache clean` holds it, so they run at once.
    held = os.open(uv_cache / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(held, fcntl.LOCK_EX)
    threads = [threading.Thread(target=lambda: answers.append(uv.probe(app, selected=["torch"], others=NAMES,
                                                                       python=str(python))))
               for _ in range(2)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + WAIT
        while len(_sync_children()) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)  # /proc has no event to wait on
        assert len(_sync_children()) == 2, "the two probes never ran at once"
    finally:
        os.close(held)
        for t in threads:
            t.join(WAIT)
    assert not any(t.is_alive() for t in threads)
    assert answers == [ProbeResult(cold=frozenset({"torch"}))] * 2
    assert len(_slots(pool)) == 2, sorted(_slots(pool))
    uv.probe(app, selected=["torch"], others=NAMES, python=str(python))  # one at a time: a venv is free
    assert len(_slots(pool)) == 2
    assert not (uv_cache / "builds-v0").exists()


def test_a_second_warmd_process_probes_in_the_venvs_the_first_made(
        tmp_path: Path, index_server: IndexServer, wheel_dir: Path, uv_bin: Path, uv_cache: Path,
        uv_environ: dict[str, str]) -> None:
    """Two `warmd prefetch` runs: the second makes no venv (uv's cache keeps one interpreter entry per
    venv path, so a new path per process would leave one more there on every run)."""
    ws = torch_like_set(index_server, wheel_dir, "cu128", size=16 * KiB, pythons=("cp311",))
    app = locked_project(tmp_path, "app", server=index_server, ws=ws, uv=uv_bin, env=uv_env(tmp_path / "lock-cache"))
    config = write_warmd_config(tmp_path, uv_bin, uv_cache, packages=OFFLINE_PACKAGES)
    pool = tmp_path / "state" / PROBE_VENVS
    first = run_warmd(config, "prefetch", app, env=uv_environ)
    assert first.returncode == 0, first.stderr[-3000:]
    made = _slots(pool)
    assert made and all(re.fullmatch(r"[0-9a-f]{12}-\d+", n) for n in made), sorted(made)
    interpreters = sorted(str(p.relative_to(uv_cache)) for p in uv_cache.glob("interpreter-v*/**/*"))
    second = run_warmd(config, "prefetch", app, env=uv_environ)
    assert second.returncode == 0, second.stderr[-3000:]
    assert _slots(pool) == made
    assert sorted(str(p.relative_to(uv_cache)) for p in uv_cache.glob("interpreter-v*/**/*")) == interpreters
    assert not (uv_cache / "builds-v0").exists()  # neither run's probes, nor its imports, made one


@pytest.mark.parametrize("breakage", ["another version", "no interpreter"])
def test_a_venv_that_no_longer_fits_its_interpreter_is_made_again(
        breakage: str, tmp_path: Path, index_server: IndexServer, wheel_dir: Path, uv_bin: Path, uv_cache: Path,
        uv_environ: dict[str, str]) -> None:
    """An interpreter upgraded in place (pyvenv.cfg names the old version), or a venv broken: uv would
    plan to replace it (and build a throw-away venv again), or, 0.8.0, refuse it."""
    ws = torch_like_set(index_server, wheel_dir, "cu128", size=16 * KiB, pythons=("cp311",))
    app = locked_project(tmp_path, "app", server=index_server, ws=ws, uv=uv_bin, env=uv_env(tmp_path / "lock-cache"))
    python = find_interpreter("3.11", uv_bin)
    pool = tmp_path / "state" / PROBE_VENVS
    Uv(str(uv_bin), cache_dir=uv_cache, env=uv_environ, probe_venvs=pool).probe(
        app, selected=["torch"], others=NAMES, python=str(python))
    [slot] = pool.iterdir()
    cfg = (slot / "pyvenv.cfg").read_text()
    if breakage == "another version":
        (slot / "pyvenv.cfg").write_text(re.sub(r"(?m)^version_info = .*$", "version_info = 3.0.0", cfg))
    else:
        (slot / "bin" / "python").unlink()
    before = _slots(pool)
    shutil.rmtree(uv_cache)
    uv_cache.mkdir()

    answer = Uv(str(uv_bin), cache_dir=uv_cache, env=uv_environ, probe_venvs=pool).probe(
        app, selected=["torch"], others=NAMES, python=str(python))
    assert answer == ProbeResult(cold=frozenset({"torch"}))
    after = _slots(pool)
    assert after.keys() == before.keys() and after != before, "not made again, or made beside the old one"
    assert (slot / "pyvenv.cfg").read_text() == cfg and os.path.samefile(slot / "bin" / "python", python)
    assert not (uv_cache / "builds-v0").exists(), "uv did not take the venv made again"
