"""The pipeline both drivers run: plan -> probe -> fetch -> import -> probe, for a set of projects."""

from __future__ import annotations

import contextvars
import dataclasses
import fcntl
import hashlib
import os
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from loguru import logger

from .cancel import Cancelled
from .config import Config
from .errors import WarmdError
from .feeder import Feeder
from .fetch import Fetcher, FetchSkipped, ProgressEvent
from .lockfile import file_stamp
from .mirrors import MirroredFetcher
from .model import Fetched, Pin, ProjectReport, SkippedReport, WheelReport
from .plan import Planner, ProjectPlan
from .policy import outcome_of
from .store import Store
from .uvcache import ProbeResult, Uv

if TYPE_CHECKING:
    from .state import State


class Pipeline:
    """Keeps projects' pinned wheels warm in the user's uv cache; shared by `prefetch` and `run`."""

    def __init__(
        self,
        config: Config,
        *,
        state: State | None = None,
        progress: Callable[[ProgressEvent], None] | None = None,
        uv: Uv | None = None,
    ) -> None:
        self.config = config
        self.state = state
        self.uv = uv or Uv(config.uv, cache_dir=config.cache_dir)
        self.store = Store(config.store_dir, config.store_max_size)
        # Wheels a lab mirror serves are fetched from it first, by the same engine (mirrors.py).
        engine = dict(connections=config.download.connections, timeout=config.download.timeout,
                      retries=config.download.retries, max_parallel_files=config.download.parallel_files)
        self.fetcher = MirroredFetcher(config.mirrors, lambda **kw: Fetcher(self.store, **(engine | kw)),
                                       timeout=config.download.timeout, progress=progress)
        self._planner = Planner(config, self.uv)
        self._lock = threading.Lock()

    @property
    def variant(self) -> str:
        """The global variant: the configured one, or the detected one when the config says `auto`."""
        return self._planner.detection.variant

    def plan(self, project: Path) -> ProjectPlan:
        """The project's plan (raises InputError on a bad lock or project)."""
        return self._planner.plan(project)

    def failure(self, project: Path, exc: Exception) -> ProjectReport:
        """The report of a project that could not be planned or run, naming its variant as a plan would."""
        return self._planner.failure(project, exc)

    def superseded(self, project: Path, reason: str) -> ProjectReport:
        """The report of a project whose run was called off before it concluded anything."""
        return self._planner.superseded(project, reason)

    def pins(self, project: Path) -> list[Pin]:
        """The pins of a project, without fetching anything."""
        return list(self.plan(project).pins)

    def check_uv(self) -> None:
        """Raise UvError unless the configured uv is found, runs, and says its version."""
        logger.debug("uv {} at {}", self.uv.version, self.uv.exe)

    def warm(self, projects: Sequence[Path]) -> list[ProjectReport]:
        """Make every selected wheel of `projects` warm; a wheel shared by several is fetched once.

        Work for a uv.lock that changed since it was planned, or that was called off (cancel.scope),
        comes back `superseded` and is not recorded: it says nothing about the lock there is now.
        """
        try:
            with self.fetcher.run():  # what this run learns of a mirror's health ends with it
                return self._warm(projects)
        except Cancelled as exc:
            return [self._planner.superseded(p, exc.reason) for p in projects]

    def _warm(self, projects: Sequence[Path]) -> list[ProjectReport]:
        # Without a usable uv nothing can be imported or proven: say so before spending a byte.
        self.check_uv()
        plans, failed = self._planner.plan_all(projects)
        reports = []
        with self._project_locks([pl.project for pl in plans]):
            # Downloads start at once for files neither the store nor an earlier run has seen
            # warm; meanwhile uv says what it already has, and those downloads are called off.
            speculative = {pin.wheel.sha256: pin for pl in plans for pin in pl.pins
                           if not self.store.has(pin.wheel.sha256) and not self._was_warm(pl.project, pin)}
            with Feeder(self.store.path) as feeder, _Importer(self._import, feeder) as importer, \
                    ThreadPoolExecutor(max_workers=1, thread_name_prefix="warmd-fetch") as pool:
                early = pool.submit(self._fetch, list(speculative.values()), importer.ready)
                try:
                    before = {pl.project: self._probe(pl) for pl in plans}
                except BaseException as exc:
                    # uv could not be asked: stop downloading at once. Work called off keeps its
                    # downloads: verified, they serve the next lock too when its pins come back.
                    if not isinstance(exc, Cancelled):
                        for sha in speculative:
                            self.fetcher.skip(sha)
                    raise
                need: dict[str, Pin] = {}
                for pl in plans:
                    for pin in pl.pins:
                        if pin.name not in before[pl.project][pin.python].warm:
                            need.setdefault(pin.wheel.sha256, pin)
                    self._progress(pl, before[pl.project], need)
                # Only uv's answer about the very locks planned may call a download off.
                if all(pl.is_current() for pl in plans):
                    for sha in speculative.keys() - need.keys():
                        self.fetcher.skip(sha)
                # Each verified file goes to uv as soon as it is in the store, while others download.
                importer.start([pin for pl in plans for pin in pl.pins if pin.wheel.sha256 in need])
                fetched = early.result()
                fetched.update(self._fetch([pin for sha, pin in need.items() if sha not in speculative], importer.ready))
                import_errors = importer.finish()
                after = {pl.project: self._proof(pl, before[pl.project], need, fetched, import_errors, feeder)
                         for pl in plans}
            for pl in plans:
                unhashed = self._unhashed(pl)
                if not pl.is_current():  # what uv said may be about another lock
                    reports.append(_superseded(pl))
                    continue
                reports.append(self._report(pl, before[pl.project], after[pl.project], fetched, import_errors,
                                            unhashed))
        reports = [_superseded_if_changed(r) for r in reports + failed]
        if self.state is not None:
            for r in reports:
                if r.superseded is None:
                    self.state.record_report(r, outcome_of(r), uv_version=str(self.uv.version))
        # Only now, with the new pins recorded and warm, may old files make room.
        self._evict({p.wheel.sha256 for pl in plans for p in pl.pins})
        return reports

    def cancel(self) -> None:
        """Stop downloads promptly; partial files stay for the next run."""
        self.fetcher.cancel()

    def close(self) -> None:
        """Release connections."""
        self.fetcher.close()

    # -- steps ---------------------------------------------------------------------------------

    def _probe(self, pl: ProjectPlan) -> dict[str, ProbeResult]:
        return probe_plan(self.uv, pl)

    def _proof(self, pl: ProjectPlan, before: dict[str, ProbeResult], need: dict[str, Pin],
               fetched: dict[str, Fetched | WarmdError], import_errors: dict[str, str],
               feeder: Feeder) -> dict[str, ProbeResult]:
        """What uv says after the imports; wheels it lost right after theirs (a `uv cache clean`) get one more."""
        if not any(p.wheel.sha256 in need for p in pl.pins):
            return before
        after = self._probe(pl)
        lost = [p for p in pl.pins if p.wheel.sha256 in need and p.wheel.sha256 not in import_errors
                and isinstance(fetched.get(p.wheel.sha256), Fetched) and p.name in after[p.python].cold]
        if not lost:
            return after
        logger.info("{}: uv lost {} wheel(s) right after their import (was its cache cleaned?); importing again",
                    pl.project, len(lost))
        import_errors.update(self._import(lost, feeder))
        return self._probe(pl)

    def _unhashed(self, pl: ProjectPlan) -> dict[tuple[str, str], SkippedReport]:
        """With `warm-unhashed`, have uv download the wheels the lock pins without a sha256, and probe them."""
        wanted = [s for s in pl.skipped if s.unhashed and s.platform is not None]
        if not self.config.warm_unhashed or not wanted:
            return {}
        out: dict[tuple[str, str], SkippedReport] = {}
        groups: dict[tuple[str, str], list] = defaultdict(list)
        for s in wanted:
            groups[(s.python, s.platform or "")].append(s)
        for (python, platform), group in groups.items():
            try:
                self.uv.import_unverified(group, python=python, platform=platform)
            except WarmdError as exc:
                logger.warning("{}: {}", pl.project, exc)
                out.update({(s.name, python): SkippedReport(s, "failed", str(exc)) for s in group})
                continue
            res = self.uv.probe(pl.project, selected=[s.name for s in group], others=pl.lock_packages,
                                python=_probe_python(pl, python), flags=pl.flags)
            for s in group:
                if s.name in res.warm:
                    out[(s.name, python)] = SkippedReport(s, "warm", "not verified (no sha256 in the lock); uv fetched it")
                elif s.name in res.unproven:
                    out[(s.name, python)] = SkippedReport(s, "unproven", res.unproven[s.name])
                else:
                    out[(s.name, python)] = SkippedReport(s, "failed", "uv still would download it after fetching it "
                                                          "(does its server forbid caching?)")
        return out

    def _was_warm(self, project: Path, pin: Pin) -> bool:
        return self.state is not None and self.state.wheel_state(project, pin.wheel.sha256) == "warm"

    def _fetch(self, pins: list[Pin], on_done: Callable[[str, Fetched | WarmdError], None]) -> dict[str, Fetched | WarmdError]:
        if not pins:
            return {}
        logger.info("fetching {} wheel(s)", len(pins))
        return self.fetcher.fetch_many([p.wheel for p in pins], on_done=on_done,
                                       max_parallel_files=self.config.download.parallel_files)

    def _import(self, pins: list[Pin], feeder: Feeder) -> dict[str, str]:
        """Hand verified files to uv; returns sha256 -> error for the groups uv refused."""
        errors: dict[str, str] = {}
        # One uv call per target and index: a pylock names each package once, and the same file
        # pinned from two indexes (a mirror) is two cache entries. Direct-URL wheels (index None)
        # are keyed by their URL, so uv fetches those itself.
        groups: dict[tuple[str, str, str | None], dict[str, Pin]] = defaultdict(dict)
        for pin in pins:
            groups[(pin.python, pin.platform, pin.index)][pin.wheel.sha256] = pin
        for (python, platform, _index), by_sha in groups.items():
            group = list(by_sha.values())
            urls = {p.wheel.sha256: feeder.url(p.wheel.sha256, p.wheel.filename) for p in group if p.index is not None}
            try:
                self.uv.import_wheels(group, urls, python=python, platform=platform)
            except WarmdError as exc:
                logger.warning("{}", exc)  # each project's report names the wheels it cost
                errors.update({s: str(exc) for s in by_sha})
        return errors

    def _report(self, pl: ProjectPlan, before: dict[str, ProbeResult], after: dict[str, ProbeResult],
                fetched: dict[str, Fetched | WarmdError], import_errors: dict[str, str],
                unhashed: dict[tuple[str, str], SkippedReport]) -> ProjectReport:
        wheels = []
        for pin in pl.pins:
            res = after[pin.python]
            got = fetched.get(pin.wheel.sha256)
            if isinstance(got, FetchSkipped):
                got = None  # uv had it already: not a failure
            down = got.bytes_downloaded if isinstance(got, Fetched) else 0
            reused = got.bytes_reused if isinstance(got, Fetched) else 0
            if pin.name in before[pin.python].warm:
                reused = pin.wheel.size or 0
            where = dict(via=got.via, mirror_error=got.mirror_error) if isinstance(got, Fetched) else {}
            if pin.name in res.warm:
                wheels.append(WheelReport(pin, "warm", None, down, reused, **where))
            elif isinstance(got, WarmdError):
                wheels.append(WheelReport(pin, "failed", str(got), down, reused, fix=got.fix))
            elif pin.wheel.sha256 in import_errors:
                wheels.append(WheelReport(pin, "failed", import_errors[pin.wheel.sha256], down, reused))
            elif pin.name in res.unproven:
                wheels.append(WheelReport(pin, "unproven", res.unproven[pin.name], down, reused))
            elif pin.index is None:
                wheels.append(WheelReport(pin, "failed", "uv kept no copy after downloading it from its URL "
                                          "(does its server forbid caching?)", down, reused))
            else:
                wheels.append(WheelReport(pin, "failed", "uv still would download it after the import", down, reused))
        for w in wheels:
            if w.state != "warm":
                logger.warning("{}: {} {}{}", pl.project, w.pin.wheel.filename, w.state, f" ({w.reason})" if w.reason else "")
        skipped = tuple(unhashed.get((s.name, s.python)) or SkippedReport(s) for s in pl.skipped)
        for r in skipped:
            if r.state == "skipped":
                logger.info("{}: {} {} skipped: {}", pl.project, r.skipped.name, r.skipped.version, r.skipped.reason)
        warm = sum(1 for w in wheels if w.state == "warm")
        logger.info("{}: {} of {} pinned wheel(s) warm", pl.project, warm, len(wheels))
        return report_of(pl, wheels=tuple(wheels), skipped=skipped)

    def _progress(self, pl: ProjectPlan, before: dict[str, ProbeResult], need: dict[str, Pin]) -> None:
        """Record the plan being warmed, with what uv has already, when something is to be done."""
        if self.state is None or not any(pin.wheel.sha256 in need for pin in pl.pins):
            return
        wheels = tuple(WheelReport(pin, "fetching" if pin.wheel.sha256 in need else
                                   "warm" if pin.name in before[pin.python].warm else "cold") for pin in pl.pins)
        self.state.record_progress(report_of(pl, wheels=wheels))

    def _evict(self, protect: set[str]) -> None:
        """Keep the store under its cap, never dropping a file any known project pins."""
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


