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

from ..base import (
    EXIT_OK, CancelToken, Config, FileStamp, ProjectReport, WarmdError, cancel, load_config, redact, scratch,
)
from ..state import State
from ..transfer import TrustStore, check_pins, compare, http_client, index_page
from ..uv import Override, file_stamp, index_overrides, norm_url, uv_keeps
from ..warm import limited_words, needs_user, outcome_of, retry_delay
from .schedule import build_scheduler
from .systemd import Notifier
from .watch import LOCK, ProjectWatcher

STOP_DEADLINE = 3.5  # seconds the workers get after SIGTERM; systemd's TimeoutStopSec is longer


class WorkQueue:
    """Runs projects on a fixed pool: one run per project at a time, changes during a run coalesced
    into one more after it; a running one can be called off (cancel), each run under its own token."""

    def __init__(self, workers: int, run: Callable[[Path], None], *,
                 on_state: Callable[[Path, str | None], None] | None = None) -> None:
        self._run = run
        # Told, under the queue's lock so they arrive in order, when a project is queued, starts
        # warming, or is done with (None).
        self._on_state = on_state
        self._cv = threading.Condition()
        self._pending: dict[Path, None] = {}  # insertion-ordered set
        self._running: dict[Path, CancelToken] = {}
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
                self._state(project, "queued")
                self._cv.notify()

    def running(self, project: Path) -> bool:
        """True while a run of `project` is under way."""
        with self._cv:
            return project in self._running

    def cancel(self, project: Path, reason: str) -> bool:
        """Call off the run of `project` under way (its uv children stop now); False when none runs."""
        with self._cv:
            token = self._running.get(project)
        if token is None:
            return False
        token.cancel(reason)
        return True

    def cancel_all(self, reason: str) -> None:
        """Call off every run under way."""
        with self._cv:
            tokens = list(self._running.values())
        for token in tokens:
            token.cancel(reason)

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
            for project in self._pending:
                self._state(project, None)
            self._pending.clear()
            self._again.clear()
            self._cv.notify_all()

    def join(self, timeout: float) -> bool:
        """Wait for the workers to end; False if some are still inside a run."""
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def _state(self, project: Path, state: str | None) -> None:
        if self._on_state is None:
            return
        try:
            self._on_state(project, state)
        except Exception as exc:  # bookkeeping must not stop the workers
            logger.warning(f"{project}: could not record that it is {state or 'done'}: {exc}")

    def _work(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._pending or self._closed)
                if self._closed:
                    return
                project = next(iter(self._pending))
                del self._pending[project]
                token = self._running[project] = CancelToken()
                self._state(project, "warming")
            try:
                with cancel.scope(token):
                    self._run(project)
            finally:
                with self._cv:
                    del self._running[project]
                    self.completed += 1
                    if project in self._again and not self._closed:
                        self._again.discard(project)
                        self._pending[project] = None
                        self._state(project, "queued")
                    else:
                        self._state(project, None)
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
        self._limited: dict[Path, int] = {}  # project -> its wheels a limit kept out in the last run
        self._started: dict[Path, FileStamp] = {}  # project -> its uv.lock when its run began
        self._retries: dict[Path, float] = {}  # project -> when its failed work is tried again (time.time())
        self.state: State | None = None
        self.queue: WorkQueue | None = None
        self.watcher: ProjectWatcher | None = None
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
            self._trust_changed()  # what is trusted now; later changes wake the projects they concern
            projects = self.watcher.start()
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
            for p in projects:
                self._on_new_project(p)
            self._scheduler.start()  # after the queue holds the projects: the look-ahead waits for them
            self.notifier.ready()  # after discovery is set up, not after warming: that can take hours
            self._loop()
        finally:
            self._shutdown()
            restore()
        return EXIT_OK

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
        deadline = time.monotonic() + STOP_DEADLINE
        finished = self.queue.join(STOP_DEADLINE)
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
        )

    def _on_change(self, project: Path) -> None:
        logger.info(f"{project}: uv.lock changed")
        assert self.queue is not None
        started = self._started.get(project)
        # Work for the lock that was there is superseded: stop it now rather than finish and throw it away.
        if self.queue.running(project) and file_stamp(project / LOCK) != started:
            self.queue.cancel(project, "uv.lock changed while it was warmed")
        self._submit(project)

    def _on_new_project(self, project: Path) -> None:
        # Any entry named uv.lock: one that is not a readable file (a FIFO, a device, a symlink loop)
        # is recorded `failed` with the reason, not left waiting for `uv lock` in silence.
        if os.path.lexists(project / LOCK):
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
        woken = sorted(p for p in known if os.path.realpath(p) in concerned and (p / LOCK).is_file())
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

    def _run_project(self, project: Path) -> None:
        with self._lock:
            self._started[project] = file_stamp(project / LOCK)
        with self._pipeline() as ref:
            try:
                reports = ref.pipeline.warm([project])  # type: ignore[attr-defined]
            except cancel.Cancelled as exc:  # called off before the pipeline took over
                reports = [ref.pipeline.superseded(project, exc.reason)]  # type: ignore[attr-defined]
            except Exception as exc:  # one project's crash must not stop the daemon
                logger.opt(exception=exc).debug(f"{project}: traceback")
                reports = [self._record_crash(ref, project, exc)]
        for r in reports:
            self._settled(r)

    def _record_crash(self, ref: _PipelineRef, project: Path, exc: Exception) -> ProjectReport:
        report = ref.pipeline.failure(  # type: ignore[attr-defined]
            project, WarmdError(f"run failed: {type(exc).__name__}: {exc} (a bug in warmd: please report it with "
                                "the log of `warmd -v run`)"))
        try:
            assert self.state is not None
            self.state.record_report(report, outcome_of(report))
        except Exception as exc2:
            logger.error(f"{project}: could not record the failure in {self.config.state_dir}: {exc2} "
                         "(is its disk full or read-only?)")
        return report

    def _settled(self, report: ProjectReport) -> None:
        """Log what a run concluded, at the level it deserves, and schedule the retry of failed work."""
        project = report.project
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
        with self._lock:
            warm = sum(self._ok.values())
            total = len(self._ok)
            limited = sum(n for p, n in self._limited.items() if self._ok.get(p))
        line = f"idle, {warm} project{'s' if warm != 1 else ''} warm" if warm == total else \
            f"idle, {warm} of {total} projects warm"
        # `uv sync` still downloads what a limit kept out: "warm" alone would say otherwise.
        return line + (f", {limited_words(limited)}" if limited else "")

    # --- scheduled jobs -----------------------------------------------------------------

    def reprobe(self) -> None:
        """Queue every known project with a lock: a warm one costs a probe, one uv lost is re-warmed from the store."""
        assert self.queue is not None and self.watcher is not None
        projects = [p for p in self.watcher.projects if (p / LOCK).is_file()]
        logger.info(f"re-probing {len(projects)} project(s)")
        for p in projects:
            self._submit(p)

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

    def look_ahead(self) -> None:
        """Warm each project's next upgrade (`[ahead]`), once the daemon has nothing else to do.

        A project is looked ahead for once per `[ahead] interval` and uv.lock; one postponed (an
        index down, a metered connection, on battery) is tried again after `retry-delay`, doubling.
        """
        from ..warm import look_ahead
        from ..warm import read_conditions

        assert self.queue is not None and self.watcher is not None and self.state is not None
        config = self.config
        if not config.ahead.enable:
            return
        while not self.queue.wait_idle(1.0):  # the locks the user has now come first
            if self.stop_event.is_set():
                return
        with self._ahead_lock:
            if self.stop_event.is_set():
                return
            done = self.state.snapshot().ahead
            now = time.time()
            projects = []
            for p in self.watcher.projects:
                last = done.get(p)
                if not (p / LOCK).is_file():
                    continue
                # postponed: tried again; skipped (the guard): asked again, trust may have come since
                if (last is not None and last.outcome not in ("postponed", "skipped")
                        and now - last.checked_at < config.ahead.interval
                        and last.lock_sha256 == file_stamp(p / LOCK).sha256):
                    continue  # looked ahead for this very lock within the interval
                projects.append(p)
            if not projects:
                return
            token = CancelToken()
            with self._lock:
                self._ahead_token = token
            try:
                with self._pipeline() as ref, cancel.scope(token):
                    reports = look_ahead(ref.pipeline, projects, settings=config.ahead,  # type: ignore[arg-type]
                                         state=self.state, conditions=read_conditions())
            finally:
                with self._lock:
                    self._ahead_token = None
        postponed = any(r.outcome == "postponed" for r in reports) or len(reports) < len(projects)
        with self._lock:
            self._ahead_postponed = self._ahead_postponed + 1 if postponed else 0
            delay = retry_delay(self._ahead_postponed, first=config.retry_delay, cap=config.ahead.interval)
            self._ahead_retry = time.time() + delay if postponed and not self.stop_event.is_set() else None
        if postponed:
            logger.info(f"upgrade look-ahead: trying again in {delay:.0f} s")

    def check_headers(self) -> None:
        """HEAD every pinned file and index; record them; warn loudly when a pinned file moved."""
        assert self.state is not None
        with self._lock:
            assert self._ref is not None
            pipeline = self._ref.pipeline
        # The user's uv.toml or trust may have changed since the last warm: ask the guard as it is now.
        pipeline.refresh_guard()  # type: ignore[attr-defined]
        guard = pipeline.guard  # type: ignore[attr-defined]
        # What the state recorded was admitted then; trust may have been taken back since.
        pinned = [(project, pin) for project, pin in self.state.all_pins()
                  if guard.check(pin.wheel.url, project, index=pin.index).ok
                  and (pin.index is None or guard.check(index_page(pin.index), project, index=pin.index).ok)]
        pins = [pin for _project, pin in pinned]
        if not pins:
            return
        wheel_urls = {redact(p.wheel.url) for p in pins}
        with http_client(guard, timeout=self.config.download.timeout, user_agent="warmd") as client:
            checks = check_pins(pins, client)
        answered = {}
        for h in checks:
            warning = None
            if h.url in wheel_urls:
                warning = compare(self.state.last_headers(h.url), h)
                if warning:
                    logger.warning(warning)
                if h.ok:
                    answered[h.url] = h
            if h.error:
                logger.warning(f"header check of {h.url}: {h.error}")
            self.state.record_headers(h, warning=warning)
        self._report_not_kept(pinned, answered)
        logger.info(f"checked headers of {len(checks)} URL(s)")

    def _report_not_kept(self, pinned: list, answered: dict) -> None:
        """Name each project's indexes whose files uv keeps no copy of (the verdict doctor and status give)."""
        try:
            uv_version: str | None = str(self._ref.pipeline.uv.version)  # type: ignore[union-attr]
        except WarmdError:
            uv_version = None
        overrides: dict[Path, dict[str, Override]] = {}
        seen: set[tuple[Path, str]] = set()
        for project, pin in pinned:
            h = answered.get(redact(pin.wheel.url))
            if pin.index is None or h is None or (project, norm_url(pin.index)) in seen:
                continue
            seen.add((project, norm_url(pin.index)))
            if project not in overrides:
                overrides[project] = index_overrides(project, os.environ)
            keep = uv_keeps(pin.wheel.url, h.cache_control, override=overrides[project].get(norm_url(pin.index)),
                            uv_version=uv_version)
            if keep.verdict == "not kept":
                logger.info(f"{project}: index {redact(pin.index)} answers Cache-Control {h.cache_control!r}: "
                            f"{keep.why}; warmd keeps its wheels warm")

    # --- reload -------------------------------------------------------------------------

    def request_reload(self) -> None:
        """Ask the loop to reload the config (what SIGHUP does)."""
        self._reload.set()

    def reload(self) -> None:
        """Read the config again; a bad one is logged and the running one kept."""
        try:
            new = load_config(self.config_path)
        except WarmdError as exc:
            logger.error(f"reload failed, keeping the running config: {exc}; fix the file and send SIGHUP again "
                         "(`systemctl --user reload warmd`)")
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
                if job.id != "ahead":
                    job.reschedule("interval", seconds=new.recheck_interval, jitter=new.recheck_interval * 0.1)
            logger.info(f"re-checking headers, the uv cache and the roots every {new.recheck_interval:.0f} s")
        if new.ahead.interval != old.ahead.interval and self._scheduler is not None:
            self._scheduler.reschedule_job("ahead", trigger="interval", seconds=new.ahead.interval,
                                           jitter=new.ahead.interval * 0.1)
        if new.ahead.enable and not old.ahead.enable:
            self._run_job_now("ahead")  # turned on: look ahead now, not an interval from now
        self.notifier.ready()
        logger.info(f"config reloaded from {new.source or 'defaults'}")


def run_daemon(config: Config, *, config_path: Path | None, stop_event: threading.Event | None = None) -> int:
    """Run the daemon in the foreground until SIGTERM/SIGINT (or stop_event); returns the exit code."""
    return Daemon(config, config_path=config_path, stop_event=stop_event).run()
