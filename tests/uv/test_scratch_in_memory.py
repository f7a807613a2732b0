"""The uv calls made for every project (export, probe) get their TMPDIR in memory, never on disk.

Each makes and removes a dozen files and folders there (warmd's scratch, `--no-cache`'s throw-away
cache, uv's lock files). On ext4 without a journal every later file creation skips the inodes freed
in the last minutes, so that churn on disk made each project of a daemon's start-up slower than the
one before (bench row 13). This checks where the folders are, while uv runs.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.daemon import WAIT, uv_children
from tests.support.index_server import IndexServer
from tests.support.projects import locked_project, torch_like_set
from warmd.uv import Uv

KiB = 1024


def _while_uv_runs(call: Callable[[], object], hold: Callable[[], None], release: Callable[[], None],
                   look: Callable[[], dict[str, list[str]]]) -> tuple[dict[str, list[str]], list[object]]:
    """Run `call` in a thread with uv held by `hold`; what `look` sees while its uv child waits."""
    out: list[object] = []
    hold()
    t = threading.Thread(target=lambda: out.append(call()))
    try:
        t.start()
        deadline = time.monotonic() + WAIT
        while not uv_children() and time.monotonic() < deadline:
            time.sleep(0.01)  # /proc has no event to wait on
        assert uv_children(), "uv never started"
        seen = look()
    finally:
        release()
        t.join(WAIT)
    assert not t.is_alive()
    return seen, out


@pytest.mark.parametrize("call", ["export", "sync --dry-run"])
def test_the_per_project_uv_calls_make_their_scratch_in_memory_not_in_tmpdir(
        call: str, tmp_path: Path, index_server: IndexServer, wheel_dir: Path, uv_bin: Path, uv_cache: Path,
        uv_environ: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    ws = torch_like_set(index_server, wheel_dir, "cu128", size=16 * KiB, pythons=("cp311",))
    app = locked_project(tmp_path, "app", server=index_server, ws=ws, uv=uv_bin, env=uv_environ)
    disk, memory = tmp_path / "tmpdir", tmp_path / "runtime"
    disk.mkdir()
    memory.mkdir(mode=0o700)
    monkeypatch.setenv("TMPDIR", str(disk))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(memory))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    uv = Uv(str(uv_bin), cache_dir=uv_cache, env=uv_environ)
    held: list[int] = []

    if call == "export":  # it uses no cache: held where it really waits, opening the user's uv.toml (a FIFO)
        fifo = Path(uv_environ["XDG_CONFIG_HOME"]) / "uv" / "uv.toml"
        fifo.parent.mkdir(parents=True)
        os.mkfifo(fifo)

        def hold() -> None:
            pass

        def release() -> None:
            os.close(os.open(fifo, os.O_WRONLY))  # uv reads an empty uv.toml and goes on

        def run() -> object:
            return uv.export(app, [])
    else:  # the dry run waits on uv's cache, held as `uv cache clean` holds it
        def hold() -> None:
            held.append(os.open(uv_cache / ".lock", os.O_RDWR | os.O_CREAT, 0o644))
            fcntl.flock(held[0], fcntl.LOCK_EX)

        def release() -> None:
            os.close(held[0])

        def run() -> object:
            return uv.probe(app, selected=["torch"], others=[], python="3.11")

    seen, out = _while_uv_runs(run, hold, release, lambda: {
        "disk": sorted(p.name for p in disk.iterdir()), "memory": sorted(p.name for p in memory.iterdir())})
    assert seen["disk"] == [], seen
    prefixes = ["warmd-uv-"] + (["warmd-probe-"] if call != "export" else [])
    assert sorted({n[:n.index("-", len("warmd-")) + 1] for n in seen["memory"]}) == sorted(prefixes), seen
    assert out and out[0], "uv gave no answer"
    assert list(disk.iterdir()) == [] and list(memory.iterdir()) == []  # and none is left behind
