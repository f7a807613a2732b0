"""The pipeline both drivers run: plan -> probe -> fetch -> import -> probe, for a set of projects."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence
from urllib.parse import urlsplit

from loguru import logger
from packaging.specifiers import InvalidSpecifier, SpecifierSet

from .config import Config
from .errors import InputError, LockError, WarmdError
from .feeder import Feeder, Shelf
from .fetch import Fetcher, FetchSkipped
from .headers import cache_verdict, is_immutable_host
from .importer import Importer
from .lockfile import Lock, read_lock
from .model import Fetched, Pin, ProgressEvent, ProjectReport, WheelReport
from .select import Selection, select_pins
from .store import Store
from .uvcache import ProbeResult, Uv

if TYPE_CHECKING:
    from .state import State

_MEASURE_WAIT = 0.6  # seconds to wait after the probe for the first download's rate
_UV_DOWNLOADED = re.compile(r"^\s*Downloaded\s+(\S+)")  # uv's line as each wheel it fetched is in


@dataclass(frozen=True)
class Plan:
    """One project's lock and the wheels selected from it."""

    project: Path
    lock: Lock
    selection: Selection
    pythons: tuple[str, ...]


def project_of(path: Path) -> tuple[Path, Path]:
    """(project folder, uv.lock path) for a folder or a uv.lock given on the command line."""
    path = path.expanduser().absolute()
    if path.name == "uv.lock" or path.is_file():
        return path.parent, path
    if not path.is_dir():
        raise InputError(f"{path}: no such project folder")
    return path, path / "uv.lock"


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
        self.fetcher = fetcher or Fetcher(
            self.store,
            connections=config.download.connections,
            timeout=config.download.timeout,
            retries=config.download.retries,
            progress=progress,
            max_parallel_files=config.download.parallel_files,
        )
        self._variant: str | None = None
        self._lock = threading.Lock()

    @property
    def variant(self) -> str:
        """The configured variant, or the detected one when the config says `auto`."""
        if self._variant is None:
            from .variant import resolve_variant

            detection = resolve_variant(self.config.variant)
            logger.info("variant {} ({}: {})", detection.variant, detection.source, detection.detail)
            self._variant = detection.variant
        return self._variant

    def plan(self, project: Path) -> Plan:
        """Read the project's lock and select its pins (raises InputError on a bad lock)."""
        project, lock_path = project_of(project)
        lock = read_lock(lock_path)
        own = self.uv.project_python(project)
        pythons = _allowed([own, *self.config.python] if own else list(self.config.python), lock)
        if not pythons:
            raise InputError(f"{project}: no Python version to select wheels for (no .python-version, "
                             "no interpreter uv would use, no `python` in the config)")
        selection = select_pins(lock, variant=self.variant, patterns=self.config.packages, pythons=pythons)
        return Plan(project=project, lock=lock, selection=selection, pythons=tuple(pythons))

    def pins(self, project: Path) -> list[Pin]:
        """The pins of a project, without fetching anything."""
        return list(self.plan(project).selection.pins)

    def warm(self, projects: Sequence[Path]) -> list[ProjectReport]:
        """Make every selected wheel of `projects` warm; a wheel shared by several is fetched once."""
        failed: list[ProjectReport] = []
        plans: list[Plan] = []
        for p in projects:
            try:
                plans.append(self.plan(p))
            except WarmdError as exc:
                logger.error("{}", exc)
                folder = p.parent if p.name == "uv.lock" else p
                failed.append(ProjectReport(project=folder, lock=folder / "uv.lock", variant=self._variant or "?",
                                            python=(), error=str(exc), error_is_input=isinstance(exc, InputError)))
        reports = []
        with self._project_locks([pl.project for pl in plans]):
            before, need, fetched, import_errors, by_uv = self._fetch_and_import(plans)
            for pl in plans:
                touched = any(p.wheel.sha256 in need for p in pl.selection.pins)
                after = self._probe(pl) if touched else before[pl.project]
                reports.append(self._report(pl, before[pl.project], after, fetched, import_errors, by_uv))
            self._tidy(reports, need, by_uv)
        reports += failed
        if self.state is not None:
            for r in reports:
                self.state.record_report(r)
        # Only now, with the new pins recorded and warm, may old files make room.
        self._evict({p.wheel.sha256 for pl in plans for p in pl.selection.pins})
        return reports

    def cancel(self) -> None:
        """Stop downloads promptly; partial files stay for the next run."""
        self.fetcher.cancel()

    def close(self) -> None:
        """Release connections."""
        self.fetcher.close()

    # -- fetch and import ----------------------------------------------------------------------

    def _fetch_and_import(self, plans: list[Plan]) -> tuple[dict[Path, dict[str, ProbeResult]], dict[str, Pin],
                                                              dict[str, Fetched | WarmdError], dict[str, str], set[str]]:
        """Probe, then get every wheel uv lacks into its cache; returns (probe before, needed, fetch
        results, import errors, wheels uv fetched itself)."""
        pins = [pin for pl in plans for pin in pl.selection.pins]
        resumable = {p.wheel.sha256 for p in pins if self.store.part_path(p.wheel.sha256).exists()}
        # Downloads start at once for files neither the store nor an earlier run has seen
        # warm; meanwhile uv says what it already has, and those downloads are called off.
        speculative = {pin.wheel.sha256: pin for pl in plans for pin in pl.selection.pins
                       if not self.store.has(pin.wheel.sha256) and not self._was_warm(pl.project, pin)}
        shelf = Shelf()
        with Feeder(shelf) as feeder, ThreadPoolExecutor(max_workers=1, thread_name_prefix="warmd-fetch") as pool:
            importer = Importer(self._run_import, feeder, shelf)
            try:
                early = pool.submit(self._fetch, list(speculative.values()), shelf)
                try:
                    before = {pl.project: self._probe(pl) for pl in plans}
                except BaseException:
                    for sha in speculative:  # uv could not be asked: stop downloading at once
                        self.fetcher.skip(sha)
                    raise
                need: dict[str, Pin] = {}
                for pl in plans:
                    for pin in pl.selection.pins:
                        if pin.name not in before[pl.project][pin.python].warm:
                            need.setdefault(pin.wheel.sha256, pin)
                    self._mark(pl, need, "fetching")
                for sha in speculative.keys() - need.keys():
                    self.fetcher.skip(sha)
                by_uv = self._for_uv(need, resumable, speculative)
                for sha in by_uv:
                    self.fetcher.skip(sha)
                # uv starts on every file it lacks now, and unpacks each while it downloads.
                shelf.expect(need.keys() - by_uv)
                importer.start([p for p in pins if p.wheel.sha256 in need and p.wheel.sha256 not in by_uv])
                importer.start([p for p in pins if p.wheel.sha256 in by_uv], direct=True)
                fetched = early.result()
                fetched.update(self._fetch([pin for sha, pin in need.items() if sha not in speculative.keys() | by_uv],
                                           shelf))
                import_errors = importer.finish()
                refused = importer.refused()
                if refused:  # uv could not fetch them itself (its own settings, a proxy...): warmd does
                    logger.info("uv could not fetch {} wheel(s) itself; warmd downloads them", len(refused))
                    by_uv -= refused
                    for sha in refused:
                        self.fetcher.unskip(sha)
                        import_errors.pop(sha, None)
                    shelf.expect(refused, again=True)
                    again = Importer(self._run_import, feeder, shelf)
                    again.start([p for p in pins if p.wheel.sha256 in refused])
                    fetched.update(self._fetch([need[sha] for sha in refused], shelf))
                    import_errors.update(again.finish())
            except KeyboardInterrupt:
                self.fetcher.cancel()  # Ctrl-C: downloads stop now (partials stay), not after they end
                raise
        return before, need, fetched, import_errors, by_uv

    def _for_uv(self, need: dict[str, Pin], resumable: set[str], speculative: dict[str, Pin]) -> set[str]:
        """The needed wheels uv should download itself: on a host one stream of which outruns uv's
        unpacking, warmd's own copy of the bytes would only cost CPU (ARCHITECTURE.md, "Who downloads")."""
        if self.config.keep_wheels or not self.uv.drops_bad_wheels:
            return set()  # the store wants the bytes; or an older uv would keep a bad wheel's bytes
        candidates = {sha: pin for sha, pin in need.items() if sha not in resumable and not self.store.has(sha)}
        hosts = {_host(p.wheel.url) for p in candidates.values()}
        measuring = {_host(p.wheel.url) for sha, p in candidates.items() if sha in speculative}
        links = {h: link for h in hosts if (link := self.fetcher.link(h)) is not None}
        if measuring - links.keys():
            links |= self.fetcher.wait_links(measuring - links.keys(), timeout=_MEASURE_WAIT)
        version = str(self.uv.version)
        out = set()
        for sha, pin in candidates.items():
            link = links.get(_host(pin.wheel.url))
            # uv must keep the file by itself: no per-index override is passed (the user's uv
            # settings stay in force), so only where the file's headers or its host allow it
            if link is not None and link.kind == "fast" and (
                    cache_verdict(link.cache_control) == "kept" or is_immutable_host(pin.wheel.url, version)):
                out.add(sha)
        if out:
            logger.info("{}: one stream outruns uv's unpacking; uv fetches {} wheel(s) itself",
                        ", ".join(sorted({_host(need[s].wheel.url) for s in out})), len(out))
        return out

    def _tidy(self, reports: list[ProjectReport], need: dict[str, Pin], by_uv: set[str]) -> None:
        """Without keep-wheels, drop what this run downloaded once uv has it (and partials uv made moot)."""
        warm = {w.pin.wheel.sha256 for r in reports for w in r.wheels if w.state == "warm"}
        cold = {w.pin.wheel.sha256 for r in reports for w in r.wheels if w.state != "warm"}
        for sha in (need.keys() & warm) - cold:
            if sha in by_uv:
                self.store.drop_partial(sha)  # a speculative start, never finished
            elif not self.config.keep_wheels:
                self.store.remove(sha)

    # -- steps ---------------------------------------------------------------------------------

    def _probe(self, pl: Plan) -> dict[str, ProbeResult]:
        names = {p.name for p in pl.lock.packages}
        out = {}
        for python in pl.pythons:
            selected = [p.name for p in pl.selection.pins if p.python == python]
            out[python] = self.uv.probe(pl.project, selected=selected, others=names, python=python,
                                        extras=pl.selection.extras)
        return out

    def _was_warm(self, project: Path, pin: Pin) -> bool:
        return self.state is not None and self.state.wheel_state(project, pin.wheel.sha256) == "warm"

    def _fetch(self, pins: list[Pin], shelf: Shelf) -> dict[str, Fetched | WarmdError]:
        if not pins:
            return {}
        logger.info("fetching {} wheel(s)", len(pins))

        def done(sha: str, result: Fetched | WarmdError) -> None:
            if isinstance(result, Fetched):
                shelf.offer(sha, result.path)
            else:
                shelf.withdraw(sha)

        return self.fetcher.fetch_many([p.wheel for p in pins], on_done=done, on_growing=shelf.offer,
                                       max_parallel_files=self.config.download.parallel_files)

    def _run_import(self, pins: Sequence[Pin], urls: dict[str, str], python: str, platform: str,
                    direct: bool) -> None:
        if not direct:
            self.uv.import_wheels(pins, urls, python=python, platform=platform, patient=True)
            return
        # uv downloads these itself: what it prints is their only progress
        by_name = {p.name: p for p in pins}
        for p in pins:
            self._emit(p, "start", "uv downloads it itself")

        def line(text: str) -> None:
            m = _UV_DOWNLOADED.match(text)
            if m and (p := by_name.pop(_normalize(m.group(1)), None)) is not None:
                self._emit(p, "done", "downloaded by uv")

        try:
            self.uv.import_wheels(pins, urls, python=python, platform=platform, on_line=line)
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

    def _report(self, pl: Plan, before: dict[str, ProbeResult], after: dict[str, ProbeResult],
                fetched: dict[str, Fetched | WarmdError], import_errors: dict[str, str],
                by_uv: set[str] = frozenset()) -> ProjectReport:  # type: ignore[assignment]
        wheels = []
        for pin in pl.selection.pins:
            res = after[pin.python]
            got = fetched.get(pin.wheel.sha256)
            if isinstance(got, FetchSkipped):
                got = None  # uv had it already: not a failure
            down = got.bytes_downloaded if isinstance(got, Fetched) else 0
            reused = got.bytes_reused if isinstance(got, Fetched) else 0
            if pin.wheel.sha256 in by_uv:
                down = pin.wheel.size or 0  # fetched all the same, by uv
            if pin.name in before[pin.python].warm:
                reused = pin.wheel.size or 0
            if pin.name in res.warm:
                wheels.append(WheelReport(pin, "warm", None, down, reused))
            elif isinstance(got, WarmdError):
                wheels.append(WheelReport(pin, "failed", str(got), down, reused))
            elif pin.wheel.sha256 in import_errors:
                wheels.append(WheelReport(pin, "failed", import_errors[pin.wheel.sha256], down, reused))
            elif pin.name in res.unproven:
                wheels.append(WheelReport(pin, "unproven", res.unproven[pin.name], down, reused))
            else:
                wheels.append(WheelReport(pin, "failed", "uv still would download it after the import", down, reused))
        for w in wheels:
            if w.state != "warm":
                logger.warning("{}: {} {}{}", pl.project, w.pin.wheel.filename, w.state, f" ({w.reason})" if w.reason else "")
        warm = sum(1 for w in wheels if w.state == "warm")
        logger.info("{}: {} of {} pinned wheel(s) warm", pl.project, warm, len(wheels))
        return ProjectReport(project=pl.project, lock=pl.lock.path, variant=self.variant, python=pl.pythons,
                             wheels=tuple(wheels))

    def _mark(self, pl: Plan, need: dict[str, Pin], state: str) -> None:
        if self.state is None:
            return
        for pin in pl.selection.pins:
            if pin.wheel.sha256 in need:
                self.state.set_wheel_state(pl.project, pin.wheel.sha256, state)

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


def _host(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _allowed(pythons: Sequence[str], lock: Lock) -> list[str]:
    """Keep the Python versions the lock's requires-python admits, in order, without repeats."""
    out: list[str] = []
    try:
        spec = SpecifierSet(lock.requires_python) if lock.requires_python else None
    except InvalidSpecifier:
        raise LockError(f"{lock.path}: requires-python {lock.requires_python!r} is not a valid specifier") from None
    for py in pythons:
        if py in out:
            continue
        if spec is None or spec.contains(f"{py}.0", prereleases=True) or spec.contains(f"{py}.99", prereleases=True):
            out.append(py)
    return out
