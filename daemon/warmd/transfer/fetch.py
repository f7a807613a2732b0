"""The download engine's public face: fetch wheels into the Store, verified against the lock's sha256.

A store hit makes no request. Otherwise one `FileDownload` per file (download.py) under the
store's per-sha lock, a few files at a time, biggest first; each file starts with one stream and
gets more connections only when its measured rate says the server caps each one (segments.py).
What a host taught one file (capped or not) is what its next files start with.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

from loguru import logger

from ..base import (
    Changed, FetchCancelled, Fetched, FetchError, FetchSkipped, HeaderCheck, Link, ProgressEvent, WarmdError, WheelFile,
    host_of, scrub,
)
from .asking import Asking
from .connection import Connection, HttpSettings
from .credentials import index_auth
from .download import FileDownload
from .growing import GrowingFile
from .guard import NetGuard
from .links import HostLinks
from .retry import RetryPolicy
from .segments import PIECE, HostMeter, Width
from .store import Store

__all__ = ["Fetcher"]

_PROGRESS_EVERY = 0.1  # at most ~10 progress callbacks per file per second
HOLDBACK = 64 * 1024  # bytes of a growing file the feeder keeps back until the sha256 matched


class Fetcher(HostLinks, Asking):
    """Downloads WheelFiles into a Store with adaptive connections, retries and resume."""

    def __init__(
        self,
        store: Store,
        *,
        connections: int = 8,
        piece_size: int = PIECE,
        timeout: float = 30.0,
        retries: int = 8,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        progress: Callable[[ProgressEvent], None] | None = None,
        trust_env: bool = True,
        max_parallel_files: int | None = None,
        fast_stream: float | None = None,
        keep: bool = True,
        guard: NetGuard | None = None,
    ) -> None:
        if connections < 1 or piece_size < 1:
            raise ValueError("connections and piece_size must be positive")
        self.store = store
        self.connections = connections
        self.piece_size = piece_size
        self.fast_stream = fast_stream  # bytes/s one stream must reach to be "fast" (None: per CPU count)
        # False: a verified file stays a complete partial (Fetched.path), for the caller to drop
        # once uv has it; True: it is committed into the store's blobs, durably.
        self.keep = keep
        self.policy = RetryPolicy(retries, backoff, max_backoff)
        # the environment's netrc, as uv reads it (credentials.py); the guard on every connection
        # (the pipeline's engines always have one)
        self.settings = HttpSettings(timeout=timeout, trust_env=trust_env,
                                     auth=index_auth() if trust_env else None, guard=guard)
        self.progress = progress
        self._stop = threading.Event()
        self._skipped: dict[str, str | None] = {}  # sha256 -> FetchSkipped.why
        self._downloads: dict[str, FileDownload] = {}
        # sha256 of the files downloading now: withdraw() hands none of them to another downloader
        self._begun: set[str] = set()
        self._seen: dict[str, HeaderCheck] = {}  # URL -> the first answer of its last download, until taken
        self._pending: Counter[str] = Counter()  # host -> its files in fetch_many() calls not ended yet
        self._conns: set[Connection] = set()
        self._idle: list[Connection] = []  # kept alive by size requests and ended downloads, for the next
        self._users = 0  # fetch() and fetch_many() calls under way: the last one closes `_idle`
        self._links: dict[str, Link] = {}  # host -> what its last measured download found
        self._meters: dict[str, HostMeter] = {}  # host -> the bytes its files bring, for measuring it
        self._last_emit: dict[str, float] = {}
        self._lock = threading.Lock()
        self._links_cv = threading.Condition(self._lock)
        self._progress_lock = threading.Lock()  # callbacks never run concurrently
        # The global limit on files in flight, shared by every caller of this Fetcher (the
        # daemon runs several projects at once through one Fetcher).
        self._slots = threading.BoundedSemaphore(max_parallel_files) if max_parallel_files else None
        self._parallel = max_parallel_files or 2  # files at once (fetch_many's default where no global limit)

    # -- control ----------------------------------------------------------------------------------

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop any download still running and release connections."""
        self.cancel()

    def cancel(self) -> None:
        """Make every running download stop within about a second, keeping partials for resume.

        Permanent for this Fetcher (later fetches raise FetchCancelled); make a new one to go on.
        """
        self._stop.set()
        with self._lock:
            conns = list(self._conns)
            idle, self._idle = self._idle, []
        for c in conns:
            c.interrupt()
        for c in idle:
            c.close()

    def skip(self, sha256: str, why: str | None = "already in uv's cache") -> None:
        """Do not start, or stop now, the download of this file; its partial stays for later.

        `why` is what the file's progress line says (None: none, another step reports it).
        """
        sha = sha256.lower()
        with self._lock:
            self._skipped[sha] = why
            dl = self._downloads.get(sha)
        if dl is not None:
            dl.fail(FetchSkipped(f"{dl.wheel.filename}: not needed after all", why))

    def unskip(self, sha256: str) -> None:
        """Undo skip(): the file is needed after all (uv could not fetch it itself)."""
        with self._lock:
            self._skipped.pop(sha256.lower(), None)

    def withdraw(self, shas: Iterable[str]) -> set[str]:
        """Of these files, those no download has begun, now skipped (silently) for good: another
        downloader may take them. A file downloading now, or with bytes in the store (a partial, whole
        or not, or a blob), stays this engine's: its bytes have crossed the network once already."""
        out = set()
        with self._lock:
            for sha in {s.lower() for s in shas}:
                if sha not in self._begun and not self.store.part_path(sha).exists() and not self.store.has(sha):
                    self._skipped[sha] = None
                    out.add(sha)
        return out

    # -- fetching ---------------------------------------------------------------------------------

    def fetch(self, wheel: WheelFile, on_growing: Callable[[GrowingFile], None] | None = None,
              holdback: int | None = HOLDBACK) -> Fetched:
        """Download and verify one wheel into the store (a store hit makes no request).

        `on_growing` receives the file while it downloads; it may be read up to all but
        `holdback` bytes before it verified (None: nothing before it verified).
        """
        with self._in_use():
            return self._fetch(wheel, on_growing, holdback)

    def _fetch(self, wheel: WheelFile, on_growing: Callable[[GrowingFile], None] | None,
               holdback: int | None) -> Fetched:
        sha = wheel.sha256.lower()
        scheme = urllib.parse.urlsplit(wheel.url).scheme.lower()
        if scheme not in ("http", "https"):
            raise FetchError(f"{wheel.filename}: refusing to download from a {scheme or 'relative'} URL "
                             f"({wheel.url}); only http and https are fetched")
        hit = self._hit(wheel, sha)
        if hit is not None:
            return hit
        try:
            with self._slot(), self.store.lock(sha, stop=self._stop):
                with self._lock:
                    if sha in self._skipped:
                        raise FetchSkipped(f"{wheel.filename}: not needed after all", self._skipped[sha])
                self._emit(wheel, sha, wheel.size, 0, 0, "start")
                hit = self._hit(wheel, sha)  # another thread/process may have finished it
                if hit is not None:
                    return hit
                for attempt in (1, 2):
                    try:
                        return self._download(wheel, sha, on_growing, holdback)
                    except Changed as exc:
                        self.store.drop_partial(sha)
                        if attempt == 2:
                            raise FetchError(
                                f"{wheel.filename}: file changed on the server twice while downloading "
                                f"from {wheel.url} ({scrub(str(exc))}); try again later"
                            ) from None
                        logger.info("{}: changed upstream mid-download ({}); starting over", wheel.filename, exc)
                        self._emit(wheel, sha, wheel.size, 0, 0, "retry", f"changed upstream: {exc}")
        except FetchSkipped as exc:
            if exc.why is not None:
                self._emit(wheel, sha, wheel.size, 0, 0, "done", exc.why)
            raise
        except WarmdError as exc:
            self._emit(wheel, sha, wheel.size, 0, 0, "failed", str(exc))
            raise
        raise AssertionError("unreachable")

    def fetch_many(self, wheels: Iterable[WheelFile], max_parallel_files: int = 2,
                   on_done: Callable[[str, Fetched | WarmdError], None] | None = None,
                   on_growing: Callable[[str, GrowingFile], None] | None = None,
                   holdback: int | None = HOLDBACK, first: Collection[str] = ()) -> dict[str, Fetched | WarmdError]:
        """Fetch several wheels, a few at a time, biggest first; one failure does not stop the others.

        `first`: the sha256s to start before any other (a plan's GPU wheels), biggest first too.

        `on_done(sha256, result)` and `on_growing(sha256, file)` are called from worker threads.
        """
        unique: dict[str, WheelFile] = {}
        for w in wheels:
            unique.setdefault(w.sha256.lower(), w)
        with self._lock:
            # skip() said "not needed" of a download under way then, not of every later one: a
            # daemon's Fetcher lives for months, and uv may lose a file it had (`uv cache clean`).
            for sha in unique:
                self._skipped.pop(sha, None)
            # before the size requests: a wait_links() from now on waits for these files
            self._pending.update(host_of(w.url) for w in unique.values())
        ended: set[str] = set()

        def end(sha: str) -> None:
            with self._links_cv:  # a host with nothing left to download will not be measured now
                if sha not in ended:
                    ended.add(sha)
                    self._pending[host_of(unique[sha].url)] -= 1
                    self._links_cv.notify_all()

        results: dict[str, Fetched | WarmdError] = {}

        def one(sha: str, w: WheelFile) -> None:
            grow = (lambda g: on_growing(sha, g)) if on_growing is not None else None
            try:
                results[sha] = self.fetch(w, grow, holdback)
            except WarmdError as exc:
                results[sha] = exc
            except Exception as exc:  # a bug must not take the other files down with it
                logger.exception("{}: unexpected error while fetching", w.filename)
                results[sha] = FetchError(f"{w.filename}: unexpected error: {scrub(str(exc))}")
            finally:
                end(sha)
            if on_done is not None:
                try:
                    on_done(sha, results[sha])
                except Exception:
                    logger.exception("{}: on_done callback failed", w.filename)

        try:
            self._enter()
            # The PyTorch index's locks carry no sizes: ask the server (HEAD, in parallel) where it is silent.
            sizes = self._sizes([w for sha, w in unique.items() if w.size is None and not self.store.has(sha)])
            known = {sha: n for sha, n in sizes.items() if isinstance(n, int)}
            unique = dict(sorted(unique.items(), key=lambda kv: (kv[0] not in first, -(kv[1].size or known.get(kv[0], 0)))))
            with ThreadPoolExecutor(max_workers=max(1, max_parallel_files), thread_name_prefix="warmd-file") as pool:
                for sha, w in unique.items():
                    pool.submit(one, sha, w)
        finally:
            for sha in list(unique):
                end(sha)  # files a failure kept from starting
            self._leave()
        return results

    @contextlib.contextmanager
    def _in_use(self) -> Iterator[None]:
        self._enter()
        try:
            yield
        finally:
            self._leave()

    def _enter(self) -> None:
        with self._lock:
            self._users += 1

    def _leave(self) -> None:
        # The last fetch to end closes the connections kept idle: a daemon's Fetcher lives for months.
        with self._lock:
            self._users -= 1
            idle, self._idle = (self._idle, []) if self._users == 0 else ([], self._idle)
        for c in idle:
            c.close()

    # -- internals --------------------------------------------------------------------------------

    def _download(self, wheel: WheelFile, sha: str, on_growing: Callable[[GrowingFile], None] | None,
                  holdback: int | None) -> Fetched:
        host = host_of(wheel.url)
        with self._links_cv:
            # Files of a host not measured yet each start with one stream; the first verdict
            # found is adopted by the others still measuring (Width.adopt), so none waits for it.
            known = self._link(host)
            if sha in self._skipped:  # skip() or withdraw() ran before the download began
                raise FetchSkipped(f"{wheel.filename}: not needed after all", self._skipped[sha])
            self._begun.add(sha)  # from here on withdraw() leaves it to this engine
            meter = self._meters.setdefault(host, HostMeter())
        dl: FileDownload | None = None
        dl = FileDownload(
            wheel, self.store, width=Width(self.connections, known.kind if known else None,
                                           lambda kind: self._learn(host, kind, dl), piece=self.piece_size,
                                           fast=self.fast_stream, meter=meter,
                                           ceiling=self.connections * self._parallel),
            policy=self.policy, stop=self._stop, connect=self._open_conn, release=self._close_conn,
            report=self._report, on_growing=on_growing or (lambda g: None),
            holdback=holdback if holdback is not None else 2**63, keep=self.keep)
        with self._lock:
            self._downloads[sha] = dl
        meter.join()
        try:
            return dl.run()
        except FetchError as exc:
            exc.bytes_downloaded = dl.downloaded  # they crossed the network all the same (the summary's)
            raise
        finally:
            with self._links_cv:  # files of this host queued in fetch_many() and not begun
                waiting = self._pending[host] - meter.streams
            meter.leave(dl.width, hand_on=waiting <= 0)
            with self._links_cv:
                self._downloads.pop(sha, None)
                self._begun.discard(sha)  # what it left in the store speaks for it now (withdraw)
                if dl.seen is not None:
                    self._seen[dl.seen.url] = dl.seen


    def seen(self, *, take: bool = False) -> dict[str, HeaderCheck]:
        """URL (credentials stripped) -> the headers the first answer of its download gave, for the
        downloads running and those ended since the last `take` (which forgets the ended ones)."""
        with self._lock:
            out = dict(self._seen)
            out |= {dl.seen.url: dl.seen for dl in self._downloads.values() if dl.seen is not None}
            if take:
                self._seen.clear()
        return out

    @contextlib.contextmanager
    def _slot(self) -> Iterator[None]:
        if self._slots is None:
            yield
            return
        while not self._slots.acquire(timeout=0.2):
            if self._stop.is_set():
                raise FetchCancelled("cancelled while waiting for a download slot")
        try:
            yield
        finally:
            self._slots.release()

    def _hit(self, wheel: WheelFile, sha: str) -> Fetched | None:
        p = self.store.path(sha)
        if p is None:
            return None
        try:
            size = p.stat().st_size
        except FileNotFoundError:  # evicted in between
            return None
        self._emit(wheel, sha, size, size, 0, "done", "already in the store")
        return Fetched(sha256=sha, path=p, size=size, bytes_downloaded=0, bytes_reused=size)


    def use_guard(self, guard: NetGuard) -> None:
        """Check every connection opened from now on with `guard` (an engine handed to a Pipeline)."""
        self.settings = dataclasses.replace(self.settings, guard=guard)

    def _open_conn(self) -> Connection:
        with self._lock:
            # one opened before use_guard() is not checked by the guard: it is not handed on
            while self._idle and self._idle[-1].settings.guard is not self.settings.guard:
                self._idle.pop().close()
            conn = self._idle.pop() if self._idle else Connection(self.settings)
            self._conns.add(conn)
        if self._stop.is_set():
            conn.interrupt()
        return conn

    def _close_conn(self, conn: Connection) -> None:
        # A connection whose last answer was read to its end serves the next file (most share a
        # host) without a new handshake; the last fetch under way closes what is left idle (_leave).
        keep = conn.reusable and not self._stop.is_set()
        with self._lock:
            self._conns.discard(conn)
            if keep:
                self._idle.append(conn)
        if not keep:
            conn.close()

    # -- progress ---------------------------------------------------------------------------------

    def _report(self, dl: FileDownload, state: str, message: str, force: bool) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        with self._lock:
            if not force and now - self._last_emit.get(dl.sha, 0.0) < _PROGRESS_EVERY:
                return
            self._last_emit[dl.sha] = now
        total = dl.total
        done = dl.reused + dl.downloaded
        self._emit(dl.wheel, dl.sha, total, min(done, total) if total is not None else done, dl.downloaded,
                   state, message)

    def _emit(self, wheel: WheelFile, sha: str, total: int | None, done: int, downloaded: int, state: str,
              message: str = "") -> None:
        if self.progress is None:
            return
        event = ProgressEvent(wheel.filename, sha, total, done, downloaded, state, message)
        with self._progress_lock:
            try:
                self.progress(event)
            except Exception:
                logger.exception("progress callback failed")
