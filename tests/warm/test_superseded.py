"""Work for a lock that changed is superseded, not failed; a run called off stops its uv at once and
leaves no scratch; uv's own reasons reach the report; a killed warmd's scratch is swept, a live one's not.

uv is held where it really waits: on the exclusive lock of its cache (what `uv cache clean` takes),
so a run is caught in the middle of a real uv call without faking uv.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.cli import warmd_argv
from tests.support.config import write_warmd_config
from tests.support.daemon import WAIT, scratch_made, uv_children
from tests.support.index_server import IndexServer
from tests.support.projects import locked_project, torch_like_set
from warmd.base import Cancelled, CancelToken, Owner, UvError, cancel, load_config, scratch
from warmd.warm import Pipeline
from warmd.cli import project_statuses
from warmd.state import State
from warmd.uv import Project, Uv

KiB = 1024


@contextmanager
def uv_cache_held(cache: Path) -> Iterator[None]:
    """Hold uv's cache exclusively, as `uv cache clean` does: every uv that uses the cache waits."""
    fd = os.open(cache / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@pytest.fixture
def own_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A TMPDIR of this test's own, for this process and the warmd it starts; its memory folder too
    (XDG_RUNTIME_DIR: where the per-project uv calls get theirs)."""
    folder = tmp_path / "tmpdir"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    return folder


def _litter(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("warmd-"))


def test_a_run_called_off_stops_its_uv_now_records_nothing_and_leaves_no_scratch(
        tmp_path: Path, index_server: IndexServer, wheel_dir: Path, uv_bin: Path, uv_cache: Path,
        uv_environ: dict[str, str], own_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = torch_like_set(index_server, wheel_dir, "cu128", size=64 * KiB, pythons=("cp311",))
    app = locked_project(tmp_path, "app", server=index_server, ws=ws, uv=uv_bin, env=uv_environ)
    for k, v in uv_environ.items():
        monkeypatch.setenv(k, v)
    config = load_config(write_warmd_config(tmp_path, uv_bin, uv_cache))
    state = State.open(config.state_dir)
    pipeline = Pipeline(config, state=state)
    token = CancelToken()
    out: list = []
    try:
        with uv_cache_held(uv_cache), scratch_made(own_tmp) as made:
            def run() -> None:
                with cancel.scope(token):
                    out.extend(pipeline.warm([Project.of(app)]))

            t = threading.Thread(target=run)
            t.start()
            assert made.wait(WAIT)  # the probe's scratch folder: its uv starts now, and waits on the cache
            children = _poll(uv_children)
            assert children, "no uv child to call off"
            token.cancel("uv.lock changed while it was warmed")
            t.join(WAIT)  # within the cache lock still held: the uv child was killed, not waited for
            assert not t.is_alive()
        assert all(not _alive(pid) for pid in children)
    finally:
        pipeline.close()
    [report] = out
    assert report.superseded == "uv.lock changed while it was warmed" and report.error is None
    assert report.wheels == () and not report.ok
    assert _litter(own_tmp) == []
    assert project_statuses(state) == []  # nothing was recorded for work that said nothing
    state.close()


@pytest.mark.parametrize("call", ["python find", "export", "sync --dry-run", "lock"])
def test_a_uv_called_off_mid_call_raises_cancelled_never_an_answer_and_leaves_tmpdir_empty(
        call: str, tmp_path: Path, index_server: IndexServer, wheel_dir: Path, uv_bin: Path, uv_cache: Path,
        uv_environ: dict[str, str], own_tmp: Path) -> None:
    """Whichever uv call a superseded run is in, it ends in Cancelled: not "no interpreter", not a
    failed plan; uv's TMPDIR (warmd's scratch) goes with it, uv's own `.tmp*` in it."""
    ws = torch_like_set(index_server, wheel_dir, "cu128", size=16 * KiB, pythons=("cp311",))
    app = locked_project(tmp_path, "app", server=index_server, ws=ws, uv=uv_bin, env=uv_environ)
    if call == "export":  # over in a few ms: held where it really waits, opening the user's uv.toml (a FIFO)
        user_config = Path(uv_environ["XDG_CONFIG_HOME"]) / "uv" / "uv.toml"
        user_config.parent.mkdir(parents=True)
        os.mkfifo(user_config)
    # The user's own TMPDIR is where uv would leave its litter without one of warmd's.
    uv = Uv(str(uv_bin), cache_dir=uv_cache, env=dict(uv_environ, TMPDIR=str(own_tmp)))
    calls: dict[str, Callable[[], object]] = {
        "python find": lambda: uv.interpreter("3.11"),
        "export": lambda: uv.export(app, []),
        "sync --dry-run": lambda: uv.probe(app, selected=["torch"], others=[], python="3.11"),
        "lock": lambda: uv.lock_upgrade(app, ["torch"], python="3.11", no_venv=tmp_path / "no-venv"),
    }
    token = CancelToken()
    caught: list[BaseException] = []
    answered: list[object] = []

    def run() -> None:
        with cancel.scope(token):
            try:
                answered.append(calls[call]())
            except BaseException as exc:  # noqa: BLE001 - the assertion below says what it was
                caught.append(exc)

    # A dry run and a lock wait on the cache's lock; `python find` is caught once uv has made its
    # throw-away cache in TMPDIR (it then inspects interpreters for a tenth of a second or more).
    held = call != "python find"
    with uv_cache_held(uv_cache) if held else contextlib.nullcontext(), \
            scratch_made(own_tmp, ".tmp", recursive=True) as made:
        t = threading.Thread(target=run)
        t.start()
        children = _poll(uv_children)
        assert children, "no uv child to call off"
        assert held or made.wait(WAIT), "uv made no scratch of its own"
        token.cancel("uv.lock changed while it was warmed")
        t.join(WAIT)
    assert not t.is_alive() and all(not _alive(pid) for pid in children)
    assert answered == [] and len(caught) == 1 and isinstance(caught[0], Cancelled), (answered, caught)
    assert sorted(p.name for p in own_tmp.iterdir()) == []  # uv's own `.tmp*` and `uv-*.lock` too


