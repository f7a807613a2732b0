"""uv downloads some wheels best itself, and follows their redirects unchecked: which ones it may, and how."""

from __future__ import annotations

import contextlib
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Collection, Sequence

from loguru import logger
from packaging.utils import canonicalize_name

from ..base import Config, HeaderCheck, Link, Pin, ProgressEvent, SkippedReport, WarmdError, host_of, redact
from ..plan import ProjectPlan
from ..transfer import MirroredFetcher, NetGuard, Store, mirror_for
from ..uv import Keep, Uv, norm_url, uv_keeps, uv_toml_files
from .proof import _probe_python

if TYPE_CHECKING:
    from ..state import State

# Below this rate per stream on a host that caps each connection, uv's one stream per file leaves
# most of the link idle and warmd's ranges pay for their second pass over the bytes; above it
# (PyPI's CDN gives ~100 MiB/s a stream here), uv's own parallel downloads keep up.
_SLOW_STREAM = 32 * 2**20
# How long a run waits for the measurement of a host (`_to_measure`) before deciding without it: a
# verdict takes about half a second of transfer (segments.py, MEASURE and the trial after it), plus
# the connection and the first byte.
MEASURE_WAIT = 3.0
# A file this big outlasts a verdict on any host warmd judges (segments.py: 16 MiB settle "fast"; a
# capped stream of a few MiB/s gives its verdict within its first ~10 MiB).
MEASURABLE = 64 * 2**20
_UV_DOWNLOADED = re.compile(r"^\s*Downloaded\s+(\S+)")  # uv's line as each wheel it fetched is in


