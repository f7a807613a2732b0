"""What the scheduler runs between changes: the header re-check, the re-probe, the rescan and the look-ahead."""

from __future__ import annotations

import time
from pathlib import Path

from loguru import logger

from ..base import CancelToken, HeaderCheck, WarmdError, cancel
from ..transfer import check_pins, compare, http_client, index_page
from ..uv import Keep, Project, norm_url, uv_keeps
from ..warm import retry_delay

_NAMED = 3  # projects a header finding names before "and N more"


class ScheduledJobs:
    """The Daemon's scheduled jobs (build_scheduler's `jobs`); they use the parts Daemon wires up."""

    def reprobe(self) -> None:
        """Queue every known project with a lock: a warm one costs a probe, one uv lost is re-warmed from the store."""
        assert self.queue is not None and self.watcher is not None
        projects = [p for p in self.watcher.projects if Project.of(p).has_lock()]
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
            for folder in self.watcher.projects:
                p = Project.of(folder)
                last = done.get(p.folder)
                if not p.has_lock():
                    continue
                # postponed: tried again; skipped (the guard): asked again, trust may have come since
                if (last is not None and last.outcome not in ("postponed", "skipped")
                        and now - last.checked_at < config.ahead.interval
                        and last.lock_sha256 == p.lock_stamp().sha256):
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
        """HEAD the pinned files and indexes whose answer can change a verdict; record them; warn
        loudly when a pinned file moved; one line per index for what uv keeps."""
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
        if not pinned:
            return
        # An index whose files uv keeps by an override or by their host (uv_keeps) is kept whatever
        # it answers: asking it again changes no answer. The others (no-store ones) are asked.
        keeps = self._keeps(pinned)
        settled = {(project, norm_url(pin.index)) for project, pin in pinned if pin.index is not None
                   and keeps[(project, norm_url(pin.index))].by in ("override", "host")}
        asked = {pin.wheel.url for project, pin in pinned
                 if pin.index is None or (project, norm_url(pin.index)) not in settled}
        pins = [pin for _project, pin in pinned if pin.wheel.url in asked]
        checks: list[HeaderCheck] = []
        if pins:
            with http_client(guard, timeout=self.config.download.timeout) as client:
                checks = check_pins(pins, client)
        for h in checks:
            warning = None
            if h.url in asked:
                warning = compare(self.state.last_headers(h.url), h)
                if warning:
                    logger.warning(warning)
            if h.error:
                logger.warning(f"header check of {h.url}: {h.error}")
            self.state.record_headers(h, warning=warning)
        # The verdicts the answers just recorded may change: asked again (the settled ones stand).
        keeps.update(self._keeps([(project, pin) for project, pin in pinned if pin.index is not None
                                  and (project, norm_url(pin.index)) not in settled]))
        self._report_not_kept(pinned, keeps)
        logger.info(f"checked headers of {len(checks)} URL(s)")

    def _keeps(self, pinned: list) -> dict[tuple[Path, str], Keep]:
        """uv_keeps for each project and index pinned (the verdict doctor, status and prefetch give),
        from what the state has recorded."""
        uv = self._ref.pipeline.uv  # type: ignore[union-attr]
        try:
            uv_version: str | None = str(uv.version)
        except WarmdError:
            uv_version = None
        keeps: dict[tuple[Path, str], Keep] = {}
        for project, pin in pinned:
            if pin.index is not None and (project, norm_url(pin.index)) not in keeps:
                keeps[(project, norm_url(pin.index))] = uv_keeps(
                    project, pin.index, pin.wheel.url, uv_version=uv_version, env=uv.env, state=self.state)
        return keeps

    def _report_not_kept(self, pinned: list, keeps: dict[tuple[Path, str], Keep]) -> None:
        """One line per index and finding, naming its projects: each project's indexes whose files
        uv keeps no copy of (INFO), the others' verdict (DEBUG)."""
        shown = {norm_url(pin.index): pin.index for _project, pin in pinned if pin.index is not None}
        found: dict[tuple[str, str, str, str | None], list[Path]] = {}
        for (project, index), keep in keeps.items():
            cache_control = keep.headers.cache_control if keep.headers else None
            found.setdefault((index, keep.verdict, keep.why, cache_control), []).append(project)
        for (index, verdict, why, cache_control), projects in found.items():
            named = ", ".join(str(p) for p in sorted(projects)[:_NAMED])
            more = f" and {len(projects) - _NAMED} more" if len(projects) > _NAMED else ""
            which = f"{len(projects)} project(s): {named}{more}"
            if verdict == "not kept":
                logger.info(f"index {shown[index]} answers Cache-Control {cache_control!r}: {why}; "
                            f"warmd keeps its wheels warm ({which})")
            else:
                logger.debug(f"index {shown[index]}: uv's keeping of its files is {verdict}: {why} ({which})")