def test_a_lock_swapped_under_a_prefetch_is_warmed_for_the_new_pins_never_reported_failed(
        tmp_path: Path, index_server: IndexServer, wheel_dir: Path, uv_bin: Path, uv_cache: Path,
        uv_environ: dict[str, str], own_tmp: Path) -> None:
    old = torch_like_set(index_server, wheel_dir, "cu128", size=64 * KiB, pythons=("cp311",))
    new = torch_like_set(index_server, wheel_dir, "cu128", version="2.9.0", size=64 * KiB, pythons=("cp311",))
    app = locked_project(tmp_path, "app", server=index_server, ws=old, uv=uv_bin, env=uv_environ)
    # The same project re-locked elsewhere with the new torch: its files are what `uv lock` writes.
    other = locked_project(tmp_path / "elsewhere", "app", server=index_server, ws=new, uv=uv_bin, env=uv_environ)
    cfg = write_warmd_config(tmp_path, uv_bin, uv_cache)
    env = dict(uv_environ, TMPDIR=str(own_tmp), XDG_RUNTIME_DIR=str(own_tmp))
    with uv_cache_held(uv_cache), scratch_made(own_tmp) as made:
        proc = subprocess.Popen(warmd_argv(cfg, "prefetch", app, "--json"), env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            assert made.wait(WAIT)  # planned for the old torch, and waiting for uv to say what it has
            for name in ("pyproject.toml", "uv.lock"):  # as `uv lock` does: a whole file renamed onto it
                shutil.copy(other / name, app / f".{name}.new")
                os.replace(app / f".{name}.new", app / name)
        except BaseException:
            proc.kill()
            raise
    out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0, err
    [project] = json.loads(out)["projects"]
    torch = [w for w in project["wheels"] if w["name"] == "torch"]
    assert [(w["version"], w["state"]) for w in torch] == [(new.torch_version, "warm")], project
    assert all(w["state"] == "warm" for w in project["wheels"]), project
    assert '"state": "failed"' not in out and " ERROR " not in err
    assert _litter(own_tmp) == []
    state = State.open(tmp_path / "state")
    try:
        # The only outcome ever recorded is the one for the lock there is now.
        assert [o for _at, o, _r, _sha in state.history(app)] == ["warm"]
    finally:
        state.close()


def _poll(found: Callable[[], list[int]]) -> list[int]:
    deadline = time.monotonic() + WAIT
    while not (got := found()) and time.monotonic() < deadline:
        time.sleep(0.01)  # /proc has no event to wait on
    return got


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


@pytest.mark.parametrize("which", ["pinned", "old"])
def test_uv_failing_is_reported_with_its_error_and_causes_not_its_last_line(
        which: str, request: pytest.FixtureRequest, tmp_path: Path, uv_cache: Path, uv_environ: dict[str, str],
        index_server: IndexServer, wheel_dir: Path) -> None:
    uv_exe = request.getfixturevalue("uv_bin" if which == "pinned" else "uv_old_bin")
    ws = torch_like_set(index_server, wheel_dir, "cu128", size=16 * KiB, pythons=("cp311",))
    torch = next(w for w in ws.wheels if w.name.startswith("torch-"))
    from warmd.base import Pin, WheelFile

    pin = Pin("torch", ws.torch_version, index_server.index_url("cu128"),
              WheelFile(index_server.file_url(torch.name, "cu128"), torch.name, index_server.sha256_of(torch.name),
                        torch.stat().st_size), "3.11", "x86_64-manylinux_2_28")
    uv = Uv(str(uv_exe), cache_dir=uv_cache, env=dict(uv_environ, UV_HTTP_RETRIES="0"))
    dead = "http://127.0.0.1:9/" + torch.name  # nothing listens on the discard port: uv gets ECONNREFUSED
    with pytest.raises(UvError) as caught:
        uv.import_wheels([pin], {pin.wheel.sha256: dead}, python="3.11", platform="x86_64-manylinux_2_28")
    text = str(caught.value)
    assert text.startswith("uv could not import 1 wheel(s) for Python 3.11: ")
    assert "Failed to download" in text and "Connection refused" in text, text  # the error and its root cause
    assert "\n" not in text and "warning" not in text.lower() and "Using CPython" not in text


def test_a_uv_stopped_by_someone_else_says_so_not_its_exit_status_or_last_line(
        tmp_path: Path, uv_bin: Path, uv_cache: Path, uv_environ: dict[str, str], index_server: IndexServer,
        wheel_dir: Path, own_tmp: Path) -> None:
    """A stray `pkill -HUP -f warmd` also hits warmd's uv children (their arguments name warmd-import-…)."""
    ws = torch_like_set(index_server, wheel_dir, "cu128", size=16 * KiB, pythons=("cp311",))
    torch = next(w for w in ws.wheels if w.name.startswith("torch-"))
    from warmd.base import Pin, WheelFile

    pin = Pin("torch", ws.torch_version, index_server.index_url("cu128"),
              WheelFile(index_server.file_url(torch.name, "cu128"), torch.name, index_server.sha256_of(torch.name),
                        torch.stat().st_size), "3.11", "x86_64-manylinux_2_28")
    uv = Uv(str(uv_bin), cache_dir=uv_cache, env=uv_environ)
    caught: list[BaseException] = []

    def imp() -> None:
        try:
            uv.import_wheels([pin], {pin.wheel.sha256: pin.wheel.url}, python="3.11", platform="x86_64-manylinux_2_28")
        except BaseException as exc:  # noqa: BLE001 - the assertion below says what it was
            caught.append(exc)

    with uv_cache_held(uv_cache):
        t = threading.Thread(target=imp)
        t.start()
        # the import's own uv, by its arguments (the test process may have other uv children)
        [child] = _poll(lambda: [pid for pid in uv_children() if b"warmd-import-" in _cmdline(pid)])
        os.kill(child, signal.SIGHUP)
        t.join(WAIT)
    assert len(caught) == 1 and isinstance(caught[0], UvError), caught
    assert str(caught[0]) == "uv could not import 1 wheel(s) for Python 3.11: uv was stopped by SIGHUP"
    for remover in [t for t in threading.enumerate() if t.name == "warmd-scratch-rm"]:
        remover.join(WAIT)  # the import's folder (in own_tmp: it is the memory folder too) goes in a thread
    assert _litter(own_tmp) == []


def test_a_detached_scratch_folder_is_gone_when_its_process_has_exited(tmp_path: Path) -> None:
    """The import's folder is removed beside the proof, not before it; the process still waits for
    that removal before it exits, so nothing is left for a sweep."""
    code = ("import threading; from warmd.base import scratch\n"
            "def use():\n"
            "    with scratch.folder('import', detach=True) as s:\n"
            "        for i in range(3000):\n"
            "            (s.path / f'f{i}').symlink_to('/nonexistent')\n"
            "    print(s.path, flush=True)\n"
            # as the importer does: from a daemon thread, whose children are daemons unless told
            "t = threading.Thread(target=use, daemon=True)\n"
            "t.start(); t.join()\n")
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, TMPDIR=str(tmp_path)),
                         capture_output=True, text=True, timeout=WAIT, check=True)
    folder = Path(out.stdout.strip())
    assert folder.parent == tmp_path and not folder.exists()
    assert _litter(tmp_path) == []