class _Importer:
    """Hands verified files to uv in batches as they arrive, on a thread of its own."""

    def __init__(self, import_: Callable[[list[Pin], Feeder], dict[str, str]], feeder: Feeder) -> None:
        self._import = import_
        self._feeder = feeder
        self._cv = threading.Condition()
        self._ready: list[str] = []  # verified, not imported yet
        self._pins: dict[str, list[Pin]] | None = None  # known once uv said what it lacks
        self._closing = False
        self._errors: dict[str, str] = {}
        self._cancelled: Cancelled | None = None
        # In the run's context: a run called off stops its uv imports too (cancel.scope).
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._loop,),
                                        name="warmd-import", daemon=True)

    def __enter__(self) -> _Importer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()

    def ready(self, sha: str, result: Fetched | WarmdError) -> None:
        """A fetch finished; verified files join the next batch."""
        if isinstance(result, Fetched):
            with self._cv:
                self._ready.append(sha)
                self._cv.notify()

    def start(self, pins: Sequence[Pin]) -> None:
        """The pins worth importing (files uv lacks); until this is called, nothing is imported."""
        by_sha: dict[str, list[Pin]] = defaultdict(list)
        for pin in pins:
            by_sha[pin.wheel.sha256].append(pin)
        with self._cv:
            self._pins = dict(by_sha)
            self._cv.notify()

    def finish(self) -> dict[str, str]:
        """Import what is left, stop, and return sha256 -> error for what uv refused."""
        with self._cv:
            self._closing = True
            self._cv.notify()
        if self._thread.is_alive():
            self._thread.join()
        if self._cancelled is not None:
            raise self._cancelled
        return self._errors

    def _loop(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._closing or (self._pins is not None and self._ready))
                pins = self._pins or {}
                batch = [p for sha in self._ready for p in pins.get(sha, ())]
                self._ready.clear()
                done = self._closing
            if batch:
                try:
                    self._errors.update(self._import(batch, self._feeder))
                except Cancelled as exc:
                    self._cancelled = exc
                    return
                except Exception as exc:  # a bug here must still leave a report, not a hung run
                    logger.exception("import failed")
                    self._errors.update({p.wheel.sha256: f"import failed: {exc}" for p in batch})
            if done:
                with self._cv:
                    if not self._ready:
                        return


