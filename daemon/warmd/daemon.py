"""`warmd run`: watch the roots, keep every project warm, re-check on a schedule, behave like a service."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Callable

import httpx
from loguru import logger

from .config import Config, load_config
from .credentials import index_auth
from .errors import WarmdError
from .headers import check_pins, compare, cache_verdict, index_page, redact
from .schedule import build_scheduler
from .service import Notifier
from .state import State
from .watch import LOCK, ProjectWatcher

STOP_DEADLINE = 3.5  # seconds the workers get after SIGTERM; systemd's TimeoutStopSec is longer


class WorkQueue:
    """Runs projects on a fixed pool: one run per project at a time, changes during a run coalesced into one more."""

    def __init__(self, workers: int, run: Callable[[Path], None]) -> None:
        self._run = run
        self._cv = threading.Condition()
        self._pending: dict[Path, None] = {}  # insertion-ordered set
        self._running: set[Path] = set()
        self._again: set[Path] = set()
        self._closed = False
        self.completed = 0
        self._threads = [
            threading.Thread(target=self._work, name=f"warmd-worker-{i}", daemon=True) for i in range(max(1, workers))
        ]
        for t in self._threads:
            t.start()

    def submit(self, project: Path) -> None:
        """Queue a run; a project already queued stays queued once, a running one runs once more after."""
        with self._cv:
            if self._closed:
                return
            if project in self._running:
                self._again.add(project)
            elif project not in self._pending:
                self._pending[project] = None
                self._cv.notify()

    def busy(self) -> int:
        """Projects running or waiting."""
        with self._cv:
            return len(self._running) + len(self._pending)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing runs or waits; False on timeout."""
        with self._cv:
            return self._cv.wait_for(lambda: not self._running and not self._pending, timeout)

    def wait_completed(self, count: int, timeout: float | None = None) -> bool:
        """Block until at least `count` runs have finished and nothing runs or waits; False on timeout."""
        with self._cv:
            return self._cv.wait_for(
                lambda: self.completed >= count and not self._running and not self._pending, timeout
            )

    def close(self) -> None:
        """Take no more work and drop what waits; running projects finish (or are cancelled by the caller)."""
        with self._cv:
            self._closed = True
            self._pending.clear()
            self._again.clear()
            self._cv.notify_all()

    def join(self, timeout: float) -> bool:
        """Wait for the workers to end; False if some are still inside a run."""
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def _work(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._pending or self._closed)
                if self._closed:
                    return
                project = next(iter(self._pending))
                del self._pending[project]
                self._running.add(project)
            try:
                self._run(project)
            finally:
                with self._cv:
                    self._running.discard(project)
                    self.completed += 1
                    if project in self._again and not self._closed:
                        self._again.discard(project)
                        self._pending[project] = None
                    self._cv.notify_all()


class _PipelineRef:
    """A pipeline with a count of runs using it, so a SIGHUP can swap it without closing it under a run."""

    def __init__(self, pipeline: object) -> None:
        self.pipeline = pipeline
        self.users = 0
        self.retired = False


