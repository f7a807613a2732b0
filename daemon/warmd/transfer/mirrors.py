"""A lab's mirrors, above the download engine: a wheel under a mirror's origin is fetched from the
mirror first, verified against the lock's sha256 as always, and from the origin when the mirror
misses, fails, times out or sends other bytes. Nothing here knows how a file is downloaded: it
rewrites a wheel's URL and calls the engine's public entry (`Fetcher.fetch_many`) twice at most.

The uv cache entry does not move: the import files a wheel under the index its lock names (the
key is index URL + filename, never the URL the bytes came from), so `uv sync` needs no mirror.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import httpx
from loguru import logger

from ..base import (
    FetchCancelled, Fetched, FetchSkipped, HashMismatch, HeaderCheck, Link, MirrorSettings, ProgressEvent, SafeUrl,
    WarmdError, WheelFile, path_of, reveal, scrub, under,
)
from .asking import Asked
from .clients import http_client
from .fetch import Fetcher
from .growing import GrowingFile
from .guard import NetGuard

# A mirror is on the lab's own network and the origin stands behind it: a file it cannot send
# after this many retries comes from the origin, instead of after the engine's eight.
MIRROR_RETRIES = 2


def _prefix(url: str) -> SafeUrl:
    return SafeUrl(reveal(url).rstrip("/") + "/")


def _root(origin: str) -> str:
    """The origin's path without its trailing slash ("" for the server's root)."""
    return (path_of(origin) or "").rstrip("/")


def serves(mirror: MirrorSettings, url: str) -> bool:
    """True when `url` lies under the mirror's origin as parsed: the same scheme, host and port, and
    its path below the origin's at a segment boundary (never a look-alike host or `/simple2/` for
    `/simple/`, nor a path that climbs)."""
    return under(url, mirror.origin)


def mirror_url(mirror: MirrorSettings, url: str) -> SafeUrl:
    """Where the mirror serves the file the origin serves at `url` (the same path below its prefix,
    the query kept); call it for a URL the mirror `serves`."""
    path, query = path_of(url) or "/", urllib.parse.urlsplit(reveal(url)).query
    rest = path[len(_root(mirror.origin)):].lstrip("/")
    return SafeUrl(_prefix(mirror.url).reveal() + rest + (f"?{query}" if query else ""))


def mirror_for(mirrors: Sequence[MirrorSettings], url: str) -> MirrorSettings | None:
    """The mirror for a wheel URL: the one with the longest origin it lies under, or None."""
    found = [m for m in mirrors if serves(m, url)]
    return max(found, key=lambda m: len(_root(m.origin))) if found else None


# doctor hashes a whole sample wheel only up to this size: enough for the small wheels every GPU
# stack pins (nvidia-nvtx, filelock), never the gigabytes of torch.
SAMPLE_CAP = 64 * 1024 * 1024
CACHE_STATUS = "X-Cache-Status"  # the header contrib/nginx adds: HIT, MISS, EXPIRED …


@dataclasses.dataclass(frozen=True)
class MirrorCheck:
    """What doctor learnt of one mirror from one sample wheel (fields are None when not known)."""

    url: str  # the mirror URL asked, redacted
    unreachable: str | None = None  # why no HTTP answer came, one line
    status: int | None = None  # the answer to a one-byte Range request
    ranges: bool | None = None  # it answered that request with 206 and a Content-Range
    cache_status: str | None = None  # the engine's cache status header on that first answer
    size: int | None = None
    matches: bool | None = None  # the sample's sha256 matches the lock; None: not downloaded
    actual: str | None = None  # the sha256 it sent, when it does not match


def check_mirror(client: httpx.Client, mirror: MirrorSettings, sample: WheelFile | None,
                 cap: int = SAMPLE_CAP) -> MirrorCheck:
    """Ask the mirror for a sample wheel: reachable, Range, cache status, and (up to `cap` bytes) its sha256."""
    url = mirror_url(mirror, sample.url) if sample is not None else _prefix(mirror.url)
    where, url = SafeUrl(url), reveal(url)
    try:
        with client.stream("GET", url, headers={"Range": "bytes=0-0"}) as resp:
            resp.read()
    except httpx.TransportError as exc:
        return MirrorCheck(where, unreachable=_why(exc))
    cache_status = resp.headers.get(CACHE_STATUS)
    if sample is None or resp.status_code not in (200, 206):
        return MirrorCheck(where, status=resp.status_code, cache_status=cache_status)
    total = resp.headers.get("content-range", "").rpartition("/")[2]
    ranges = resp.status_code == 206 and total.isdigit()
    size = int(total) if ranges else sample.size
    check = MirrorCheck(where, status=resp.status_code, ranges=ranges, cache_status=cache_status, size=size)
    if size is None or size > cap:
        return check
    h = hashlib.sha256()
    try:
        with client.stream("GET", url) as resp:
            resp.raise_for_status()
            for chunk in resp.iter_bytes():
                h.update(chunk)
    except httpx.HTTPError as exc:
        return dataclasses.replace(check, unreachable=f"the sample's download failed: {scrub(str(exc))}")
    actual = h.hexdigest()
    return dataclasses.replace(check, matches=actual == sample.sha256.lower(),
                               actual=None if actual == sample.sha256.lower() else actual)


def sample_for(mirror: MirrorSettings, wheels: Iterable[WheelFile]) -> WheelFile | None:
    """The wheel doctor asks the mirror for: the smallest of known size it serves, else any it serves."""
    served = [w for w in wheels if mirror_for([mirror], w.url) is not None]
    return min(served, key=lambda w: (w.size is None, w.size or 0, w.filename), default=None)


def reach(client: httpx.Client, url: str) -> str | None:
    """None when the server at `url` answers at all (any status), else why it does not, in one line."""
    try:
        client.head(reveal(url)).close()
    except httpx.TransportError as exc:
        return _why(exc)
    return None


def _why(exc: Exception) -> str:
    return f"{type(exc).__name__}: {scrub(str(exc))}" if str(exc) else type(exc).__name__


class _Health:
    """What one run learnt of each mirror: reachable, or down for the rest of the run."""

    def __init__(self, timeout: float, guard: NetGuard) -> None:
        self._timeout = timeout
        self._guard = guard
        self._down: dict[str, str] = {}  # mirror url -> why
        self._known: set[str] = set()
        self._lock = threading.Lock()  # one probe at a time: a mirror that hangs costs one timeout

    def usable(self, mirror: MirrorSettings, sample: str) -> bool:
        """Probe the mirror once per run (a HEAD of the first file asked of it); True while it answers."""
        with self._lock:
            if mirror.url not in self._known:
                self._known.add(mirror.url)
                self._probe(mirror, sample)
            return mirror.url not in self._down

    def recheck(self, mirror: MirrorSettings, sample: str) -> bool:
        """After a failed file: probe once more (unless known down); True while the mirror answers."""
        with self._lock:
            if mirror.url not in self._down:
                self._probe(mirror, sample)
            return mirror.url not in self._down

    def _probe(self, mirror: MirrorSettings, sample: str) -> None:
        with http_client(self._guard, timeout=self._timeout, follow_redirects=False) as client:
            why = reach(client, sample)
        if why is not None:
            self._down[mirror.url] = why
            logger.warning("mirror {} is down ({}); fetching from the origin for the rest of this run",
                           mirror.url, why)


class MirroredFetcher:
    """The engine's surface (fetch_many, skip, unskip, cancel, close, link, wait_links), trying each
    wheel's mirror first.

    `origin` is the engine for the lock's own URLs; `make_mirror_engine()` builds, on first need,
    the one for mirrors (on the same store; fewer retries, its failures shown as a step back to the
    origin: `mirror_progress`). Wrap each run in `run()`: what a run learnt of a mirror's health
    ends with it. Without mirrors every call goes to `origin` as it is.
    """

    def __init__(self, mirrors: Sequence[MirrorSettings], origin: Fetcher, make_mirror_engine: Callable[[], Fetcher],
                 *, timeout: float, guard: NetGuard) -> None:
        self.mirrors = tuple(mirrors)
        self.origin = origin
        self._via_mirror = make_mirror_engine() if self.mirrors else None
        self._timeout = timeout
        self._guard = guard  # the mirror probes' (a mirror is the user's own: it is vouched for)
        self._runs = 0
        self._health: _Health | None = None
        self._skipped: set[str] = set()  # skip() of a file whose mirror is being tried: not from the origin either
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def run(self) -> Iterator[None]:
        """One run: a mirror found down stays down until every run under way has ended."""
        with self._lock:
            self._runs += 1
            if self._health is None:
                self._health = _Health(self._timeout, self._guard)
        try:
            yield
        finally:
            with self._lock:
                self._runs -= 1
                if self._runs == 0:
                    self._health = None

    def fetch_many(self, wheels: Iterable[WheelFile], max_parallel_files: int = 2,
                   on_done: Callable[[str, Fetched | WarmdError], None] | None = None,
                   on_growing: Callable[[str, GrowingFile], None] | None = None,
                   **engine: Any) -> dict[str, Fetched | WarmdError]:
        """Fetch several wheels, each from its mirror first; what a mirror could not give comes from the origin.

        A mirror's bytes reach `on_done` only verified: they are never streamed to uv while they
        arrive (`on_growing` is for the origin's downloads), so a mirror's bad bytes reach no one.
        """
        wheels = list(wheels)
        with self._lock:
            health = self._health or _Health(self._timeout, self._guard)  # outside run(), this call is the run
            self._skipped.difference_update(w.sha256.lower() for w in wheels)
        routed = self._route(wheels, health)
        results: dict[str, Fetched | WarmdError] = {}
        faults: dict[str, str] = {}  # sha256 -> why its mirror was not used, for the report
        if routed and self._via_mirror is not None:
            via = self._via_mirror
            abandoned: set[str] = set()  # left for the origin: their mirror went down meanwhile
            finished: set[str] = set()
            lock = threading.Lock()

            def done(sha: str, result: Fetched | WarmdError) -> None:
                mirror, at = routed[sha]
                with lock:
                    finished.add(sha)
                    if sha in abandoned:
                        return
                if isinstance(result, Fetched):
                    if result.bytes_downloaded:  # a store hit came from no mirror
                        result = dataclasses.replace(result, via=mirror.url)
                    results[sha] = result
                if not _fell_back(result):
                    if on_done is not None:
                        on_done(sha, result)
                    return
                faults[sha] = self._blame(mirror, at, result)
                # Bad bytes came from a mirror that answers; anything else may mean it went down.
                if not isinstance(result, HashMismatch) and not health.recheck(mirror, at.url):
                    with lock:  # down: the files still waiting for it go to the origin at once
                        left = [s for s, (m, _w) in routed.items() if m == mirror and s not in finished]
                        abandoned.update(left)
                    for s in left:
                        via.skip(s)

            got = via.fetch_many([w for _m, w in routed.values()], max_parallel_files, done, **engine)
            for sha, r in got.items():
                if not (_fell_back(r) or sha in abandoned):
                    results.setdefault(sha, r)
        with self._lock:
            rest = [w for w in wheels if w.sha256.lower() not in results and w.sha256.lower() not in self._skipped]
        if rest:
            got = self.origin.fetch_many(rest, max_parallel_files, _noted(on_done, faults), on_growing, **engine)
            results.update({sha: _with_fault(r, faults.get(sha)) for sha, r in got.items()})
        for w in wheels:  # skipped while its mirror was being tried: not fetched from the origin either
            results.setdefault(w.sha256.lower(), FetchSkipped(f"{w.filename}: not needed after all"))
        return results

    def skip(self, sha256: str, why: str | None = "already in uv's cache") -> None:
        """Do not start, or stop now, the download of this file (from a mirror or the origin); `why` as Fetcher.skip."""
        with self._lock:
            self._skipped.add(sha256.lower())
        for f in self._engines():
            f.skip(sha256, why)

    def unskip(self, sha256: str) -> None:
        """Take back a skip(): the file may be downloaded again."""
        with self._lock:
            self._skipped.discard(sha256.lower())
        for f in self._engines():
            f.unskip(sha256)

    def withdraw(self, shas: Iterable[str]) -> set[str]:
        """Of these files, those neither engine has begun, now skipped for good (Fetcher.withdraw)."""
        shas = {s.lower() for s in shas}
        engines = self._engines()
        out = set.intersection(*(f.withdraw(shas) for f in engines)) if engines else shas
        for f in engines:  # begun by one engine: none of them skips it
            for sha in shas - out:
                f.unskip(sha)
        with self._lock:
            self._skipped.update(out)
        return out

    def sizes(self, wheels: list[WheelFile], *, keep: bool = True) -> dict[str, int | str | None]:
        """What each wheel's size is (Fetcher.sizes): asked of its mirror first, as its download would be
        (a mirror found down this run is not asked: one timeout per run), then of the origin for what
        the mirror could not say."""
        with self._lock:
            health = self._health or _Health(self._timeout, self._guard)
        routed = self._route(list(wheels), health)
        said: dict[str, int | str | None] = {}
        if routed and self._via_mirror is not None:
            said = {sha: n for sha, n in self._via_mirror.sizes([w for _m, w in routed.values()], keep=keep).items()
                    if not isinstance(n, str)}
        rest = [w for w in wheels if w.sha256.lower() not in said]
        return said | (self.origin.sizes(rest, keep=keep) if rest else {})

    def ask(self, urls: Sequence[str], *, keep: bool = True, retry: bool = False,
            first_byte: bool = True) -> dict[str, Asked]:
        """The origin engine's answer for these URLs (Fetcher.ask): where uv, handed them, connects."""
        return self.origin.ask(urls, keep=keep, retry=retry, first_byte=first_byte)

    def link(self, host: str) -> Link | None:
        """What the origin's engine found `host` to be like (mirrors are not asked of it)."""
        return self.origin.link(host)

    def wait_links(self, hosts: Iterable[str], timeout: float) -> dict[str, Link]:
        """The origin engine's wait for what it finds of these hosts."""
        return self.origin.wait_links(hosts, timeout)

    def seen(self, *, take: bool = False) -> dict[str, HeaderCheck]:
        """The origin engine's first answers (Fetcher.seen): a mirror's say nothing of what uv keeps."""
        return self.origin.seen(take=take)

    def cancel(self) -> None:
        """Stop every download promptly; partial files stay for the next run."""
        for f in self._engines():
            f.cancel()

    def close(self) -> None:
        """Stop downloads and release connections."""
        for f in self._engines():
            f.close()

    def _engines(self) -> list[Fetcher]:
        return [self.origin] + ([self._via_mirror] if self._via_mirror is not None else [])

    def _route(self, wheels: list[WheelFile], health: _Health) -> dict[str, tuple[MirrorSettings, WheelFile]]:
        """sha256 -> (mirror, the wheel at the mirror's URL) for each wheel a reachable mirror serves."""
        routed: dict[str, tuple[MirrorSettings, WheelFile]] = {}
        for w in wheels:
            m = mirror_for(self.mirrors, w.url)
            if m is None or self.origin.store.has(w.sha256):
                continue  # a file the store has costs no request, and no probe of its mirror
            at = dataclasses.replace(w, url=mirror_url(m, w.url))
            if health.usable(m, at.url):
                routed.setdefault(w.sha256.lower(), (m, at))
        return routed

    def _blame(self, mirror: MirrorSettings, wheel: WheelFile, exc: WarmdError) -> str:
        """Log why the origin is asked for this file; return that reason in one line."""
        where = mirror.url
        if isinstance(exc, HashMismatch):
            # The lock is right and the origin may well be: these bytes are the mirror's, and they
            # were dropped before the store or uv saw them.
            why = (f"mirror {where} sent bytes for {wheel.filename} that fail the lock's sha256 "
                   f"(lock pins {exc.expected}, mirror sent {exc.actual})")
            logger.error("{}: the mirror's fault; kept out of the store and uv's cache, fetching it from the "
                         "origin; purge that file from the mirror's cache", why)
            return why
        why = f"mirror {where} could not give {wheel.filename} ({scrub(str(exc))})"
        logger.warning("{}; fetching it from the origin", why)
        return why


def _fell_back(result: Fetched | WarmdError) -> bool:
    """True for a mirror's result that sends the wheel to the origin (not a success, a skip or a stop)."""
    return isinstance(result, WarmdError) and not isinstance(result, (FetchSkipped, FetchCancelled))


def _with_fault(result: Fetched | WarmdError, fault: str | None) -> Fetched | WarmdError:
    """The origin's result, carrying why the mirror was passed over (a report names it)."""
    return dataclasses.replace(result, mirror_error=fault) if fault and isinstance(result, Fetched) else result


def _noted(on_done: Callable[[str, Fetched | WarmdError], None] | None,
           faults: dict[str, str]) -> Callable[[str, Fetched | WarmdError], None] | None:
    if on_done is None:
        return None
    return lambda sha, result: on_done(sha, _with_fault(result, faults.get(sha)))


def mirror_progress(progress: Callable[[ProgressEvent], None] | None) -> Callable[[ProgressEvent], None] | None:
    """The progress callback for mirror downloads: a mirror's failure is a step back to the origin."""
    if progress is None:
        return None

    def forward(ev: ProgressEvent) -> None:
        if ev.state == "failed":
            ev = dataclasses.replace(ev, state="retry", message=f"mirror: {ev.message}; trying the origin")
        progress(ev)

    return forward