def report_of(pl: ProjectPlan, *, wheels: tuple[WheelReport, ...],
              skipped: tuple[SkippedReport, ...] | None = None) -> ProjectReport:
    """A project's report: its plan's variant, choice and Pythons, with these wheel outcomes."""
    return ProjectReport(project=pl.project, lock=pl.lock, variant=pl.variant, python=pl.pythons, wheels=wheels,
                         skipped=skipped if skipped is not None else tuple(SkippedReport(s) for s in pl.skipped),
                         chosen_by=pl.chosen_by, flags=pl.flags, notes=pl.notes, stamp=pl.lock_stamp)


_LOCK_CHANGED = "uv.lock changed while it was warmed"


def _superseded(pl: ProjectPlan) -> ProjectReport:
    return dataclasses.replace(report_of(pl, wheels=()), skipped=(), superseded=_LOCK_CHANGED)


def _superseded_if_changed(report: ProjectReport) -> ProjectReport:
    """The report, or, when its uv.lock is no longer the file it is about, a superseded one."""
    if report.superseded is not None or report.stamp is None or file_stamp(report.lock) == report.stamp:
        return report
    return dataclasses.replace(report, wheels=(), skipped=(), error=None, error_is_input=False,
                               superseded=_LOCK_CHANGED)


def probe_plan(uv: Uv, pl: ProjectPlan) -> dict[str, ProbeResult]:
    """Ask uv, per Python of the plan, which of its pinned wheels a fresh `uv sync` would download."""
    out = {}
    for python in pl.pythons:
        selected = [p.name for p in pl.pins if p.python == python]
        out[python] = uv.probe(pl.project, selected=selected, others=pl.lock_packages,
                               python=_probe_python(pl, python), flags=pl.flags)
    return out


