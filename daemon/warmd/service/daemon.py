"""`warmd run`: watch the roots, keep every project warm, re-check on a schedule, behave like a service."""

from __future__ import annotations

import datetime as dt
import os
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from loguru import logger

from ..base import Cancelled, CancelToken, Config, ProjectReport, WarmdError, exit_code, scratch
from ..state import State
from ..transfer import TrustStore
from ..uv import Project
from ..warm import limited_words, needs_user, outcome_of, retry_delay
from .jobs import ScheduledJobs
from .notify import Notifier
from .reload import Reloading, _PipelineRef
from .schedule import build_scheduler
from .watch import ProjectWatcher
from .watches import CacheWatch
from .world import World
from .work_queue import WorkQueue

STOP_DEADLINE = 3.5  # seconds the workers get after SIGTERM; systemd's TimeoutStopSec is longer


class Daemon(ScheduledJobs, Reloading, World):
    """The parts of `warmd run` and how they are wired; run() is the foreground loop."""

    def __init__(self, config: Config, *, config_path: Path | None, stop_event: threading.Event | None = None,
                 notifier: Notifier | None = None, stop_deadline: float = STOP_DEADLINE) -> None:
        self.config = config
        self._stop_deadline = stop_deadline  # seconds the workers get at a stop (a test sets it)
        self.config_path = config_path
        self.stop_event = stop_event or threading.Event()
        self.notifier = notifier or Notifier()
        self._reload = threading.Event()
        self._lock = threading.Lock()
        self._ok: dict[Path, bool] = {}  # project -> all its wheels warm after the last run
        self._limited: dict[Path, int] = {}  # project -> its wheels a limit kept out in the last run
        self._started: dict[Path, Project] = {}  # project folder -> the project, stamped when its run began
        self._retries: dict[Path, float] = {}  # project -> when its failed work is tried again (time.time())
        self.state: State | None = None
        self.queue: WorkQueue | None = None
        self.watcher: ProjectWatcher | None = None
        self.cache_watch: CacheWatch | None = None  # uv's cache root: a `uv cache clean` is seen at once
        self._ref: _PipelineRef | None = None
        self._retired: list[_PipelineRef] = []
        self._scheduler = None
        self._signal: str | None = None
        # The look-ahead: one pass at a time (shutdown waits for it), its off switch, and when a
        # postponed one is tried again (time.time()), with how many were postponed in a row.
        self._ahead_lock = threading.Lock()
        self._ahead_token: CancelToken | None = None
        self._ahead_retry: float | None = None
        self._ahead_postponed = 0
        # `warmd trust` / `untrust` from another process: the trust file as last seen, and its rows
        self._trust_stamp: tuple[int, int, int] | None = None
        self._trust_rows: dict[Path, tuple[str, ...]] = {}

    # --- lifecycle ----------------------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT or stop_event; returns the exit code."""
        self.state = State.open(self.config.state_dir)
        # What a killed warmd left: its scratch folders, its word that it was warming something.
        scratch.sweep()
        self.state.clear_activity()
        # Signals first: a SIGTERM during a slow discovery still means a clean stop.
        restore = self._install_signals()
        try:
            self._ref = _PipelineRef(self._new_pipeline(self.config))
            self._ref.pipeline.check_uv()  # type: ignore[attr-defined]  # a service without uv fails at start
            self.queue = WorkQueue(self.config.download.parallel_files, self._run_project, on_state=self._on_state)
            self.watcher = self._new_watcher(self.config)
            self._watch_cache()
            self._trust_changed()  # what is trusted now; later changes wake the projects they concern
            # Each project is queued as it is found: the workers warm while the walk goes on.
            projects = self.watcher.start(on_found=self._on_new_project)
            logger.info(f"watching {len(self.config.roots)} root(s): {len(projects)} project(s), "
                        f"{len(self.watcher.watched_paths)} watched folder(s)")
            if not self.config.roots:
                logger.warning("no `roots` in the config: nothing to watch (add the folders holding your projects)")
            self._scheduler = build_scheduler(
                self.config.recheck_interval,
                jobs={"headers": self.check_headers, "reprobe": self.reprobe, "rescan": self.rescan,
                      "ahead": self.look_ahead},
                # The look-ahead's first pass waits for the start-up warming to be done.
                run_now=("headers", "ahead"),
                intervals={"ahead": self.config.ahead.interval},
            )
            self._scheduler.start()  # after the queue holds the projects: the look-ahead waits for them
            self.notifier.ready()  # after discovery is set up, not after warming: that can take hours
            self._loop()
        finally:
            self._shutdown()
            restore()
        return exit_code()  # stopped on request: nothing failed

    def _loop(self) -> None:
        ping = self.notifier.watchdog_interval()
        tick = min(1.0, ping) if ping else 1.0
        last_ping = 0.0
        last_status = ""
        while not self.stop_event.wait(tick):
            if self._reload.is_set():
                self._reload.clear()
                self.reload()
            self._retry_due()
            self._cache_check()
            for project in self._trust_changed():
                logger.info(f"{project}: its trust changed (`warmd trust` / `untrust`); warming it again")
                self._submit(project)
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
        self.queue.cancel_all("warmd is stopping")  # their uv children stop now, their scratch goes
        with self._lock:
            if self._ahead_token is not None:
                self._ahead_token.cancel("warmd is stopping")
        for ref in [self._ref, *self._retired]:
            if ref is not None:
                ref.pipeline.cancel()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        if self.watcher is not None:
            self.watcher.stop()
        if self.cache_watch is not None:
            self.cache_watch.close()
        deadline = time.monotonic() + self._stop_deadline
        finished = self.queue.join(self._stop_deadline)
        if finished and self._ahead_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            self._ahead_lock.release()  # no look-ahead pass runs, and none starts: the stop event is set
        else:
            finished = False
        if not finished:
            logger.warning("a run did not stop in time; exiting anyway (its partial downloads resume next start)")
            return  # closing the state or pipeline under a running thread would only add errors
        for ref in [self._ref, *self._retired]:
            if ref is not None:
                ref.pipeline.close()
        self.state.clear_activity()
        self.state.close()
        scratch.sweep()  # what the uv children of a killed predecessor were still using at start
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
        from ..warm import Pipeline

        return Pipeline(config, state=self.state)

    def _new_watcher(self, config: Config) -> ProjectWatcher:
        return ProjectWatcher(
            config.roots,
            max_depth=config.watch.max_depth,
            ignore=config.watch.ignore,
            debounce=config.watch.debounce,
            on_change=self._on_change,
            on_new_project=self._on_new_project,
            on_gone=self._on_gone,
        )

    def _on_change(self, project: Path) -> None:
        logger.info(f"{project}: uv.lock changed")
        assert self.queue is not None
        started = self._started.get(project)
        # Work for the lock that was there is superseded: stop it now rather than finish and throw it away.
        if self.queue.running(project) and (started is None or started.lock_stamp() != started.stamp):
            self.queue.cancel(project, "uv.lock changed while it was warmed")
        self._submit(project)

    def _on_new_project(self, project: Path) -> None:
        # Any entry named uv.lock: one that is not a readable file (a FIFO, a device, a symlink loop)
        # is recorded `failed` with the reason, not left waiting for `uv lock` in silence.
        if Project.of(project).names_lock():
            self._submit(project)
        else:
            logger.debug(f"{project}: a project without uv.lock yet; waiting for `uv lock`")

    def _submit(self, project: Path) -> None:
        assert self.queue is not None
        with self._lock:
            self._retries.pop(project, None)  # the run now queued is the retry
        self.queue.submit(project)

    def _on_state(self, project: Path, activity: str | None) -> None:
        """The queue's word on a project, recorded for `warmd status` (with the retry, once done)."""
        assert self.state is not None
        with self._lock:
            retry_at = self._retries.get(project) if activity is None else None
        self.state.set_activity(project, activity, retry_at=retry_at)

    def _retry_due(self) -> None:
        now = time.time()
        with self._lock:
            due = [p for p, at in self._retries.items() if at <= now]
            ahead_due = self._ahead_retry is not None and self._ahead_retry <= now
            if ahead_due:
                self._ahead_retry = None
        for project in due:
            if self._gone(project):
                continue
            logger.info(f"{project}: trying the failed work again")
            self._submit(project)
        if ahead_due:
            self._run_job_now("ahead")

    def _trust_changed(self) -> list[Path]:
        """The known projects whose trust `warmd trust` / `untrust` changed since the last look (a
        stat of the trust file per tick; it is read only when that changed)."""
        store = TrustStore(self.config.state_dir)
        stamp = store.stamp()
        if stamp == self._trust_stamp:
            return []
        self._trust_stamp = stamp
        try:
            rows = {t.path: t.origins for t in store.read()}
        except WarmdError as exc:
            logger.error(f"{exc}")
            rows = {}
        changed = {p for p in rows.keys() | self._trust_rows.keys() if rows.get(p) != self._trust_rows.get(p)}
        self._trust_rows = rows
        if not changed or self.watcher is None or self.state is None:
            return []
        with self._lock:
            ref = self._ref
        if ref is not None:
            ref.pipeline.refresh_guard()  # type: ignore[attr-defined]  # for the runs already under way too
        # by the folder itself: the path given to `warmd trust` may reach it through a symlink
        concerned = {os.path.realpath(p) for p in changed}
        known = set(self.watcher.projects) | set(self.state.projects())
        woken = sorted(p for p in known if os.path.realpath(p) in concerned and Project.of(p).has_lock())
        if woken and self.config.ahead.enable:
            self._run_job_now("ahead")
        return woken

    def _run_job_now(self, job: str) -> None:
        if self._scheduler is not None:
            self._scheduler.modify_job(job, next_run_time=dt.datetime.now(dt.timezone.utc))

    @contextmanager
    def _pipeline(self) -> Iterator[_PipelineRef]:
        """The current pipeline for one run; a SIGHUP meanwhile retires it, and the last run using it closes it."""
        with self._lock:
            ref = self._ref
            assert ref is not None
            ref.users += 1
        try:
            yield ref
        finally:
            with self._lock:
                ref.users -= 1
                close = ref.retired and ref.users == 0
                if close:
                    self._retired.remove(ref)
            if close:
                ref.pipeline.close()  # type: ignore[attr-defined]

    def _run_project(self, folder: Path) -> None:
        project = Project.of(folder).stamped()
        with self._lock:
            self._started[folder] = project
        with self._pipeline() as ref:
            try:
                reports = ref.pipeline.warm([project])  # type: ignore[attr-defined]
            except Cancelled as exc:  # called off before the pipeline took over
                reports = [ref.pipeline.superseded(project, exc.reason)]  # type: ignore[attr-defined]
            except Exception as exc:  # one project's crash must not stop the daemon
                logger.opt(exception=exc).debug(f"{folder}: traceback")
                reports = [self._record_crash(ref, project, exc)]
        for r in reports:
            self._settled(r)

    def _record_crash(self, ref: _PipelineRef, project: Project, exc: Exception) -> ProjectReport:
        report = ref.pipeline.failure(  # type: ignore[attr-defined]
            project, WarmdError(f"run failed: {type(exc).__name__}: {exc} (a bug in warmd: please report it with "
                                "the log of `warmd -v run`)"))
        try:
            assert self.state is not None
            self.state.record_report(report, outcome_of(report))
        except Exception as exc2:
            logger.error(f"{project.folder}: could not record the failure in {self.config.state_dir}: {exc2} "
                         "(is its disk full or read-only?)")
        return report

    def _settled(self, report: ProjectReport) -> None:
        """Log what a run concluded, at the level it deserves, and schedule the retry of failed work."""
        project = report.project
        if self._gone(project):
            return  # ran while its folder was deleted: nothing about it is worth keeping
        if report.superseded is not None:
            if self.stop_event.is_set():
                logger.info(f"{project}: {report.superseded}; warmd warms it at the next start")
            else:
                logger.info(f"{project}: {report.superseded}; warming it again")
                self._submit(project)
            return
        outcome = outcome_of(report)
        with self._lock:
            self._ok[project] = report.ok
            self._limited[project] = sum(1 for w in report.wheels if w.state == "skipped")
        lock = f"uv.lock {report.stamp.sha256[:12]}" if report.stamp and report.stamp.sha256 else "no uv.lock"
        if outcome.state != "failed":
            why = f": {outcome.reason}" if outcome.reason else ""
            logger.info(f"{project}: {outcome.state} ({lock}){why}")
            return
        if report.error_is_input:  # the planner said what is wrong with it (an ERROR naming the file)
            logger.info(f"{project}: failed ({lock}); warmd tries again when uv.lock changes")
            return
        assert self.state is not None
        delay = None
        if outcome.retry:
            delay = retry_delay(self.state.failures(project), first=self.config.retry_delay,
                                cap=self.config.recheck_interval)
            with self._lock:
                self._retries[project] = time.time() + delay
        then = f"; retrying in {delay:.0f} s" if delay is not None else ""
        fix = needs_user(report)
        if fix:
            logger.error(f"{project}: failed ({lock}): {outcome.reason}; {fix}{then}")
        else:  # waiting mends it, and the daemon waits on its own
            logger.warning(f"{project}: failed ({lock}): {outcome.reason}{then}")

    def status_line(self) -> str:
        """The one-line STATUS for systemd: what is being done, or how much is warm."""
        assert self.queue is not None
        busy = self.queue.busy()
        if busy:
            return f"warming {busy} project{'s' if busy != 1 else ''}"
        watcher = self.watcher
        with self._lock:
            # Of the projects under the roots now: one deleted or moved away is not counted.
            ok = {p: v for p, v in self._ok.items() if watcher is None or watcher.knows(p)}
            warm = sum(ok.values())
            total = len(ok)
            limited = sum(n for p, n in self._limited.items() if ok.get(p))
        line = f"idle, {warm} project{'s' if warm != 1 else ''} warm" if warm == total else \
            f"idle, {warm} of {total} projects warm"
        # `uv sync` still downloads what a limit kept out: "warm" alone would say otherwise.
        return line + (f", {limited_words(limited)}" if limited else "")


def run_daemon(config: Config, *, config_path: Path | None, stop_event: threading.Event | None = None) -> int:
    """Run the daemon in the foreground until SIGTERM/SIGINT (or stop_event); returns the exit code."""
    return Daemon(config, config_path=config_path, stop_event=stop_event).run()