class Daemon:
    """The parts of `warmd run` and how they are wired; run() is the foreground loop."""

    def __init__(self, config: Config, *, config_path: Path | None, stop_event: threading.Event | None = None,
                 notifier: Notifier | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.stop_event = stop_event or threading.Event()
        self.notifier = notifier or Notifier()
        self._reload = threading.Event()
        self._lock = threading.Lock()
        self._ok: dict[Path, bool] = {}  # project -> all its wheels warm after the last run
        self.state: State | None = None
        self.queue: WorkQueue | None = None
        self.watcher: ProjectWatcher | None = None
        self._ref: _PipelineRef | None = None
        self._retired: list[_PipelineRef] = []
        self._scheduler = None
        self._signal: str | None = None

    # --- lifecycle ----------------------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT or stop_event; returns the exit code."""
        self.state = State.open(self.config.state_dir)
        # Signals first: a SIGTERM during a slow discovery still means a clean stop.
        restore = self._install_signals()
        try:
            self._ref = _PipelineRef(self._new_pipeline(self.config))
            self._ref.pipeline.check_uv()  # type: ignore[attr-defined]  # a service without uv fails at start
            self.queue = WorkQueue(self.config.download.parallel_files, self._run_project)
            self.watcher = self._new_watcher(self.config)
            projects = self.watcher.start()
            logger.info(f"watching {len(self.config.roots)} root(s): {len(projects)} project(s), "
                        f"{len(self.watcher.watched_paths)} watched folder(s)")
            if not self.config.roots:
                logger.warning("no `roots` in the config: nothing to watch (add the folders holding your projects)")
            self._scheduler = build_scheduler(
                self.config.recheck_interval,
                jobs={"headers": self.check_headers, "reprobe": self.reprobe, "rescan": self.rescan},
                run_now=("headers",),
            )
            self._scheduler.start()
            for p in projects:
                self._on_new_project(p)
            self.notifier.ready()  # after discovery is set up, not after warming: that can take hours
            self._loop()
        finally:
            self._shutdown()
            restore()
        return 0

    def _loop(self) -> None:
        ping = self.notifier.watchdog_interval()
        tick = min(1.0, ping) if ping else 1.0
        last_ping = 0.0
        last_status = ""
        while not self.stop_event.wait(tick):
            if self._reload.is_set():
                self._reload.clear()
                self.reload()
            now = time.monotonic()
            if ping and now - last_ping >= ping * 0.9:
                self.notifier.watchdog()
                last_ping = now
            status = self.status_line()
            if status != last_status:
                self.notifier.status(status)
                if status.startswith("idle"):
                    logger.info(status)
                last_status = status

    def _shutdown(self) -> None:
        why = f"{self._signal}: " if self._signal else ""
        logger.info(f"{why}stopping: cancelling downloads, partial files are kept for resume")
        self.notifier.stopping()
        assert self.state is not None
        if self.queue is None:  # stopped (or failed) before the workers existed
            self.state.close()
            return
        self.queue.close()
        for ref in [self._ref, *self._retired]:
            if ref is not None:
                ref.pipeline.cancel()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        if self.watcher is not None:
            self.watcher.stop()
        finished = self.queue.join(STOP_DEADLINE)
        if not finished:
            logger.warning("a run did not stop in time; exiting anyway (its partial downloads resume next start)")
            return  # closing the state or pipeline under a running thread would only add errors
        for ref in [self._ref, *self._retired]:
            if ref is not None:
                ref.pipeline.close()
        self.state.close()
        self.notifier.close()

    def _install_signals(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None  # run_daemon in a thread (tests): stop_event is the only way out

        def stop(signum: int, _frame: object) -> None:
            # No logging here: the main thread may be inside loguru's sink lock when the signal lands.
            self._signal = signal.Signals(signum).name
            if self._ref is not None:
                self._ref.pipeline.cancel()  # downloads stop now, not after the loop notices
            self.stop_event.set()

        def hup(_signum: int, _frame: object) -> None:
            self._reload.set()

        old = {s: signal.signal(s, h) for s, h in ((signal.SIGTERM, stop), (signal.SIGINT, stop), (signal.SIGHUP, hup))}

        def restore() -> None:
            for s, h in old.items():
                signal.signal(s, h)

        return restore

    # --- parts --------------------------------------------------------------------------

    def _new_pipeline(self, config: Config) -> object:
        from .pipeline import Pipeline

        return Pipeline(config, state=self.state)

    def _new_watcher(self, config: Config) -> ProjectWatcher:
        return ProjectWatcher(
            config.roots,
            max_depth=config.watch.max_depth,
            ignore=config.watch.ignore,
            debounce=config.watch.debounce,
            on_change=self._on_change,
            on_new_project=self._on_new_project,
        )

    def _on_change(self, project: Path) -> None:
        logger.info(f"{project}: uv.lock changed")
        assert self.queue is not None
        self.queue.submit(project)

    def _on_new_project(self, project: Path) -> None:
        if (project / LOCK).is_file():
            assert self.queue is not None
            self.queue.submit(project)
        else:
            logger.debug(f"{project}: a project without uv.lock yet; waiting for `uv lock`")

    def _run_project(self, project: Path) -> None:
        with self._lock:
            ref = self._ref
            assert ref is not None
            ref.users += 1
        try:
            reports = ref.pipeline.warm([project])  # type: ignore[attr-defined]
            with self._lock:
                for r in reports:
                    self._ok[r.project] = r.ok
        except Exception as exc:  # one project's crash must not stop the daemon
            logger.opt(exception=exc).debug(f"{project}: traceback")
            logger.error(f"{project}: run failed: {type(exc).__name__}: {exc}")
            with self._lock:
                self._ok[project] = False
            try:
                assert self.state is not None
                report = ref.pipeline.failure(project, WarmdError(f"run failed: {exc}"))  # type: ignore[attr-defined]
                self.state.record_report(report)
            except Exception as exc2:
                logger.error(f"{project}: could not record the failure: {exc2}")
        finally:
            with self._lock:
                ref.users -= 1
                close = ref.retired and ref.users == 0
                if close:
                    self._retired.remove(ref)
            if close:
                ref.pipeline.close()  # type: ignore[attr-defined]

    def status_line(self) -> str:
        """The one-line STATUS for systemd: what is being done, or how much is warm."""
        assert self.queue is not None
        busy = self.queue.busy()
        if busy:
            return f"warming {busy} project{'s' if busy != 1 else ''}"
        with self._lock:
            warm = sum(self._ok.values())
            total = len(self._ok)
        if warm == total:
            return f"idle, {warm} project{'s' if warm != 1 else ''} warm"
        return f"idle, {warm} of {total} projects warm"

    # --- scheduled jobs -----------------------------------------------------------------

    def reprobe(self) -> None:
        """Queue every known project with a lock: a warm one costs a probe, one uv lost is re-warmed from the store."""
        assert self.queue is not None and self.watcher is not None
        projects = [p for p in self.watcher.projects if (p / LOCK).is_file()]
        logger.info(f"re-probing {len(projects)} project(s)")
        for p in projects:
            self.queue.submit(p)

    def rescan(self) -> None:
        """Walk the roots for what events missed."""
        assert self.watcher is not None and self.state is not None
        self.watcher.rescan()
        # A project folder deleted under a root leaves `warmd status`; its store files age out by LRU.
        roots = [Path(r).absolute() for r in self.config.roots]
        for p in self.state.projects():
            if not p.exists() and any(r == p or r in p.parents for r in roots):
                logger.info(f"{p}: gone; forgetting it")
                self.state.forget_project(p)

    def check_headers(self) -> None:
        """HEAD every pinned file and index; record them; warn loudly when a pinned file moved."""
        assert self.state is not None
        pins = [pin for _project, pin in self.state.all_pins()]
        if not pins:
            return
        wheel_urls = {redact(p.wheel.url) for p in pins}
        with httpx.Client(timeout=self.config.download.timeout, follow_redirects=True, trust_env=True,
                          auth=index_auth(), headers={"User-Agent": "warmd"}) as client:
            checks = check_pins(pins, client)
        not_kept = []
        for h in checks:
            warning = None
            if h.url in wheel_urls:
                warning = compare(self.state.last_headers(h.url), h)
                if warning:
                    logger.warning(warning)
            elif h.ok and cache_verdict(h.cache_control) == "not kept":
                not_kept.append(h.url)
            if h.error:
                logger.warning(f"header check of {h.url}: {h.error}")
            self.state.record_headers(h, warning=warning)
        indexes = {redact(index_page(p.index)) for p in pins if p.index is not None}
        for url in not_kept:
            if url in indexes:
                logger.info(f"index {url} answers no-store/no-cache: uv keeps none of its wheels by itself")
        logger.info(f"checked headers of {len(checks)} URL(s)")

    # --- reload -------------------------------------------------------------------------

    def request_reload(self) -> None:
        """Ask the loop to reload the config (what SIGHUP does)."""
        self._reload.set()

    def reload(self) -> None:
        """Read the config again; a bad one is logged and the running one kept."""
        try:
            new = load_config(self.config_path)
        except WarmdError as exc:
            logger.error(f"reload failed, keeping the running config: {exc}")
            return
        self.notifier.reloading()
        old = self.config
        if new.state_dir != old.state_dir or new.download.parallel_files != old.download.parallel_files:
            logger.warning("state-dir and download.parallel-files take effect at the next restart")
        with self._lock:
            assert self._ref is not None
            retiring = self._ref
            self._ref = _PipelineRef(self._new_pipeline(new))
            self.config = new
            close_now = retiring.users == 0
            if not close_now:
                retiring.retired = True  # the last run using it closes it
                self._retired.append(retiring)
        if close_now:
            retiring.pipeline.close()  # type: ignore[attr-defined]
        if (new.roots, new.watch) != (old.roots, old.watch):
            assert self.watcher is not None
            self.watcher.stop()
            self.watcher = self._new_watcher(new)
            projects = self.watcher.start()
            logger.info(f"now watching {', '.join(map(str, new.roots)) or 'no root'}: {len(projects)} project(s)")
            for p in projects:
                self._on_new_project(p)
        if new.recheck_interval != old.recheck_interval and self._scheduler is not None:
            for job in self._scheduler.get_jobs():
                job.reschedule("interval", seconds=new.recheck_interval, jitter=new.recheck_interval * 0.1)
            logger.info(f"re-checking headers, the uv cache and the roots every {new.recheck_interval:.0f} s")
        self.notifier.ready()
        logger.info(f"config reloaded from {new.source or 'defaults'}")


def run_daemon(config: Config, *, config_path: Path | None, stop_event: threading.Event | None = None) -> int:
    """Run the daemon in the foreground until SIGTERM/SIGINT (or stop_event); returns the exit code."""
    return Daemon(config, config_path=config_path, stop_event=stop_event).run()