class HandOver:
    """The pipeline's hand-over to uv: the wheels uv downloads itself, the pre-flight of their URLs, the imports."""

    config: Config
    uv: Uv
    store: Store
    fetcher: MirroredFetcher
    guard: NetGuard
    progress: Callable[[ProgressEvent], None] | None
    state: State | None
    measure_wait: float

    def _for_uv(self, need: dict[str, Pin], resumable: set[str]) -> set[str]:
        """The needed wheels uv should download itself (ARCHITECTURE.md, "Who downloads"), withdrawn
        from warmd's engine: a file whose download has begun there, this run or an earlier one, stays
        warmd's (its bytes cross the network once).

        Files uv keeps by itself qualify; so do an index's that uv would not keep (`no-store`) on a
        host one stream of which outruns uv's unpacking, or whose link all connections share, when
        the user has no uv.toml: uv then gets the per-index override in a config file of warmd's,
        which would replace theirs (`Uv.import_wheels(keep=...)`). Of those, warmd keeps a file
        where its ranges beat uv's one stream per file: on a host that caps each connection to a
        slow stream. A host is judged by what warmd's own downloads measured of it in this process
        (Fetcher.link): the run measures it first on one of its files where that decides
        (`_to_measure`); one not measured yet is judged by uv's keeping alone. `downloader` (config)
        "uv" takes every host as fast, "warmd" hands uv nothing.

        Before uv is handed them, `_checked_for_uv` asks where their URLs lead.
        """
        who = self.config.download.downloader
        candidates = self._uv_may_take(need, resumable)
        links: dict[str, Link] = {}
        if who == "auto":
            hosts = {host_of(p.wheel.url) for p in candidates.values()}
            links = {h: link for h in hosts if (link := self.fetcher.link(h)) is not None}
        keeps = self._import_keeps(need.values())
        out = set()
        for sha, pin in candidates.items():
            link = links.get(host_of(pin.wheel.url))
            kind = "fast" if who == "uv" else link.kind if link is not None else None
            if kind == "capped" and link is not None and link.stream_rate < _SLOW_STREAM:
                continue  # warmd's ranges win there
            if keeps[pin.wheel.sha256].verdict == "kept":
                out.add(sha)
            elif kind in ("fast", "shared") and self._no_user_uv_toml():  # not kept, or not known yet
                out.add(sha)
        return self.fetcher.withdraw(out) if out else out

    def _uv_may_take(self, need: dict[str, Pin], resumable: set[str]) -> dict[str, Pin]:
        """The needed wheels uv could be handed at all, whatever their host is like."""
        if self.config.download.downloader == "warmd" or self.config.keep_wheels or not self.uv.drops_bad_wheels:
            return {}  # the store wants the bytes; or an older uv would keep a bad wheel's bytes
        # A wheel a lab mirror serves goes through warmd's engine: uv would fetch it from the origin.
        # So does one the guard would not hand to uv (plain http that is no index of the user's own:
        # uv sends .netrc credentials wherever it connects).
        return {sha: pin for sha, pin in need.items()
                if pin.index is not None and sha not in resumable and not self.store.has(sha)
                and not self.store.part_path(sha).exists()
                and mirror_for(self.config.mirrors, pin.wheel.url) is None
                and self.guard.for_uv(pin.wheel.url, index=pin.index).ok}

    def _ask_unknown(self, need: dict[str, Pin], resumable: set[str]) -> set[str]:
        """Ask now each URL uv could be handed whose index nothing has said of yet, on a host not
        measured: its answer (Fetcher.ask records the headers) says whether uv keeps the file, which
        decides who downloads it (`_to_measure`, `_for_uv`). This is the pre-flight `_checked_for_uv`
        would send anyway, sent earlier; returns the URLs whose answer confirmed the lock's size
        (`sized`: it is not asked again).

        Without it a first run took PyPI's files for ones uv may not keep: it measured the host on the
        biggest file, and that file crossed warmd's engine, its sha256 and the feeder before uv
        unpacked it; before that measurement, every file did."""
        if self.config.download.downloader != "auto":
            return set()  # "uv": every host is fast, and an unknown file goes to uv; "warmd": none does
        may = self._uv_may_take(need, resumable)
        keeps = self._import_keeps(may.values())
        unknown = [p for sha, p in may.items()
                   if keeps[sha].verdict == "unknown" and self.fetcher.link(host_of(p.wheel.url)) is None]
        if not unknown:
            return set()
        said = self.fetcher.ask([p.wheel.url for p in unknown], keep=False)
        return {p.wheel.url for p in unknown
                if (a := said.get(p.wheel.url)) is not None and a.status == 200 and a.size is not None
                and a.size == p.wheel.size}

    def _to_measure(self, need: dict[str, Pin], resumable: set[str]) -> dict[str, Pin]:
        """One file per host whose measured speed would decide who downloads its other files: warmd
        starts it before `_for_uv` decides, and waits (`measure_wait` at most) for the verdict.

        Only a host not measured in this process, with two or more files uv could be handed, of which
        uv would not keep some by itself (`no-store`): for those, only the measurement can send them
        to uv (`_for_uv`). The file measured stays warmd's, and is needed, so its bytes cross the
        network once either way. It is the smallest that is big enough to settle a verdict
        (`MEASURABLE`), else the biggest: on a fast host the big files then go to uv, which unpacks
        them as they arrive instead of after warmd's pass over them (bench rows 4a/4b); on a capped one
        the biggest starts wide once the verdict is in, about as soon as its own measurement would
        have let it.
        """
        if self.config.download.downloader != "auto" or not self._no_user_uv_toml():
            return {}
        by_host: dict[str, list[Pin]] = defaultdict(list)
        for pin in self._uv_may_take(need, resumable).values():
            by_host[host_of(pin.wheel.url)].append(pin)
        by_host = {h: ps for h, ps in by_host.items() if len(ps) > 1 and self.fetcher.link(h) is None}
        if not by_host:
            return {}
        keeps = self._import_keeps([p for ps in by_host.values() for p in ps])
        out = {}
        for pins in by_host.values():
            if all(keeps[p.wheel.sha256].verdict == "kept" for p in pins):
                continue  # uv gets them unmeasured (`_for_uv`): nothing to decide
            big = [p for p in pins if (p.wheel.size or 0) >= MEASURABLE]
            first = min(big, key=lambda p: p.wheel.size or 0) if big else max(pins, key=lambda p: p.wheel.size or 0)
            out[first.wheel.sha256] = first
        return out

    def _checked_for_uv(self, out: set[str], need: dict[str, Pin], sized: Collection[str], since: float) -> set[str]:
        """Of the wheels `_for_uv` chose, those uv may be handed: uv follows redirects unchecked, so only
        a file whose URL warmd's own engine asked this run (since `since`), every redirect hop checked
        by the guard and a success at the end, goes to uv: the HEAD for the limits, else one HEAD now (which also confirms the size the limits weighed). The others
        warmd downloads itself."""
        if out:
            # uv holds a file to the lock's sha256, not to a size: a lock naming a big file as a small
            # one would pass the limit through uv. With a limit, only files whose size this run's own
            # requests confirmed go: a size learned for weighing (`sized`), else one request now,
            # whose answer must agree. That request also checks the redirects
            # (`_preflight`); none where this run asked already.
            limit = self.config.limits.per_project is not None
            held = {s for s in out if need[s].wheel.url in sized}
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

    def _needs_override(self, pins: Sequence[Pin]) -> list[str]:
        """The indexes of these pins whose files uv would not keep by itself (`_for_uv` let them
        through only when the user has no uv.toml for warmd's config file to replace)."""
        keeps = self._import_keeps(pins)
        return sorted({p.index for p in pins if p.index and keeps[p.wheel.sha256].verdict != "kept"})

    def _import_keeps(self, pins: Collection[Pin]) -> dict[str, Keep]:
        """sha256 -> does the import's uv keep that pin's file (uv_keeps), this run's downloads of
        the same index's files among `pins` counting as seen.

        Not the question `warmd status` and doctor ask: they ask about `uv sync` in the project,
        which reads the project's `[[tool.uv.index]]` and uv.toml. The import's uv runs with cwd `/`
        (Uv._run) and reads none of them, only the user's and the system's uv.toml (and warmd's own
        config file, `keep`): so the project is None here, and an override in the project's own
        files does not make the import keep anything."""
        seen = self.fetcher.seen()
        by_index: dict[str | None, list[HeaderCheck]] = defaultdict(list)
        for p in pins:
            if (h := seen.get(redact(p.wheel.url))) is not None:
                by_index[norm_url(p.index) if p.index else p.wheel.url].append(h)
        for p in pins:
            key = norm_url(p.index) if p.index else p.wheel.url
            link = self.fetcher.link(host_of(p.wheel.url))
            if not by_index[key] and link is not None:
                # None of this index's files has answered warmd this run: what the host's measured
                # download answered (Link) stands in, as one server tends to answer all its files alike.
                by_index[key].append(HeaderCheck(url=redact(p.wheel.url), status=200,
                                                 cache_control=link.cache_control, checked_at=link.at))
        version = str(self.uv.version)
        # Asked once per index and file host, not per pin: each answer reads the state and uv's config
        # files, and a torch set has dozens of pins on one index.
        verdicts: dict[tuple[str, str], Keep] = {}
        out: dict[str, Keep] = {}
        for p in pins:
            key = norm_url(p.index) if p.index else p.wheel.url
            ask = (key, host_of(p.wheel.url))
            if ask not in verdicts:
                verdicts[ask] = uv_keeps(None, p.index, p.wheel.url, uv_version=version, env=self.uv.env,
                                         state=self.state, seen=by_index.get(key, ()))
            out[p.wheel.sha256] = verdicts[ask]
        return out

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