def test_the_sweep_takes_a_dead_warmds_scratch_and_leaves_a_live_ones(tmp_path: Path) -> None:
    code = ("import os, signal, sys; from pathlib import Path; from warmd.base import scratch\n"
            "with scratch.folder(sys.argv[1]) as s:\n"
            "    (s.path / 'work').write_text('x')\n"
            "    if sys.argv[1] == 'orphan':\n"  # a uv child inherits the lock and outlives its warmd
            "        os.set_inheritable(s.fd, True)\n"
            "        pid = os.fork()\n"
            "        if pid == 0:\n"
            "            os.execvp(sys.executable, [sys.executable, '-c', 'import sys; sys.stdin.read()'])\n"
            "    print(s.path, flush=True)\n"
            "    os.kill(os.getpid(), signal.SIGKILL if sys.argv[1] != 'live' else signal.SIGSTOP)\n")
    env = dict(os.environ, TMPDIR=str(tmp_path))
    procs = {}
    for what in ("dead", "live", "orphan"):
        procs[what] = subprocess.Popen([sys.executable, "-c", code, what], env=env, stdout=subprocess.PIPE,
                                       stdin=subprocess.PIPE, text=True)
    folders = {what: Path(p.stdout.readline().strip()) for what, p in procs.items()}
    try:
        procs["dead"].wait(WAIT)
        procs["orphan"].wait(WAIT)
        assert all(f.is_dir() for f in folders.values())
        (tmp_path / "warmd-unrelated").mkdir()  # not a scratch folder of warmd's own naming: never touched
        assert scratch.sweep(tmp_path) == [folders["dead"]]
        assert folders["live"].is_dir() and folders["orphan"].is_dir() and (tmp_path / "warmd-unrelated").is_dir()
    finally:
        os.kill(procs["live"].pid, signal.SIGKILL)
        procs["live"].wait(WAIT)
        for p in procs.values():
            p.stdin.close()  # type: ignore[union-attr]  # the orphan's child reads stdin: this ends it
    assert Owner.me().alive() and not Owner(procs["dead"].pid, 0).alive()