def _probe_python(pl: ProjectPlan, python: str) -> str:
    # The interpreter the plan's markers came from, so uv plans the same sync.
    found = pl.interpreters.get(python)
    return str(found) if found is not None else python


def preview(config: Config, projects: Sequence[Path], uv: Uv | None = None) -> list[ProjectReport]:
    """The plan of each project with each wheel's state as uv sees it now: no network, nothing written.

    "warm" and "cold" come from the offline `uv sync --dry-run` probe, never from warmd's state.
    """
    uv = uv or Uv(config.uv, cache_dir=config.cache_dir)
    uv.exe
    # No cache folder yet: everything is cold, and asking uv would create one.
    fresh = not uv.cache_dir.exists()
    plans, failed = Planner(config, uv).plan_all(projects)
    reports = []
    for pl in plans:
        probed = {py: ProbeResult() for py in pl.pythons} if fresh else probe_plan(uv, pl)
        wheels = []
        for pin in pl.pins:
            res = probed[pin.python]
            if pin.name in res.warm:
                wheels.append(WheelReport(pin, "warm"))
            elif pin.name in res.unproven:
                wheels.append(WheelReport(pin, "unproven", res.unproven[pin.name]))
            else:
                wheels.append(WheelReport(pin, "cold"))
        reports.append(report_of(pl, wheels=tuple(wheels)))
    return reports + failed
