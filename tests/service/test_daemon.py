"""`warmd run` end to end: real watchdog, real uv, the local index, sd_notify on a socket we bind."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.config import write_warmd_config
from tests.support.daemon import WAIT, DaemonProcess, NotifySocket
from tests.support.index_server import IndexServer
from tests.support.projects import lock_project, locked_project, pinned_project, run_uv, torch_like_set
from warmd.base import Cancelled, Config, cancel, load_config
from warmd.service import Daemon, WorkQueue, build_scheduler
from warmd.cli import project_statuses
from warmd.state import State
from warmd.transfer import Store



@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    n = NotifySocket(tmp_path / "notify.sock")
    yield n
    n.close()


def _config(tmp: Path, uv: Path, cache: Path, root: Path, *, keep: bool = False) -> Path:
    extra = [f"roots = {json.dumps([str(root)])}", 'recheck-interval = "1h"', f"keep-wheels = {json.dumps(keep)}",
             "[watch]", "debounce = 0.3"]
    return write_warmd_config(tmp, uv, cache, extra=extra)


def _status(state_dir: Path) -> dict[str, dict]:
    st = State.open(state_dir)  # a second connection, as `warmd status` opens one
    try:
        return {s.path.name: s.to_json() for s in project_statuses(st)}
    finally:
        st.close()


@contextmanager
def _daemon(cfg_path: Path) -> Iterator[tuple[Daemon, Config, threading.Thread]]:
    """The daemon of this config running in a thread; on leaving, stopped, and it must have exited 0."""
    config = load_config(cfg_path)
    stop = threading.Event()
    d = Daemon(config, config_path=cfg_path, stop_event=stop)
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(d.run()), daemon=True)
    t.start()
    try:
        yield d, config, t
    finally:
        stop.set()
        t.join(30)
    assert not t.is_alive() and result == [0]


def _gpu_gets(server: IndexServer) -> list:
    return [h for h in server.wheel_gets() if "/whl/" in h.path]


def test_work_queue_coalesces_changes_during_a_run() -> None:
    started: queue.Queue[Path] = queue.Queue()
    release = threading.Event()
    runs: list[Path] = []

    def run(p: Path) -> None:
        runs.append(p)
        started.put(p)
        release.wait(WAIT)

    q = WorkQueue(2, run)
    a, b = Path("/a"), Path("/b")
    q.submit(a)
    assert started.get(timeout=WAIT) == a
    for _ in range(3):  # the lock changes three times while a runs
        q.submit(a)
    q.submit(b)
    assert started.get(timeout=WAIT) == b  # another project runs beside it
    release.set()
    assert q.wait_completed(3, WAIT)
    assert sorted(runs) == [a, a, b]  # exactly one more run of a, not three
    q.close()
    assert q.join(WAIT)


def test_work_queue_calls_a_run_off_kills_its_child_and_runs_it_once_more() -> None:
    started: queue.Queue[subprocess.Popen] = queue.Queue()
    states: list[tuple[Path, str | None]] = []
    ends: list[str] = []

    def run(p: Path) -> None:
        token = cancel.current()  # each run has its own, ambient for the code it calls
        assert token is not None
        if not ends:  # the first run waits on a child, as a run waits on uv
            child = subprocess.Popen(["sleep", "600"])
            started.put(child)
            with token.watching(child):
                child.wait()
        try:
            cancel.checkpoint()
            ends.append("finished")
        except Cancelled as exc:
            ends.append(exc.reason)

    q = WorkQueue(1, run, on_state=lambda p, s: states.append((p, s)))
    a = Path("/a")
    q.submit(a)
    child = started.get(timeout=WAIT)
    assert not q.cancel(Path("/b"), "nothing runs there")
    q.submit(a)  # the lock changed: once more after this run ...
    assert q.cancel(a, "uv.lock changed")  # ... and this one is called off now
    assert q.wait_completed(2, WAIT)
    assert child.returncode == -signal.SIGKILL
    assert ends == ["uv.lock changed", "finished"]
    assert states == [(a, "queued"), (a, "warming"), (a, "queued"), (a, "warming"), (a, None)]
    q.close()
    assert q.join(WAIT)


def test_scheduler_jobs_coalesce_never_overlap_and_run_now() -> None:
    ran = threading.Event()
    sched = build_scheduler(3600, jobs={"headers": ran.set, "rescan": lambda: None}, run_now=("headers",))
    sched.start()  # job defaults apply once the scheduler runs
    try:
        jobs = {j.id: j for j in sched.get_jobs()}
        assert set(jobs) == {"headers", "rescan"}
        for job in jobs.values():
            assert job.coalesce and job.max_instances == 1 and job.misfire_grace_time == 3600
            assert job.trigger.interval.total_seconds() == 3600 and job.trigger.jitter == 360
        assert ran.wait(WAIT)  # the run_now job ran at start, not an hour later
    finally:
        sched.shutdown(wait=False)


def test_daemon_warms_heals_upgrades_and_flags(
    tmp_path: Path, index_server: IndexServer, wheel_dir: Path, uv_bin: Path, uv_cache: Path,
    uv_environ: dict[str, str], notify: NotifySocket, monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = tmp_path / "code"
    root.mkdir()
    for k, v in uv_environ.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify.path))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    cfg_path = _config(tmp_path, uv_bin, uv_cache, root, keep=True)  # the store heals a `uv cache clean`
    with _daemon(cfg_path) as (d, config, t):
        notify.until(lambda m: m == "READY=1")

        # A project created under the root becomes warm: `uv lock` renames onto uv.lock.
        ws = torch_like_set(index_server, wheel_dir, "cu128", size=64 * 1024)
        app = locked_project(root / "team", "app", server=index_server, ws=ws, uv=uv_bin, env=uv_environ)
        notify.until(lambda m: m == "STATUS=idle, 1 project warm")
        st = _status(config.state_dir)["app"]
        assert st["error"] is None
        assert {w["name"] for w in st["wheels"]} == {"torch", "pytorch-triton", "nvidia-nvtx-cu12"}
        assert all(w["state"] == "warm" for w in st["wheels"]), st["wheels"]
        notify.until(lambda m: m == "WATCHDOG=1")

        # `uv cache clean`: the daemon sees uv's cache root lose its folders (not at the re-check,
        # an hour away), stops calling it warm, and heals it from the store without the network.
        index_server.reset_counters()
        n = d.queue.completed
        notify.clear()
        state_seen: list[dict] = []
        lost = State.uv_cache_lost

        def spy(self: State, reason: str) -> int:
            count = lost(self, reason)
            state_seen.append(_status(config.state_dir)["app"])  # what `warmd status` said then
            return count

        monkeypatch.setattr(State, "uv_cache_lost", spy)
        run_uv(uv_bin, ["cache", "clean"], cwd=app, env=uv_environ)
        assert d.queue.wait_completed(n + 1, WAIT)
        notify.until(lambda m: m == "STATUS=idle, 1 project warm")
        assert "STATUS=warming 1 project" in notify.seen
        assert len(state_seen) == 1 and state_seen[0]["state"] != "warm"
        assert {w["state"] for w in state_seen[0]["wheels"]} == {"cold"}
        assert _status(config.state_dir)["app"]["state"] == "warm"
        assert index_server.bytes_served() == 0 and _gpu_gets(index_server) == []
        run_uv(uv_bin, ["sync", "--frozen"], cwd=app, env=uv_environ)
        assert _gpu_gets(index_server) == [], "uv sync downloaded a wheel the re-probe should have restored"

        # `uv lock` moving torch to a new version warms the new wheel.
        new = torch_like_set(index_server, wheel_dir, "cu128", version="2.9.0", size=64 * 1024)
        pinned_project(root / "team", "app", server=index_server, ws=new)
        n = d.queue.completed
        lock_project(app, uv_bin, uv_environ)
        assert d.queue.wait_completed(n + 1, WAIT)
        st = _status(config.state_dir)["app"]
        torch = [w for w in st["wheels"] if w["name"] == "torch"]
        assert [(w["version"], w["state"]) for w in torch] == [("2.9.0+cu128", "warm")]

        # A malformed lock in another project is reported there and leaves the others served.
        broken = root / "broken"
        broken.mkdir()
        (broken / "pyproject.toml").write_text("[project]\nname = 'broken'\nversion = '0'\n")
        n = d.queue.completed
        (broken / ".tmpXyZ").write_text("this is [not toml")
        os.replace(broken / ".tmpXyZ", broken / "uv.lock")
        assert d.queue.wait_completed(n + 1, WAIT)
        status = _status(config.state_dir)
        assert status["broken"]["error"]
        assert all(w["state"] == "warm" for w in status["app"]["wheels"])
        assert t.is_alive()

        # A project folder deleted under the root leaves `warmd status` and the idle line at once.
        notify.until(lambda m: m == "STATUS=idle, 1 of 2 projects warm")
        notify.clear()
        shutil.rmtree(broken)
        notify.until(lambda m: m == "STATUS=idle, 1 project warm")
        assert set(_status(config.state_dir)) == {"app"}

        # A pinned file whose bytes change upstream is flagged in status, and stays flagged.
        d.check_headers()
        status = _status(config.state_dir)["app"]
        assert status["flags"] and not any("moved" in f for f in status["flags"])  # no-store index noted
        torch_file = next(w["filename"] for w in status["wheels"] if w["name"] == "torch")
        index_server.faults.replace[torch_file] = b"replaced upstream under the same name"
        d.check_headers()
        d.check_headers()
        status = _status(config.state_dir)["app"]
        moved = [w for w in status["wheels"] if w["warnings"]]
        assert [w["filename"] for w in moved] == [torch_file]
        assert any("locked hash moved" in f for f in status["flags"])
    notify.until(lambda m: m == "STOPPING=1")


def _wait_for(cond: Callable[[], bool], timeout: float = WAIT) -> None:
    # Another process's download has no event to await here: poll its resume record.
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.05)


def test_sigterm_mid_download_exits_cleanly_and_restart_resumes(
    tmp_path: Path, wheel_dir: Path, uv_bin: Path, uv_cache: Path, uv_environ: dict[str, str],
    notify: NotifySocket,
) -> None:
    root = tmp_path / "code"
    with IndexServer(rate_limit=512 * 1024, vouched=True) as server:
        ws = torch_like_set(server, wheel_dir, "cu128", size=3 * 2**20, pythons=("cp311",), with_nvidia=False)
        locked_project(root, "app", server=server, ws=ws, uv=uv_bin, env=uv_environ)
        torch_file = next(f for f in ws.filenames if f.startswith("torch-"))
        sha = server.sha256_of(torch_file)
        size = (wheel_dir / "cu128" / torch_file).stat().st_size
        cfg = _config(tmp_path, uv_bin, uv_cache, root)
        env = dict(uv_environ, NOTIFY_SOCKET=str(notify.path), PYTHONUNBUFFERED="1")
        store = Store(tmp_path / "store")
        server.reset_counters()

        first = DaemonProcess(cfg, env)
        try:
            notify.until(lambda m: m == "READY=1")
            _wait_for(lambda: (sc := store.read_sidecar(sha)) is not None and sc.done_bytes() > 0)
            first.proc.send_signal(signal.SIGTERM)
            assert first.proc.wait(timeout=WAIT) == 0
        finally:
            first.kill()
        notify.until(lambda m: m == "STOPPING=1")
        kept = store.read_sidecar(sha)
        assert kept is not None and 0 < kept.done_bytes() < size and not store.has(sha)

        server.rate_limit = None
        server.reset_counters()
        notify.clear()
        second = DaemonProcess(cfg, env)
        try:
            notify.until(lambda m: m == "READY=1")
            notify.until(lambda m: m == "STATUS=idle, 1 project warm")
            # SIGHUP with a broken config: one error line, the daemon keeps the running config.
            good = cfg.read_text()
            cfg.write_text(good + "bogus-key = 1\n")
            second.proc.send_signal(signal.SIGHUP)
            line = second.expect("reload failed")
            assert "bogus-key" in line
            cfg.write_text(good)
            second.proc.send_signal(signal.SIGHUP)
            second.expect("config reloaded")
            assert second.proc.poll() is None
            second.proc.send_signal(signal.SIGTERM)
            assert second.proc.wait(timeout=WAIT) == 0
        finally:
            second.kill()
        assert not store.part_path(sha).exists()  # resumed, verified, handed to uv (and not kept: the default)
        # The restart fetched only what the first daemon had not kept.
        assert 0 < server.bytes_served(torch_file) <= size - kept.done_bytes()
        assert all(h.status == 206 for h in server.wheel_gets(torch_file))


def test_a_run_that_does_not_stop_by_the_deadline_does_not_hold_the_stop(
    tmp_path: Path, index_server: IndexServer, wheel_dir: Path, uv_bin: Path, uv_cache: Path,
    uv_environ: dict[str, str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The stop deadline is the daemon's (systemd's TimeoutStopSec is longer): given 0 s, a run stuck
    where no cancel reaches (waiting for another warmd's hold on the project) is left behind, not
    waited for. The deadline is injected: nothing here depends on how fast the machine is."""
    from loguru import logger

    from warmd.warm import Pipeline

    root = tmp_path / "code"
    ws = torch_like_set(index_server, wheel_dir, "cu128", size=64 * 1024, pythons=("cp311",))
    app = locked_project(root, "app", server=index_server, ws=ws, uv=uv_bin, env=uv_environ)
    for k, v in uv_environ.items():
        monkeypatch.setenv(k, v)
    cfg_path = _config(tmp_path, uv_bin, uv_cache, root)
    config = load_config(cfg_path)
    lines: list[str] = []
    waiting = threading.Event()

    def seen(message: str) -> None:
        lines.append(message)
        if "another warmd is working on it" in message:
            waiting.set()

    sink = logger.add(seen)
    stop = threading.Event()
    d = Daemon(config, config_path=cfg_path, stop_event=stop, stop_deadline=0.0)
    other = Pipeline(config)  # another warmd, working on the same project
    result: list[int] = []
    try:
        with other._project_locks([app]):
            t = threading.Thread(target=lambda: result.append(d.run()), daemon=True)
            t.start()
            assert waiting.wait(WAIT)
            stop.set()
            t.join(WAIT)
            assert not t.is_alive() and result == [0]
            assert any("a run did not stop in time; exiting anyway" in ln for ln in lines), lines
        assert d.queue is not None and d.queue.join(WAIT)  # the run left behind ends once let go
    finally:
        stop.set()
        logger.remove(sink)
        other.close()
        if d.state is not None:
            d.state.close()