def test_a_partial_two_runs_shared_is_dropped_by_the_last_even_one_that_never_needed_it(
        tmp_path: Path, index_server: IndexServer, wheel_dir: Path, uv_bin: Path, uv_environ: dict[str, str],
        own_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two runs of one process, one store, the same wheel: B (its uv already has it) is under way when A
    is done with its download; A leaves the partial to B, and B, which never needed it, drops it."""
    ws = torch_like_set(index_server, wheel_dir, "cu128", size=64 * KiB, pythons=("cp311",))
    store = tmp_path / "store"
    for k, v in uv_environ.items():
        monkeypatch.setenv(k, v)
    pipelines, states = {}, {}
    for name in ("a", "b"):
        cache = tmp_path / f"uv-cache-{name}"
        cache.mkdir()
        (tmp_path / name).mkdir()
        config = load_config(write_warmd_config(tmp_path / name, uv_bin, cache, store=store))
        state = states[name] = State.open(config.state_dir)  # B's run then knows its uv has them: no speculation
        pipelines[name] = (Pipeline(config, state=state), cache, locked_project(
            tmp_path / name, "app", server=index_server, ws=ws, uv=uv_bin, env=uv_environ))
    a, _cache_a, project_a = pipelines["a"]
    b, cache_b, project_b = pipelines["b"]
    try:
        assert all(w.state == "warm" for r in b.warm([Project.of(project_b)]) for w in r.wheels)
        assert list((store / "partial").iterdir()) == []
        out: list = []
        with uv_cache_held(cache_b):
            t = threading.Thread(target=lambda: out.extend(b.warm([Project.of(project_b)])))
            t.start()
            assert _poll(uv_children), "B's probe never started"  # B is under way, waiting on its cache
            [report_a] = a.warm([Project.of(project_a)])
            assert report_a.ok, report_a
            left = sorted(p.name for p in (store / "partial").iterdir())
            assert left, "A dropped what B still could use"
        t.join(WAIT)
        assert not t.is_alive()
        [report_b] = out
        assert report_b.ok and sum(w.bytes_downloaded for w in report_b.wheels) == 0, report_b  # B's uv had them
        assert sorted(p.name for p in (store / "partial").iterdir()) == []
    finally:
        a.close()
        b.close()
        for st in states.values():
            st.close()
