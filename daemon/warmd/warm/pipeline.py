"""The pipeline both drivers run: plan -> probe -> fetch -> import -> probe, for a set of projects."""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import hashlib
import os
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Collection, Iterator, Mapping, Sequence

from loguru import logger

from ..base import Cancelled, Config, Fetched, Pin, ProgressEvent, ProjectReport, WarmdError, WheelReport, host_of
from ..plan import Planner, ProjectPlan
from ..transfer import (
    MIRROR_RETRIES, Fetcher, MirroredFetcher, NetGuard, Store, compare, guard_for, mirror_progress, recorded, trusts,
    vouches_of,
)
from ..uv import PROBE_VENVS, ProbeResult, Project, Uv
from .admission import admit
from .feeder import Feeder, Shelf
from .handover import MEASURE_WAIT, HandOver
from .importer import Importer
from .in_use import _still_wanted, _used_elsewhere, _using
from .limits import Room
from .outcomes import outcome_of
from .proof import _report, _Run, _superseded, _superseded_if_changed, probe_plan, report_of
from .sources import Sourcing, _undisputed, _with_sizes

if TYPE_CHECKING:
    from ..state import State


class Pipeline(Sourcing, HandOver):
    """Keeps projects' pinned wheels warm in the user's uv cache; shared by `prefetch` and `run`."""

    def __init__(
        self,
        config: Config,
        *,
        state: State | None = None,
        progress: Callable[[ProgressEvent], None] | None = None,
        uv: Uv | None = None,
        fetcher: Fetcher | None = None,
    ) -> None:
        self.config = config
        self.state = state
        # The probe's empty venvs in warmd's state folder, so uv builds none in its cache per probe.
        self.uv = uv or Uv(config.uv, cache_dir=config.cache_dir, probe_venvs=config.state_dir / PROBE_VENVS)
        self.store = Store(config.store_dir, config.store_max_size)
        self.progress = progress
        # What warmd, and the uv it runs, may connect to for each project (guard.py); read again at
        # the start of every run (refresh_guard).
        self.guard: NetGuard = guard_for(config, recorded(config.state_dir))
        engine = dict(connections=config.download.connections, timeout=config.download.timeout,
                      max_parallel_files=config.download.parallel_files, keep=config.keep_wheels, guard=self.guard)
        if fetcher is not None:
            fetcher.use_guard(self.guard)
        # A lab's mirrors are tried first, by an engine of their own on the same store (mirrors.py).
        self.fetcher = MirroredFetcher(
            config.mirrors,
            fetcher or Fetcher(self.store, retries=config.download.retries, progress=progress, **engine),
            lambda: Fetcher(self.store, retries=MIRROR_RETRIES, progress=mirror_progress(progress), **engine),
            timeout=config.download.timeout, guard=self.guard,
        )
        self._planner = Planner(config, self.uv)
        self._lock = threading.Lock()
        self.measure_wait = MEASURE_WAIT  # seconds a run waits for a host's verdict (`_to_measure`)

    def plan(self, project: Project) -> ProjectPlan:
        """The project's plan (raises InputError on a bad lock or project)."""
        return self._planner.plan(project)

    def failure(self, project: Project, exc: Exception) -> ProjectReport:
        """The report of a project that could not be planned or run, naming its variant as a plan would."""
        return self._planner.failure(project, exc)

    def superseded(self, project: Project, reason: str) -> ProjectReport:
        """The report of a project whose run was called off before it concluded anything."""
        return self._planner.superseded(project, reason)

    @property
    def planner(self) -> Planner:
        """The planner of this pipeline's runs (one variant detection for all of them)."""
        return self._planner

    def refresh_guard(self) -> None:
        """Read again which projects the user trusts (`warmd trust` may have run since) and the
        indexes of their own uv configuration (a uv.toml they edited)."""
        self.guard.set_trust(trusts(self.config, recorded(self.config.state_dir)), vouches_of(self.config))

    def admit(self, pl: ProjectPlan, project: Path | None = None) -> ProjectPlan:
        """The plan with every pin the guard refuses for its project (or `project`, the one a
        look-ahead's copy stands for) moved to `skipped`, with why."""
        return admit(self.guard, pl, project)

    def check_uv(self) -> None:
        """Raise UvError unless the configured uv is found, runs, and says its version."""
        logger.debug("uv {} at {}", self.uv.version, self.uv.exe)

    def warm(self, projects: Sequence[Project]) -> list[ProjectReport]:
        """Make every selected wheel of `projects` warm; a wheel shared by several is fetched once.

        Work for a uv.lock that changed since it was planned, or that was called off (cancel.scope),
        comes back `superseded` and is not recorded: it says nothing about the lock there is now.
        """
        try:
            with self.fetcher.run():  # what this run learns of a mirror's health ends with it
                return self._warm(projects)
        except Cancelled as exc:
            return [self._planner.superseded(p, exc.reason) for p in projects]

    def warm_plans(self, plans: Sequence[ProjectPlan], *, since: float | None = None,
                   sized: Collection[str] = ()) -> list[ProjectReport]:
        """Make the pinned wheels of plans made elsewhere warm (the look-ahead's would-be locks).

        They are no project of the user's: nothing is recorded in the state and no project is
        locked. The caller has admitted them (`admit`, for the project they stand for). `since`: when
        the caller's own requests for them began (time.monotonic()), `sized`: the URLs whose pins'
        sizes it asked of their index then (Fetcher.sizes), so that they are not asked again. Work
        called off (cancel.scope) comes back `superseded`.
        """
        try:
            self.check_uv()
            return self._warm_plans(plans, [], record=False, since=since, sized=sized)
        except Cancelled as exc:
            return [dataclasses.replace(report_of(pl, wheels=()), skipped=(), superseded=exc.reason) for pl in plans]

    def _warm(self, projects: Sequence[Project]) -> list[ProjectReport]:
        # Without a usable uv nothing can be imported or proven: say so before spending a byte.
        self.check_uv()
        self.refresh_guard()
        plans, failed = self._planner.plan_all(projects)
        return self._warm_plans([self.admit(pl) for pl in plans], failed, record=True)

    def _warm_plans(self, plans: Sequence[ProjectPlan], failed: list[ProjectReport], *, record: bool,
                    since: float | None = None, sized: Collection[str] = ()) -> list[ProjectReport]:
        reports = []
        if since is None:
            since = time.monotonic()  # what warmd's own requests found from here on is this run's
        plans = _undisputed(plans)
        verified, said, unsized, weigh = self._sizes(plans)
        # A size learned for weighing goes into the plan: the engine orders by it without asking the
        # index a second time, holds the download to it, and the report records it. What an index
        # said goes only into the pins of that URL: another lock may name the same file elsewhere.
        plans = [_with_sizes(pl, verified, said) for pl in plans]
        sized = {p.wheel.url for pl in plans for p in pl.pins
                 if p.wheel.sha256 in verified or p.wheel.url in said or p.wheel.url in sized}
        with self._project_locks([pl.project for pl in plans] if record else []), \
                _using(self.store.root, {pin.wheel.sha256 for pl in plans for pin in pl.pins}):
            run = self._fetch_and_import(plans, record=record, sized=sized, unsized=unsized, weigh=weigh,
                                         since=since)
            if self.state is not None:
                self._record_seen(self.state)
                self.state.record_sizes({sha: f.size for sha, f in run.fetched.items() if isinstance(f, Fetched)})
            for pl in plans:
                unhashed = self._unhashed(pl, since)
                if not pl.is_current():  # what uv said may be about another lock
                    reports.append(_superseded(pl))
                    continue
                reports.append(_report(pl, run, unhashed))
            self._tidy(reports, run)
        reports = [_superseded_if_changed(r) for r in reports + failed]
        if record and self.state is not None:
            for r in reports:
                if r.superseded is None:
                    self.state.record_report(r, outcome_of(r), uv_version=str(self.uv.version))
        # Only now, with the new pins recorded and warm, may old files make room.
        self._evict({p.wheel.sha256 for pl in plans for p in pl.pins})
        return reports

    def _record_seen(self, state: State) -> None:
        """Record the headers this run's downloads were answered with, as a header check would be (with
        `compare`'s warning against the last one): whether uv keeps an index's files (uv_keeps) is then
        known to `warmd status`, doctor and the daemon too."""
        for h in self.fetcher.seen(take=True).values():
            warning = compare(state.last_headers(h.url), h)
            if warning:
                logger.warning(warning)
            state.record_headers(h, warning=warning)

    def cancel(self) -> None:
        """Stop downloads promptly; partial files stay for the next run."""
        self.fetcher.cancel()

    def close(self) -> None:
        """Release connections."""
        self.fetcher.close()

    # -- fetch and import ----------------------------------------------------------------------

    def _fetch_and_import(self, plans: Sequence[ProjectPlan], *, record: bool, sized: Collection[str],
                          unsized: Mapping[str, str], weigh: Mapping[Path, Mapping[str, int]],
                          since: float) -> _Run:
        """Probe, then get every wheel uv lacks into its cache, then ask uv again (`record`: say how
        far each project is in the state). `sized`: the URLs whose pins' sizes this run's index
        answer or a verified file gave, `unsized`: URL -> why its index did not answer for a size
        and `weigh`: sizes for weighing only (Pipeline._sizes); `since`: when the run began."""
        room = Room(self.store.root, self.uv.cache_dir, self.config.limits.min_free)
        try:
            return self._within(plans, room, record=record, sized=sized, unsized=unsized, weigh=weigh, since=since)
        finally:
            room.release()

    def _within(self, plans: Sequence[ProjectPlan], room: Room, *, record: bool, sized: Collection[str],
                unsized: Mapping[str, str], weigh: Mapping[Path, Mapping[str, int]], since: float) -> _Run:
        pins = [pin for pl in plans for pin in pl.pins]
        resumable = {p.wheel.sha256 for p in pins if self.store.part_path(p.wheel.sha256).exists()}
        # One source per file, chosen here once for the need and the limits alike; the others are
        # tried when it fails (`_fallback`). Past a limit a file is not downloaded at all (limits.py).
        # `[limits] total` weighs the user's projects (recorded ones), not the look-ahead's would-be
        # locks (total.py).
        sources, skipped, failed = self._sources(plans, unsized, weigh, total=record)
        chosen = {sha: ps[0] for sha, ps in sources.items()}
        # Nothing is downloaded before uv says what it has: a download begun while uv was asked fetched
        # files uv had (another project's, the user's own sync's) or that uv then fetched again
        # (ARCHITECTURE.md, "Every byte once", and what that costs on an uncapped host).
        shelf = Shelf()
        with Feeder(shelf) as feeder:
            interpreters = {py: path for pl in plans for py, path in pl.interpreters.items() if path is not None}
            transient: set[str] = set()
            checked = functools.partial(self._unchecked, since=since, transient=transient)
            importer = Importer(self._run_import, feeder, shelf, interpreters, checked)
            measuring: dict[str, Pin] = {}
            early: ThreadPoolExecutor | None = None
            try:
                others = {sha: ps[1:] for sha, ps in sources.items() if len(ps) > 1}
                before = {pl.project: self._probe(pl) for pl in plans}
                need: dict[str, Pin] = {}
                for pl in plans:
                    for pin in pl.pins:
                        if pin.name not in before[pl.project][pin.python].warm and pin.wheel.sha256 in chosen:
                            need.setdefault(pin.wheel.sha256, chosen[pin.wheel.sha256])
                # What uv lacks must fit above the free-space floor.
                floor = room.admit(list(need.values()), in_store=resumable | {s for s in need if self.store.has(s)})[1]
                for sha in floor.keys() & need.keys():
                    skipped[sha] = floor[sha]
                    del need[sha]
                if skipped:
                    logger.info("{} wheel(s) past a limit, not downloaded: {}", len(skipped), next(iter(skipped.values())))
                if record:
                    for pl in plans:
                        self._progress(pl, before[pl.project], need)
                # uv is handed each pin's own URL: only a file every lock names at one URL goes to it.
                urls: defaultdict[str, set[str]] = defaultdict(set)
                for pin in pins:
                    urls[pin.wheel.sha256].add(pin.wheel.url)
                single = {sha: pin for sha, pin in need.items() if len(urls[sha]) == 1}
                # Whether uv keeps the files of an index nothing has said of yet: their pre-flight, now.
                sized = {*sized, *self._ask_unknown(single, resumable)}
                # A host whose speed decides who downloads its files is measured on one of them first.
                measuring = self._to_measure(single, resumable)
                if measuring:
                    early, begun = ThreadPoolExecutor(max_workers=1, thread_name_prefix="warmd-measure"), threading.Event()
                    first = early.submit(self._fetch, list(measuring.values()), shelf, others, begun)
                    deadline = time.monotonic() + self.measure_wait
                    begun.wait(self.measure_wait)
                    self.fetcher.wait_links({host_of(p.wheel.url) for p in measuring.values()},
                                            max(0.0, deadline - time.monotonic()))
                # withdrawn from warmd's engine: none of these has begun downloading there (another
                # run of this process may have begun one: it stays warmd's, every byte once)
                wanted = self._for_uv({sha: pin for sha, pin in single.items() if sha not in measuring}, resumable)
                # uv starts on every file it lacks now, and unpacks each while it downloads; those uv
                # may download itself wait for the pre-flight, the others not.
                shelf.expect(need.keys() - wanted)
                importer.start([p for p in pins if p.wheel.sha256 in need.keys() - wanted])
                by_uv = self._checked_for_uv(wanted, need, sized, since)
                shelf.expect(wanted - by_uv)
                importer.start([p for p in pins if p.wheel.sha256 in wanted - by_uv])
                importer.start([p for p in pins if p.wheel.sha256 in by_uv], direct=True)
                fetched = self._fetch([pin for sha, pin in need.items() if sha not in by_uv and sha not in measuring],
                                      shelf, others)
                if early is not None:
                    fetched.update(first.result())
                fetched.update(self._fallback(fetched, need.keys() - by_uv, others, shelf, room, resumable))
                import_errors = importer.finish()
                unchecked = importer.unchecked()
                refused = importer.refused()
                if refused:  # uv could not fetch them itself (its own settings, a proxy...): warmd does
                    logger.info("uv could not fetch {} wheel(s) itself; warmd downloads them", len(refused))
                    by_uv -= refused
                    for sha in refused:
                        self.fetcher.unskip(sha)
                        import_errors.pop(sha, None)
                    shelf.expect(refused, again=True)
                    again = Importer(self._run_import, feeder, shelf, interpreters, checked)
                    again.start([p for p in pins if p.wheel.sha256 in refused])
                    fetched.update(self._fetch([need[sha] for sha in refused], shelf))
                    import_errors.update(again.finish())
                    unchecked.update(again.unchecked())
                run = _Run(before, {}, need, fetched, import_errors, by_uv, set(), skipped, failed, since,
                           unchecked, transient)
                run.after = {pl.project: self._proof(pl, run, feeder, shelf) for pl in plans}
            except KeyboardInterrupt:
                self.fetcher.cancel()  # Ctrl-C: downloads stop now (partials stay), not after they end
                raise
            except BaseException:
                for sha in measuring:  # the run failed or was called off: its partial stays for the next
                    self.fetcher.skip(sha, None)
                raise
            finally:
                shelf.close()  # a uv still asking for a file that will not come gets its answer: none
                if early is not None:
                    early.shutdown(wait=True)
        return run

    def _proof(self, pl: ProjectPlan, run: _Run, feeder: Feeder, shelf: Shelf) -> dict[str, ProbeResult]:
        """What uv says after the imports; wheels it lost right after theirs (a `uv cache clean`) get one more."""
        before = run.before[pl.project]
        if not any(p.wheel.sha256 in run.need for p in pl.pins):
            return before
        after = self._probe(pl)
        lost = [p for p in pl.pins if p.wheel.sha256 in run.need and p.wheel.sha256 not in run.import_errors
                and p.wheel.sha256 not in run.unchecked  # never handed to uv: nothing lost
                and isinstance(run.fetched.get(p.wheel.sha256), Fetched) and p.name in after[p.python].cold]
        if not lost:
            return after
        logger.info("{}: uv lost {} wheel(s) right after their import (was its cache cleaned?); importing again",
                    pl.project, len(lost))
        again = Importer(self._run_import, feeder, shelf, pl.interpreters,
                         functools.partial(self._unchecked, since=run.since, transient=run.transient))
        again.start(lost)
        run.import_errors.update(again.finish())
        run.unchecked.update(again.unchecked())
        return self._probe(pl)

    def _tidy(self, reports: list[ProjectReport], run: _Run) -> None:
        """Without keep-wheels, drop what this run downloaded once uv has it (and partials uv made moot)."""
        warm = {w.pin.wheel.sha256 for r in reports for w in r.wheels if w.state == "warm"}
        cold = {w.pin.wheel.sha256 for r in reports for w in r.wheels if w.state != "warm"}
        moot = set() if self.config.keep_wheels else run.moot
        for sha in cold:
            _still_wanted(self.store.root, sha)  # what another run left to drop is this one's to resume
        for sha in ((run.need.keys() & warm) - cold) | moot:
            # A speculative start never finished (uv fetched it), or one uv did not need: its
            # partial is preallocated to the whole file's size, disk held for nothing.
            partial_only = sha in run.by_uv or sha in moot
            if not partial_only and self.config.keep_wheels:
                continue
            tidy = functools.partial(_drop, self.store, sha, blob=not partial_only)
            # Another warm in this process (another project, or the run a reload left) still feeds
            # it: the last of them drops it when done, even one that never needed it itself.
            if not _used_elsewhere(self.store.root, sha, tidy):
                tidy()

    # -- steps ---------------------------------------------------------------------------------

    def _probe(self, pl: ProjectPlan) -> dict[str, ProbeResult]:
        return probe_plan(self.uv, pl)

    def _progress(self, pl: ProjectPlan, before: dict[str, ProbeResult], need: dict[str, Pin]) -> None:
        """Record the plan being warmed, with what uv has already, when something is to be done."""
        if self.state is None or not any(pin.wheel.sha256 in need for pin in pl.pins):
            return
        wheels = tuple(WheelReport(pin, "fetching" if pin.wheel.sha256 in need else
                                   "warm" if pin.name in before[pin.python].warm else "cold") for pin in pl.pins)
        self.state.record_progress(report_of(pl, wheels=wheels))

    def _evict(self, protect: set[str]) -> None:
        """Keep the store under its cap, never dropping a file any known project pins."""
        store = self.store
        # Every recorded pin is read only when something may go: that read grows with the projects,
        # the store's own size with its files (a daemon of thousands of projects runs this per run).
        if store.max_bytes is None or store.total_bytes() <= store.max_bytes:
            return
        if self.state is not None:
            protect |= {pin.wheel.sha256 for _p, pin in self.state.all_pins()}
        try:
            self.store.evict(protect)
        except WarmdError as exc:
            logger.warning("store eviction: {}", exc)

    @contextmanager
    def _project_locks(self, projects: Sequence[Path]) -> Iterator[None]:
        """One warmd at a time per project, across processes (a second one waits, then finds it warm)."""
        lock_dir = self.config.state_dir / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fds = []
        try:
            for project in sorted(set(projects)):
                key = hashlib.sha256(str(project).encode()).hexdigest()[:24]
                fd = os.open(lock_dir / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o600)
                fds.append(fd)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    logger.info("{}: another warmd is working on it; waiting", project)
                    fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            for fd in fds:
                os.close(fd)


def _drop(store: Store, sha: str, *, blob: bool) -> None:
    """Drop a file's partial (verified, never committed: Fetcher(keep=False)) and, `blob`, the blob an
    earlier keep-wheels run left."""
    store.drop_partial(sha)
    if blob:
        store.remove(sha)