def test_sighup_with_other_roots_and_interval_takes_effect(
    tmp_path: Path, index_server: IndexServer, wheel_dir: Path, uv_bin: Path, uv_cache: Path,
    uv_environ: dict[str, str], notify: NotifySocket,
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    ws = torch_like_set(index_server, wheel_dir, "cu128", size=64 * 1024)
    locked_project(second, "app", server=index_server, ws=ws, uv=uv_bin, env=uv_environ)
    index_server.reset_counters()
    cfg = _config(tmp_path, uv_bin, uv_cache, first)
    daemon = DaemonProcess(cfg, dict(uv_environ, NOTIFY_SOCKET=str(notify.path), PYTHONUNBUFFERED="1"))
    try:
        notify.until(lambda m: m == "READY=1")
        notify.until(lambda m: m == "STATUS=idle, 0 projects warm")
        assert _gpu_gets(index_server) == []  # `second` is not watched yet
        cfg.write_text(cfg.read_text().replace(json.dumps(str(first)), json.dumps(str(second)))
                       .replace('recheck-interval = "1h"', 'recheck-interval = "2h"'))
        notify.clear()
        daemon.proc.send_signal(signal.SIGHUP)
        assert str(second) in daemon.expect("now watching")
        assert "every 7200 s" in daemon.expect("re-checking")
        daemon.expect("config reloaded")
        notify.until(lambda m: m == "STATUS=idle, 1 project warm")
        st = _status(tmp_path / "state")["app"]
        assert st["wheels"] and all(w["state"] == "warm" for w in st["wheels"]), st
        assert _gpu_gets(index_server), "the project under the new root was never fetched"
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(timeout=WAIT) == 0
    finally:
        daemon.kill()


def test_the_header_check_asks_the_guard_as_the_users_uv_toml_is_now(tmp_path: Path, uv_bin: Path, uv_cache: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """An index the user adds to their uv.toml is theirs from the next header check on, not from the
    next warm: the check reads the user's configuration again before it asks the guard."""
    from warmd.service.reload import _PipelineRef
    from warmd.warm import Pipeline

    xdg = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    monkeypatch.setenv("XDG_CONFIG_DIRS", str(tmp_path / "none"))
    for name in ("UV_INDEX", "UV_DEFAULT_INDEX", "UV_INDEX_URL", "UV_EXTRA_INDEX_URL", "UV_FIND_LINKS", "UV_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    config = load_config(write_warmd_config(tmp_path, uv_bin, uv_cache, packages=["torch"], trusted=[]))
    d = Daemon(config, config_path=None)
    d._ref = _PipelineRef(Pipeline(config))
    d.state = State.open(config.state_dir)
    try:
        guard = d._ref.pipeline.guard
        assert not guard.vouched("http://10.0.0.5:8080/simple/torch/")
        (xdg / "uv").mkdir(parents=True)
        (xdg / "uv" / "uv.toml").write_text('[[index]]\nurl = "http://10.0.0.5:8080/simple/"\n')
        d.check_headers()
        assert guard.vouched("http://10.0.0.5:8080/simple/torch/")
    finally:
        d.state.close()
        d._ref.pipeline.close()


@pytest.mark.parametrize("uv_which", ["pinned", "0.8.2"])
def test_a_lock_moved_onto_wheels_another_project_warmed_costs_no_wheel_byte(
    tmp_path: Path, index_server: IndexServer, wheel_dir: Path, uv_which: str, uv_bin: Path, uv_old_bin: Path,
    uv_cache: Path, uv_environ: dict[str, str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every byte once, in the daemon: project b's lock moves onto the wheels project a has warm
    (from an index that answers no-store); b's run asks uv first, and the index serves no wheel byte."""
    uv = uv_bin if uv_which == "pinned" else uv_old_bin
    root = tmp_path / "code"
    root.mkdir()
    for k, v in uv_environ.items():
        monkeypatch.setenv(k, v)
    old = torch_like_set(index_server, wheel_dir, "cu128", size=256 * 1024)
    new = torch_like_set(index_server, wheel_dir, "cu128", version="2.9.0", size=256 * 1024)
    # the locks, made beforehand: `uv lock` asks the index too, and is not what is counted
    staged = {(name, ws.torch_version): locked_project(tmp_path / ws.torch_version, name, server=index_server, ws=ws,
                                                       uv=uv_bin, env=uv_environ)
              for name, ws in (("a", new), ("b", old), ("b", new))}

    def move(name: str, ws: object) -> Path:
        project = root / name
        project.mkdir(exist_ok=True)
        src = staged[(name, ws.torch_version)]  # type: ignore[attr-defined]
        os.replace(src / "pyproject.toml", project / "pyproject.toml")
        os.replace(src / "uv.lock", project / "uv.lock")  # as `uv lock` does: a rename onto it
        return project

    with _daemon(_config(tmp_path, uv, uv_cache, root)) as (d, config, _t):
        index_server.reset_counters()
        move("a", new)
        move("b", old)
        _wait_for(lambda: {p: {w["state"] for w in s["wheels"]} for p, s in _status(config.state_dir).items()}
                  == {"a": {"warm"}, "b": {"warm"}})
        files = {f.name: f for ws in (new, old) for f in ws.wheels + ws.default_wheels if "cp312" not in f.name}
        needed = sum(f.stat().st_size for f in files.values())  # each file once, whoever downloads it
        assert index_server.bytes_served() <= needed, (index_server.bytes_served(), needed)
        index_server.reset_counters()
        n = d.queue.completed
        move("b", new)
        assert d.queue.wait_completed(n + 1, WAIT)
        _wait_for(lambda: {(w["name"], w["version"], w["state"]) for w in _status(config.state_dir)["b"]["wheels"]
                           if w["name"] == "torch"} == {("torch", "2.9.0+cu128", "warm")})
        assert index_server.wheel_gets() == [] and index_server.bytes_served() == 0, index_server.wheel_gets()


def test_daemon_threads_do_not_grow_with_projects(
    tmp_path: Path, uv_bin: Path, uv_cache: Path, uv_environ: dict[str, str], notify: NotifySocket,
) -> None:
    def threads(pid: int) -> int:
        return len(os.listdir(f"/proc/{pid}/task"))

    root = tmp_path / "code"
    for i in range(300):  # projects without a uv.lock yet: watched, nothing to warm
        p = root / f"team{i % 10}" / f"app{i:03d}"
        p.mkdir(parents=True)
        (p / "pyproject.toml").write_text(f"[project]\nname = 'app{i}'\nversion = '0'\n")
    cfg = _config(tmp_path, uv_bin, uv_cache, root)
    daemon = DaemonProcess(cfg, dict(uv_environ, NOTIFY_SOCKET=str(notify.path), PYTHONUNBUFFERED="1"))
    try:
        daemon.expect("300 project(s), 311 watched folder(s)")
        notify.until(lambda m: m == "READY=1")
        daemon.expect("idle, 0 projects warm")
        n = threads(daemon.proc.pid)
        assert n <= 20, n  # was one per watched folder (311 here)
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(timeout=30) == 0
    finally:
        daemon.kill()
