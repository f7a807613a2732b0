"""The pipeline both drivers run: plan -> probe -> fetch -> import -> probe, for a set of projects."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import itertools
import os
import re
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Collection, Iterator, Mapping, Sequence

from loguru import logger
from packaging.utils import canonicalize_name

from ..base import (
    Cancelled, Config, DiskFull, Fetched, FetchError, Pin, ProgressEvent, ProjectReport, Skipped, SkippedReport,
    WarmdError, WheelFile, WheelReport, redact,
)
from ..plan import Planner, ProjectPlan
from ..transfer import (
    MIRROR_RETRIES, FetchCancelled, Fetcher, FetchSkipped, MirroredFetcher, NetGuard, Store, guard_for, host_of, key,
    mirror_for, mirror_progress, recorded, trusts, vouches_of,
)
from ..uv import ProbeResult, Uv, file_stamp, uv_keeps, uv_toml_files
from .feeder import Feeder, Shelf
from .importer import Importer
from .limits import Room, over_project_limit
from .outcomes import outcome_of

if TYPE_CHECKING:
    from ..state import State

# Below this rate per stream on a host that caps each connection, uv's one stream per file leaves
# most of the link idle and warmd's ranges pay for their second pass over the bytes; above it
# (PyPI's CDN gives ~100 MiB/s a stream here), uv's own parallel downloads keep up.
_SLOW_STREAM = 32 * 2**20
_MEASURE_WAIT = 1.2  # seconds to wait after the probe for a host's verdict (a trial takes ~0.8 s)
_UV_DOWNLOADED = re.compile(r"^\s*Downloaded\s+(\S+)")  # uv's line as each wheel it fetched is in


# The files each warm under way in this process plans, per store: a warm that is done with a
# file must not drop it from the store while another still hands it to uv (keep-wheels off).
_in_use: Counter[tuple[Path, str]] = Counter()
_in_use_lock = threading.Lock()


@contextmanager
def _using(root: Path, shas: set[str]) -> Iterator[None]:
    keys = [(root, sha) for sha in shas]
    with _in_use_lock:
        _in_use.update(keys)
    try:
        yield
    finally:
        with _in_use_lock:
            _in_use.subtract(keys)
            for k in keys:
                if _in_use[k] <= 0:
                    del _in_use[k]


def _used_elsewhere(root: Path, sha: str) -> bool:
    with _in_use_lock:
        return _in_use[(root, sha)] > 1


@dataclass
class _Run:
    """What one warm found and did, for the reports: uv's answers before and after, and each wheel's fate."""

    before: dict[Path, dict[str, ProbeResult]]
    after: dict[Path, dict[str, ProbeResult]]
    need: dict[str, Pin]  # sha256 -> a pin of a file uv lacked
    fetched: dict[str, Fetched | WarmdError]
    import_errors: dict[str, str]
    by_uv: set[str]  # files uv downloaded itself
    moot: set[str] = dataclasses.field(default_factory=set)  # begun on speculation, and uv had them
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)  # sha256 -> the limit that kept it out
    unsized: dict[str, str] = dataclasses.field(default_factory=dict)  # sha256 -> why its index gave no size
    since: float = 0.0  # time.monotonic() when the run began: the requests of this run count (NetGuard.chain_passed)
    # sha256 -> why, for wheels pinned by URL not handed to uv (`_unchecked`); `transient`: those whose
    # pre-flight met a fault that waiting may mend (a timeout, a 5xx): failed, so the daemon retries
    unchecked: dict[str, str] = dataclasses.field(default_factory=dict)
    transient: set[str] = dataclasses.field(default_factory=set)


class Pipeline:
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
        self.uv = uv or Uv(config.uv, cache_dir=config.cache_dir)
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
        if state is not None:
            # what an earlier process found of the hosts: no measurement before the first choice
            self.fetcher.remember(state.links())
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

    def _warm(self, projects: Sequence[Path]) -> list[ProjectReport]:
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
                self.state.record_links(self.fetcher.links())
                self.state.record_sizes({sha: f.size for sha, f in run.fetched.items() if isinstance(f, Fetched)})
            for pl in plans:
                unhashed = self._unhashed(pl, since)
                if not pl.is_current():  # what uv said may be about another lock
                    reports.append(_superseded(pl))
                    continue
                reports.append(self._report(pl, run, unhashed))
            self._tidy(reports, run)
        reports = [_superseded_if_changed(r) for r in reports + failed]
        if record and self.state is not None:
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

    # -- fetch and import ----------------------------------------------------------------------

    def _sizes(self, plans: Sequence[ProjectPlan]
               ) -> tuple[dict[str, int], dict[str, int], dict[str, str], dict[Path, dict[str, int]]]:
        """The sizes of the pinned files the plans give none for (PyTorch's index gives none), when a
        limit must weigh them: (sha256 -> bytes of the store's verified file or of bytes warmd verified
        before (State.sizes); URL -> what its index said (Fetcher.sizes); URL -> why its index did not
        answer at all; project -> sha256 -> the size on record of a file uv had at the project's last
        run, for weighing only (State.warm_sizes): uv may have downloaded it itself, so warmd never
        verified that size, and a file uv keeps is not asked for again on every run).

        A size the index would not give stays unknown (the per-project limit then keeps the file out).
        What an index said holds only for its URL: a lock may pin another project's file by its sha256
        on a server of its own, which may say anything (_with_sizes, _sources). A size learned here
        goes into the plan (_warm_plans), so the download is held to it; only once the bytes are
        verified is it kept for later runs."""
        limits = self.config.limits
        unknown = [p.wheel for pl in plans for p in pl.pins if p.wheel.size is None]
        if not unknown or (limits.per_project is None and limits.min_free is None):
            return {}, {}, {}, {}
        verified: dict[str, int] = {}
        for sha in {w.sha256 for w in unknown}:
            blob = self.store.path(sha)
            with contextlib.suppress(OSError):
                if blob is not None:
                    verified[sha] = blob.stat().st_size
        if self.state is not None:
            verified |= self.state.sizes(w.sha256 for w in unknown if w.sha256 not in verified)
        weigh: dict[Path, dict[str, int]] = {}
        if self.state is not None:
            for pl in plans:
                on_record = self.state.warm_sizes(pl.project)
                weigh[pl.project] = {p.wheel.sha256: n for p in pl.pins if p.wheel.size is None
                                     and p.wheel.sha256 not in verified
                                     and (n := on_record.get((p.wheel.sha256, p.wheel.url))) is not None}
        said: dict[str, int] = {}
        unsized: dict[str, str] = {}
        # Fetcher.sizes answers by sha256: each round asks one URL of each file.
        by_sha: defaultdict[str, dict[str, WheelFile]] = defaultdict(dict)
        for pl in plans:
            for p in pl.pins:
                w = p.wheel
                if w.size is None and w.sha256 not in verified and w.sha256 not in weigh.get(pl.project, {}):
                    by_sha[w.sha256].setdefault(w.url, w)
        for ask in itertools.zip_longest(*(list(urls.values()) for urls in by_sha.values())):
            wheels = [w for w in ask if w is not None]
            answers = self.fetcher.sizes(wheels)
            for w in wheels:
                said_now = answers.get(w.sha256)
                if isinstance(said_now, int) and said_now > 0:
                    said[w.url] = said_now
                elif isinstance(said_now, str):
                    unsized[w.url] = f"its index did not answer for its size: {said_now}"
        return verified, said, unsized, weigh

    def _sources(self, plans: Sequence[ProjectPlan], unsized: Mapping[str, str], weigh: Mapping[Path, Mapping[str, int]]
                 ) -> tuple[dict[str, list[Pin]], dict[str, str], dict[str, str]]:
        """Where each file is fetched from: sha256 -> its pins of distinct URLs, first choice first (the
        plans' order), each with the size its own lock and index gave; a pin whose project's
        per-project limit keeps the file out, or whose index did not answer for its size, is none.
        Also sha256 -> why, for the files with no source: past the limit of every plan that pins them
        (skipped), and those whose index did not answer (failed, as their download would)."""
        limit = self.config.limits.per_project
        per = {pl.project: over_project_limit(pl.pins, limit, weigh.get(pl.project)) for pl in plans}
        sources: defaultdict[str, list[Pin]] = defaultdict(list)
        skipped: dict[str, str] = {}
        failed: dict[str, str] = {}
        for pl in plans:
            for pin in pl.pins:
                sha, url = pin.wheel.sha256, pin.wheel.url
                if url in unsized:
                    failed.setdefault(sha, unsized[url])
                elif sha in per[pl.project]:
                    skipped.setdefault(sha, per[pl.project][sha])
                elif all(p.wheel.url != url for p in sources[sha]):
                    sources[sha].append(pin)
        sources = {sha: pins for sha, pins in sources.items() if pins}
        return sources, {sha: why for sha, why in skipped.items() if sha not in sources and sha not in failed}, \
            {sha: why for sha, why in failed.items() if sha not in sources}

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
        # One source per file, chosen here once for the speculative start, the need and the limits
        # alike; the others are tried when it fails (`_fallback`). Past a limit a file is not
        # downloaded at all (limits.py): not even on speculation.
        sources, skipped, failed = self._sources(plans, unsized, weigh)
        chosen = {sha: ps[0] for sha, ps in sources.items()}
        # Downloads start at once for files neither the store nor an earlier run has seen
        # warm; meanwhile uv says what it already has, and those downloads are called off.
        cold = {pin.wheel.sha256 for pl in plans for pin in pl.pins if not self._was_warm(pl.project, pin)}
        fits, floor = room.admit([pin for sha, pin in chosen.items() if sha in cold and not self.store.has(sha)],
                                 in_store=resumable)
        speculative = {pin.wheel.sha256: pin for pin in fits}
        shelf = Shelf()
        with Feeder(shelf) as feeder, ThreadPoolExecutor(max_workers=1, thread_name_prefix="warmd-fetch") as pool:
            interpreters = {py: path for pl in plans for py, path in pl.interpreters.items() if path is not None}
            transient: set[str] = set()
            checked = functools.partial(self._unchecked, since=since, transient=transient)
            importer = Importer(self._run_import, feeder, shelf, interpreters, checked)
            try:
                others = {sha: ps[1:] for sha, ps in sources.items() if len(ps) > 1}
                early = pool.submit(self._fetch, list(speculative.values()), shelf, others)
                try:
                    before = {pl.project: self._probe(pl) for pl in plans}
                except BaseException as exc:
                    # uv could not be asked: stop downloading at once. Work called off keeps its
                    # downloads: verified, they serve the next lock too when its pins come back.
                    if not isinstance(exc, Cancelled):
                        for sha in speculative:
                            self.fetcher.skip(sha, None)  # the run's error says why
                    raise
                need: dict[str, Pin] = {}
                for pl in plans:
                    for pin in pl.pins:
                        if pin.name not in before[pl.project][pin.python].warm and pin.wheel.sha256 in chosen:
                            need.setdefault(pin.wheel.sha256, chosen[pin.wheel.sha256])
                # What uv lacks beyond the speculative downloads must fit above the free-space floor too.
                later = [pin for sha, pin in need.items() if sha not in speculative and sha not in floor]
                floor.update(room.admit(later, in_store=resumable | {s for s in need if self.store.has(s)})[1])
                for sha in floor.keys() & need.keys():
                    skipped[sha] = floor[sha]
                    del need[sha]
                if skipped:
                    logger.info("{} wheel(s) past a limit, not downloaded: {}", len(skipped), next(iter(skipped.values())))
                if record:
                    for pl in plans:
                        self._progress(pl, before[pl.project], need)
                # Only uv's answer about the very locks planned may call a download off.
                moot = speculative.keys() - need.keys() if all(pl.is_current() for pl in plans) else set()
                for sha in moot:
                    self.fetcher.skip(sha)
                # uv is handed each pin's own URL: only a file every lock names at one URL goes to it.
                urls: defaultdict[str, set[str]] = defaultdict(set)
                for pin in pins:
                    urls[pin.wheel.sha256].add(pin.wheel.url)
                wanted = self._for_uv({sha: pin for sha, pin in need.items() if len(urls[sha]) == 1},
                                      resumable, speculative)
                # uv starts on every file it lacks now, and unpacks each while it downloads; those uv
                # may download itself wait for the pre-flight, the others not.
                shelf.expect(need.keys() - wanted)
                importer.start([p for p in pins if p.wheel.sha256 in need.keys() - wanted])
                by_uv = self._checked_for_uv(wanted, need, sized, since)
                for sha in by_uv:
                    self.fetcher.skip(sha, None)  # the import's own progress lines follow
                shelf.expect(wanted - by_uv)
                importer.start([p for p in pins if p.wheel.sha256 in wanted - by_uv])
                importer.start([p for p in pins if p.wheel.sha256 in by_uv], direct=True)
                fetched = early.result()
                fetched.update(self._fetch([pin for sha, pin in need.items() if sha not in speculative.keys() | by_uv],
                                           shelf, others))
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
                run = _Run(before, {}, need, fetched, import_errors, by_uv, moot, skipped, failed, since,
                           unchecked, transient)
                run.after = {pl.project: self._proof(pl, run, feeder, shelf) for pl in plans}
            except KeyboardInterrupt:
                self.fetcher.cancel()  # Ctrl-C: downloads stop now (partials stay), not after they end
                raise
            finally:
                shelf.close()  # a uv still asking for a file that will not come gets its answer: none
        return run

    def _for_uv(self, need: dict[str, Pin], resumable: set[str], speculative: dict[str, Pin]) -> set[str]:
        """The needed wheels uv should download itself (ARCHITECTURE.md, "Who downloads").

        Files uv keeps by itself qualify; so do an index's that uv would not keep (`no-store`) on a
        host one stream of which outruns uv's unpacking, or whose link all connections share, when
        the user has no uv.toml: uv then gets the per-index override in a config file of warmd's,
        which would replace theirs (`Uv.import_wheels(keep=...)`). Of those, warmd keeps a file only
        where its ranges beat uv's one stream per file: on a host that caps each connection to a
        slow stream; or one it has begun.

        Before uv is handed them, `_checked_for_uv` asks where their URLs lead.
        """
        if self.config.keep_wheels or not self.uv.drops_bad_wheels:
            return set()  # the store wants the bytes; or an older uv would keep a bad wheel's bytes
        # A wheel a lab mirror serves goes through warmd's engine: uv would fetch it from the origin.
        # So does one the guard would not hand to uv (plain http that is no index of the user's own:
        # uv sends .netrc credentials wherever it connects).
        candidates = {sha: pin for sha, pin in need.items()
                      if pin.index is not None and sha not in resumable and not self.store.has(sha)
                      and mirror_for(self.config.mirrors, pin.wheel.url) is None
                      and self.guard.for_uv(pin.wheel.url, index=pin.index).ok}
        hosts = {host_of(p.wheel.url) for p in candidates.values()}
        measuring = {host_of(p.wheel.url) for sha, p in candidates.items() if sha in speculative}
        links = {h: link for h in hosts if (link := self.fetcher.link(h)) is not None}
        if measuring - links.keys():
            links |= self.fetcher.wait_links(measuring - links.keys(), timeout=_MEASURE_WAIT)
        version = str(self.uv.version)
        out = set()
        for sha, pin in candidates.items():
            link = links.get(host_of(pin.wheel.url))
            kind = link.kind if link is not None else None
            if (kind == "capped" and link is not None and link.stream_rate < _SLOW_STREAM) or \
                    (kind != "fast" and self.store.part_path(sha).exists()):
                continue  # warmd's ranges win there; or its bytes have begun to come (a fast host's are cheap)
            keeps = uv_keeps(pin.wheel.url, link.cache_control if link else None, known=link is not None,
                             uv_version=version)
            if keeps.verdict == "kept":
                out.add(sha)
            elif keeps.verdict == "not kept" and kind in ("fast", "shared") and self._no_user_uv_toml():
                out.add(sha)
        return out

    def _checked_for_uv(self, out: set[str], need: dict[str, Pin], sized: Collection[str], since: float) -> set[str]:
        """Of the wheels `_for_uv` chose, those uv may be handed: uv follows redirects unchecked, so only
        a file whose URL warmd's own engine asked this run (since `since`), every redirect hop checked
        by the guard and a success at the end, goes to uv: a download begun on speculation, the HEAD for
        the limits, else one HEAD now (which also confirms the size the limits weighed). The others
        warmd downloads itself."""
        if out:
            # uv holds a file to the lock's sha256, not to a size: a lock naming a big file as a small
            # one would pass the limit through uv. With a limit, only files whose size this run's own
            # requests confirmed go: a size learned for weighing (`sized`), a download begun on
            # speculation (a part begun this run: its answer was held to the pin's size, ranges.py),
            # else one request now, whose answer must agree. That request also checks the redirects
            # (`_preflight`); none where this run asked already.
            limit = self.config.limits.per_project is not None
            held = {s for s in out if need[s].wheel.url in sized or self.store.part_path(s).exists()}
            said = self._preflight([need[s].wheel.url for s in out], since,
                                   again={need[s].wheel.url for s in out - held} if limit else ())
            out = {s for s in out if (a := said[need[s].wheel.url]).passed
                   and (not limit or s in held or (a.size is not None and a.size == need[s].wheel.size))}
        if out:
            logger.info("{}: uv fetches {} wheel(s) itself (it keeps them, and splitting them would not help)",
                        ", ".join(sorted({host_of(need[s].wheel.url) for s in out})), len(out))
        return out

    def _preflight(self, urls: Sequence[str], since: float, again: Collection[str] = ()) -> dict[str, _Checked]:
        """What warmd's own engine found of each URL this run (since `since`), asking now where it has
        not: uv follows redirects unchecked, so a URL goes to uv only when a request of warmd's for it
        got a success over a redirect chain whose every hop the guard let through (NetGuard.passed).

        A download begun this run, or the HEAD for the limits, answered it already: no request. Else
        the engine asks (Fetcher.ask: one HEAD, a one-byte ranged GET where HEAD says nothing), in
        parallel, not retried, 5 s at most (a URL that does not answer is downloaded by warmd, or left
        out: `_Checked.transient`). `again`: URLs whose size is wanted too, asked even when their chain
        passed (not when it was refused).
        """
        ask = [u for u in dict.fromkeys(urls)
               if (known := self.guard.chain_passed(u, since)) is None or (known and u in again)]
        said = self.fetcher.ask(ask, keep=False) if ask else {}
        out = {}
        for u in urls:
            passed = bool(self.guard.chain_passed(u, since))
            a = said.get(u)
            why = None if passed else ("a redirect went where warmd does not connect" if a is None
                                       else a.error or f"HTTP {a.status}")
            out[u] = _Checked(passed, a.size if a is not None and a.status == 200 else None, why,
                              transient=not passed and a is not None and a.mendable)
        return out

    def _unchecked(self, pins: Sequence[Pin], *, since: float, transient: set[str]) -> dict[str, str]:
        """sha256 -> why, for the wheels pinned by URL that uv may not be handed (`_preflight`): uv
        downloads them from that URL itself (its cache keys them by it). Warmd's own download of this
        run asked the URL already; a file that was in the store is asked now. Those whose question met
        a fault that waiting may mend go into `transient`."""
        said = self._preflight([p.wheel.url for p in pins], since)
        transient.update(p.wheel.sha256 for p in pins if said[p.wheel.url].transient)
        return {p.wheel.sha256: _unchecked_reason(p.wheel.url, said[p.wheel.url].why or "")
                for p in pins if not said[p.wheel.url].passed}

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
        for sha in ((run.need.keys() & warm) - cold) | moot:
            if _used_elsewhere(self.store.root, sha):
                continue  # another warm in this process (another project, or the run a reload left) still feeds it
            if sha in run.by_uv or sha in moot:
                # a speculative start never finished (uv fetched it), or one uv did not need: its
                # partial is preallocated to the whole file's size, disk held for nothing
                self.store.drop_partial(sha)
            elif not self.config.keep_wheels:
                self.store.drop_partial(sha)  # verified, never committed (Fetcher(keep=False))
                self.store.remove(sha)  # a blob an earlier keep-wheels run left

    def _fetch(self, pins: list[Pin], shelf: Shelf,
               others: Mapping[str, Sequence[Pin]] | None = None) -> dict[str, Fetched | WarmdError]:
        """Fetch these pins' files, offering each to the shelf; a file that failed where `others` (sha256
        -> its other sources) has another source to try stays expected (`_fallback` tries them)."""
        if not pins:
            return {}
        logger.info("fetching {} wheel(s)", len(pins))

        def done(sha: str, result: Fetched | WarmdError) -> None:
            if isinstance(result, Fetched):
                shelf.offer(sha, result.path)
            elif not (others and others.get(sha) and _another_source_may_help(result)):
                shelf.withdraw(sha)

        return self.fetcher.fetch_many([p.wheel for p in pins], on_done=done, on_growing=shelf.offer,
                                       max_parallel_files=self.config.download.parallel_files)

    def _fallback(self, fetched: dict[str, Fetched | WarmdError], wanted: Collection[str],
                  others: Mapping[str, Sequence[Pin]], shelf: Shelf, room: Room,
                  resumable: Collection[str]) -> dict[str, Fetched | WarmdError]:
        """Fetch each wanted file whose first source failed from the next source another lock names,
        until one verifies or none is left: a lock that names another project's file by its sha256 on
        a server that lies about it (its size, its bytes) must not fail that file for the others.
        Each source is held to the size its own lock and index gave, and must fit the free-space floor."""
        left = {sha: list(others.get(sha, ())) for sha in wanted}
        out: dict[str, Fetched | WarmdError] = {}
        failed = {sha: r for sha, r in fetched.items() if sha in wanted and not isinstance(r, Fetched)}
        while failed:
            todo: list[Pin] = []
            for sha, result in failed.items():
                if left.get(sha) and _another_source_may_help(result):
                    nxt = left[sha].pop(0)
                    if room.admit([nxt], in_store=resumable)[0]:
                        logger.warning("{}: {}; trying {}", nxt.wheel.filename, result, redact(nxt.wheel.url))
                        todo.append(nxt)
                        continue
                    left[sha] = []
                shelf.withdraw(sha)
            got = self._fetch(todo, shelf, left)
            out.update(got)
            failed = {sha: r for sha, r in got.items() if not isinstance(r, Fetched)}
        return out

    def _needs_override(self, pins: Sequence[Pin]) -> list[str]:
        """The indexes of these pins whose files uv would not keep by itself (`_for_uv` let them
        through only when the user has no uv.toml for warmd's config file to replace)."""
        version = str(self.uv.version)
        out = set()
        for p in pins:
            link = self.fetcher.link(host_of(p.wheel.url))
            keeps = uv_keeps(p.wheel.url, link.cache_control if link else None, known=link is not None,
                             uv_version=version)
            if p.index and keeps.verdict != "kept":
                out.add(p.index)
        return sorted(out)

    def _no_user_uv_toml(self) -> bool:
        """No uv.toml uv would read: a config file of warmd's for the import replaces nothing of the user's."""
        return not any(p.is_file() for p in uv_toml_files(self.uv.env))

    def _run_import(self, pins: Sequence[Pin], urls: dict[str, str], python: str, platform: str,
                    direct: bool, interpreter: Path | None) -> None:
        if not direct:
            self.uv.import_wheels(pins, urls, python=python, platform=platform, patient=True,
                                  interpreter=interpreter)
            return
        # uv downloads these itself: what it prints is their only progress
        by_name = {p.name: p for p in pins}
        for p in pins:
            self._emit(p, "start", "uv downloads it itself")

        def line(text: str) -> None:
            m = _UV_DOWNLOADED.match(text)
            if m and (p := by_name.pop(canonicalize_name(m.group(1)), None)) is not None:
                self._emit(p, "done", "downloaded by uv")

        try:
            self.uv.import_wheels(pins, urls, python=python, platform=platform, on_line=line,
                                  keep=self._needs_override(pins), interpreter=interpreter)
        except WarmdError as exc:
            for p in by_name.values():
                self._emit(p, "retry", f"uv could not fetch it: {exc}")
            raise
        for p in by_name.values():
            self._emit(p, "done", "downloaded by uv")

    def _emit(self, pin: Pin, state: str, message: str) -> None:
        if self.progress is None:
            return
        size = pin.wheel.size
        with contextlib.suppress(Exception):
            self.progress(ProgressEvent(pin.wheel.filename, pin.wheel.sha256, size,
                                        size or 0 if state == "done" else 0, 0, state, message))

    # -- steps ---------------------------------------------------------------------------------

    def _probe(self, pl: ProjectPlan) -> dict[str, ProbeResult]:
        return probe_plan(self.uv, pl)

    def _unhashed(self, pl: ProjectPlan, since: float) -> dict[tuple[str, str], SkippedReport]:
        """With `warm-unhashed`, have uv download the wheels the lock pins without a sha256, and probe them."""
        wanted = [s for s in pl.skipped if s.unhashed and s.platform is not None]
        if not self.config.warm_unhashed or not wanted:
            return {}
        out: dict[tuple[str, str], SkippedReport] = {}
        # uv connects to their index's page of the package, and to the file, itself: only where the
        # guard lets it, and (uv follows redirects unchecked) where warmd's own request for each came
        # back this run with a success, every redirect hop checked: one pre-flight for them all.
        urls = {(s.name, s.python): [u for u in (_package_page(s.index, s.name) if s.index else None, s.url)
                                     if u is not None] for s in wanted}
        refused: dict[tuple[str, str], str] = {}
        for s in wanted:
            for u in urls[(s.name, s.python)]:
                verdict = self.guard.for_uv(u, pl.project, index=s.index)
                if not verdict.ok:
                    refused[(s.name, s.python)] = verdict.reason or "refused by the network guard"
                    break
        said = self._preflight([u for k, us in urls.items() if k not in refused for u in us], since)
        for s in list(wanted):
            k = (s.name, s.python)
            failing = [(u, said[u]) for u in urls[k] if not said[u].passed] if k not in refused else []
            why = refused.get(k) or next((_unchecked_reason(u, a.why or "") for u, a in failing), None)
            if why is not None:
                wanted.remove(s)
                # a fault that waiting may mend fails the wheel, so the daemon tries again
                transient = bool(failing) and all(a.transient for _u, a in failing)
                out[k] = SkippedReport(s, "failed" if transient else "skipped", why)
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
        # A wheel the look-ahead warmed is in uv's cache as surely as one a run of the project did:
        # the lock that adopts it should not start downloading it before uv is asked.
        return self.state is not None and (self.state.wheel_state(project, pin.wheel.sha256) == "warm"
                                           or self.state.warmed_ahead(pin.wheel.sha256))

    def _report(self, pl: ProjectPlan, run: _Run, unhashed: dict[tuple[str, str], SkippedReport]) -> ProjectReport:
        before, after = run.before[pl.project], run.after[pl.project]
        fetched, import_errors = run.fetched, run.import_errors
        wheels = []
        unchecked: list[SkippedReport] = []
        for pin in pl.pins:
            res = after[pin.python]
            got = fetched.get(pin.wheel.sha256)
            if isinstance(got, FetchSkipped):
                got = None  # uv had it already: not a failure
            down = got.bytes_downloaded if isinstance(got, Fetched) else 0
            reused = got.bytes_reused if isinstance(got, Fetched) else 0
            if pin.wheel.sha256 in run.by_uv:
                down = pin.wheel.size or 0  # fetched all the same, by uv
            if pin.name in before[pin.python].warm:
                reused = pin.wheel.size or 0
            where = dict(via=got.via, mirror_error=got.mirror_error) if isinstance(got, Fetched) else {}
            if pin.name in res.warm:
                wheels.append(WheelReport(pin, "warm", None, down, reused, **where))
            elif pin.wheel.sha256 in run.unchecked and pin.wheel.sha256 in run.transient:
                wheels.append(WheelReport(pin, "failed", run.unchecked[pin.wheel.sha256]))
            elif pin.wheel.sha256 in run.unchecked:  # left to `uv sync`, as a pin the guard refused: no limit's
                unchecked.append(SkippedReport(skipped_pin(pin, run.unchecked[pin.wheel.sha256]), "skipped"))
            elif pin.wheel.sha256 in run.unsized:
                wheels.append(WheelReport(pin, "failed", run.unsized[pin.wheel.sha256]))
            elif pin.wheel.sha256 in run.skipped:
                wheels.append(WheelReport(pin, "skipped", run.skipped[pin.wheel.sha256]))
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
        skipped = tuple(unhashed.get((s.name, s.python)) or SkippedReport(s) for s in pl.skipped) + tuple(unchecked)
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


def admit(guard: NetGuard, pl: ProjectPlan, project: Path | None = None) -> ProjectPlan:
    """`pl` with each pin `guard` refuses for its project (`project`, else the plan's) moved to
    `skipped`, with the guard's reason.

    A wheel pinned by URL is downloaded by uv itself (its cache keys it by that URL), so it must
    pass the check for uv too; the others pass warmd's own (and go to uv only where `_for_uv` may).
    What the plan's project (or the look-ahead for `project`) had admitted before is replaced in
    one step: a private URL its lock no longer names opens no connection, one it still names stays
    open to requests in flight.
    """
    scope = key(pl.project) if project is None else f"{key(project)} (look-ahead)"
    kept: list[Pin] = []
    left: list[Skipped] = []
    with guard.admitting(scope):
        for pin in pl.pins:
            ask = guard.check if pin.index is not None else guard.for_uv
            verdict = ask(pin.wheel.url, project or pl.project, index=pin.index, scope=scope)
            if verdict.ok:
                kept.append(pin)
            else:
                left.append(skipped_pin(pin, verdict.reason or "refused by the network guard"))
    if not left:
        return pl
    logger.warning("{}: {} wheel(s) skipped: {}", pl.project, len(left), left[0].reason)
    return dataclasses.replace(pl, pins=tuple(kept), skipped=pl.skipped + tuple(left))


def skipped_pin(pin: Pin, reason: str) -> Skipped:
    """A pin left out of the warm, with why (the report lists it under `skipped`)."""
    return Skipped(pin.name, pin.version, pin.python, reason, filename=pin.wheel.filename, url=pin.wheel.url,
                   size=pin.wheel.size, index=pin.index, platform=pin.platform)


@dataclass(frozen=True)
class _Checked:
    """What `Pipeline._preflight` found of one URL."""

    passed: bool  # a request of warmd's got a success this run, every redirect hop checked
    size: int | None = None  # the size its answer gave now (None: not asked now, or none given)
    why: str | None = None  # why it did not pass
    transient: bool = False  # it did not pass for a fault that waiting may mend (no answer, 408, 429, 5xx)


def _unchecked_reason(url: str, why: str) -> str:
    return (f"uv would fetch {redact(url)} itself and follow its redirects unchecked, and warmd could not "
            f"check where it leads: {why}")


def _package_page(index: str, name: str) -> str:
    """The index's page of one package, which uv asks for a `name==version` requirement (PEP 503)."""
    return f"{index.rstrip('/')}/{canonicalize_name(name)}/"


def _undisputed(plans: Sequence[ProjectPlan]) -> list[ProjectPlan]:
    """The plans, with no size for a file whose locks do not agree on it (one gives none, or another).

    A run fetches each file once, held to the size its pin declares: a lock naming another project's
    file by its sha256 with a wrong size must not fail that file for the project whose lock is right.
    Such a file's size is then its index's answer (or none), as for a lock that gives none.
    """
    said: defaultdict[str, set[int | None]] = defaultdict(set)
    for pl in plans:
        for p in pl.pins:
            said[p.wheel.sha256].add(p.wheel.size)
    disputed = {sha for sha, sizes in said.items() if len(sizes) > 1}
    if not disputed:
        return list(plans)
    logger.info("{} file(s) pinned with different sizes by different locks: their index is asked", len(disputed))
    return [dataclasses.replace(pl, pins=tuple(
        dataclasses.replace(p, wheel=dataclasses.replace(p.wheel, size=None)) if p.wheel.sha256 in disputed else p
        for p in pl.pins)) for pl in plans]


def _with_sizes(pl: ProjectPlan, verified: Mapping[str, int], said: Mapping[str, int]) -> ProjectPlan:
    """`pl` with the sizes learned for files its lock gives none for: a verified file's (sha256 -> bytes)
    for every pin of it, an index's answer (URL -> bytes) for the pins of that URL only."""
    def learned(p: Pin) -> int | None:
        return verified.get(p.wheel.sha256, said.get(p.wheel.url)) if p.wheel.size is None else None

    if not any(learned(p) is not None for p in pl.pins):
        return pl
    return dataclasses.replace(pl, pins=tuple(
        p if (n := learned(p)) is None else dataclasses.replace(p, wheel=dataclasses.replace(p.wheel, size=n))
        for p in pl.pins))


def _another_source_may_help(result: Fetched | WarmdError) -> bool:
    """Whether another server's copy of a file may succeed where this result failed: not for a file
    called off or not needed, nor for a disk that is full."""
    return isinstance(result, FetchError) and not isinstance(result, (FetchSkipped, FetchCancelled, DiskFull))


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
    # The same guard as a run's, but it asks no name server: a dry run sends nothing anywhere.
    guard = guard_for(config, recorded(config.state_dir), resolve=False)
    plans, failed = Planner(config, uv).plan_all(projects)
    plans = [admit(guard, pl) for pl in plans]
    reports = []
    # The limits as a run applies them, with the sizes the locks give (a dry run asks no index).
    room = Room(Path(config.store_dir), uv.cache_dir, config.limits.min_free)
    try:
        for pl in plans:
            probed = {py: ProbeResult() for py in pl.pythons} if fresh else probe_plan(uv, pl)
            held = over_project_limit(pl.pins, config.limits.per_project, weigh_unknown=False)
            cold = [p for p in pl.pins if p.name not in probed[p.python].warm and p.name not in probed[p.python].unproven
                    and p.wheel.sha256 not in held]
            held.update(room.admit(dict((p.wheel.sha256, p) for p in cold).values())[1])
            wheels = []
            for pin in pl.pins:
                res = probed[pin.python]
                if pin.name in res.warm:
                    wheels.append(WheelReport(pin, "warm"))
                elif pin.name in res.unproven:
                    wheels.append(WheelReport(pin, "unproven", res.unproven[pin.name]))
                elif pin.wheel.sha256 in held:
                    wheels.append(WheelReport(pin, "skipped", held[pin.wheel.sha256]))
                else:
                    wheels.append(WheelReport(pin, "cold"))
            reports.append(report_of(pl, wheels=tuple(wheels)))
    finally:
        room.release()
    return reports + failed
