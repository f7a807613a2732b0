"""Segmented, resumable, retrying wheel downloads into the Store, verified against the lock's sha256.

One file = a probe GET (`Range: bytes=0-<segment>`; its answer gives size, ETag and range support
and already carries the first segment) and then N workers, each with its own httpx.Client and so
its own TCP connection (HTTP/1.1: HTTP/2 streams share one connection and gain nothing), pulling
segments from a queue and writing them with os.pwrite into a preallocated `.part`. Bytes are
marked done in the sidecar only after fsync, so a SIGKILL leaves a resume point that never lies.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import os
import random
import re
import socket
import ssl
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
from loguru import logger

from . import __version__
from .credentials import index_auth
from .errors import DiskFull, FetchError, HashMismatch, WarmdError
from .model import Fetched, WheelFile
from .store import Sidecar, Store, disk_full_error, is_disk_full, merge_ranges, missing_ranges

MiB = 2**20
_PROBE_BYTES = 1 * MiB  # the first request: learns size and ETag, then the real split is planned
_SIDECAR_EVERY = 0.2  # seconds between sidecar rewrites (plus one at every stop)
_PROGRESS_EVERY = 0.1  # at most ~10 progress callbacks per file per second
_HASH_CHUNK = 1 * MiB
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class ProgressEvent:
    """A snapshot of one file's download, handed to the progress callback."""

    filename: str
    sha256: str
    total: int | None
    done: int  # bytes on disk, reused ones included
    downloaded_this_run: int
    state: str  # "start" | "progress" | "retry" | "done" | "failed"
    message: str = ""


class FetchSkipped(FetchError):
    """The caller said this file is not needed after all (uv's cache already has it)."""


class FetchCancelled(FetchError):
    """Fetcher.cancel() stopped this download; the partial and its sidecar are kept for resume."""


def redact(url: str) -> str:
    """The URL without user:password, safe for messages and logs."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")


def _scrub(text: str) -> str:
    # exception texts from httpx may quote the request URL: drop any userinfo in them
    return _USERINFO.sub(r"\g<scheme>", text)


def _why(exc: BaseException) -> str:
    """One scrubbed line: the error class for network errors (ReadTimeout, ...), then its text."""
    text = _scrub(str(exc))
    if isinstance(exc, httpx.TransportError):
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text or type(exc).__name__


def _untrusted(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate error under an httpx ConnectError, if that is what it is."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _retry_after(value: str | None, cap: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), capped."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), cap)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, min(when.timestamp() - time.time(), cap))


class _Retry(Exception):
    """A failure worth another attempt (network error, stall, 5xx, 429, short body)."""

    def __init__(self, message: str, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class _Changed(Exception):
    """The file changed upstream (or stopped honouring Range) under a download in progress."""


class _Conn:
    """One worker's HTTP/1.1 client and the socket under it, so cancel() can cut a blocked read."""

    def __init__(self, fetcher: Fetcher) -> None:
        self.client = fetcher._new_client()
        self.sock: socket.socket | None = None
        self.stop = fetcher._stop

    def trace(self, name: str, info: dict[str, Any]) -> None:
        if name.endswith("connect_tcp.complete"):
            stream = info.get("return_value")
            with contextlib.suppress(Exception):
                self.sock = stream.get_extra_info("socket")
            if self.stop.is_set():  # cancel() ran while this socket was connecting
                self.interrupt()

    def interrupt(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.client.close()


class _Job:
    """Shared state of one file being downloaded by several workers."""

    def __init__(self, wheel: WheelFile, sha: str, fd: int, sidecar: Sidecar) -> None:
        self.wheel = wheel
        self.sha = sha
        self.fd = fd
        self.sidecar = sidecar
        self.total = sidecar.size
        self.reused = sidecar.done_bytes()
        self.downloaded = 0
        self.lock = threading.Lock()
        self.abort = threading.Event()
        self.error: BaseException | None = None
        self.conns: list[_Conn] = []
        self.last_save = 0.0
        self.last_progress = 0.0
        # Bytes become "done" in the sidecar this often per worker (the sidecar itself is rewritten
        # at most every _SIDECAR_EVERY): a SIGKILL loses at most this much per connection.
        self.flush_every = 1 * MiB
        # The file is hashed as its contiguous prefix completes, while the rest downloads.
        self.hasher = hashlib.sha256()
        self.hashed = 0
        self.hash_lock = threading.Lock()

    def fail(self, exc: BaseException) -> None:
        with self.lock:
            if self.error is None:
                self.error = exc
            conns = list(self.conns)
        self.abort.set()
        for c in conns:
            c.interrupt()


class Fetcher:
    """Downloads WheelFiles into a Store with parallel Range requests, retries and resume."""

    def __init__(
        self,
        store: Store,
        *,
        connections: int = 8,
        segment_size: int = 16 * MiB,
        timeout: float = 30.0,
        retries: int = 8,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        progress: Callable[[ProgressEvent], None] | None = None,
        trust_env: bool = True,
        user_agent: str = f"warmd/{__version__}",
        max_parallel_files: int | None = None,
    ) -> None:
        if connections < 1 or segment_size < 1:
            raise ValueError("connections and segment_size must be positive")
        self.store = store
        self.connections = connections
        self.segment_size = segment_size
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.progress = progress
        self.trust_env = trust_env
        self._auth = index_auth() if trust_env else None  # the environment's netrc, with its proxies
        self.user_agent = user_agent
        self._stop = threading.Event()
        self._skipped: set[str] = set()
        self._jobs: dict[str, _Job] = {}
        self._conns: set[_Conn] = set()
        self._lock = threading.Lock()
        self._progress_lock = threading.Lock()  # callbacks never run concurrently
        # The global limit on files in flight, shared by every caller of this Fetcher (the
        # daemon runs several projects at once through one Fetcher).
        self._slots = threading.BoundedSemaphore(max_parallel_files) if max_parallel_files else None

    # -- public ---------------------------------------------------------------------------

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
        for c in conns:
            c.interrupt()

    def skip(self, sha256: str) -> None:
        """Do not start, or stop now, the download of this file; its partial stays for later."""
        sha = sha256.lower()
        with self._lock:
            self._skipped.add(sha)
            job = self._jobs.get(sha)
        if job is not None:
            job.fail(FetchSkipped(f"{job.wheel.filename}: not needed after all"))

    def _check_skipped(self, wheel: WheelFile, sha: str) -> None:
        with self._lock:
            if sha in self._skipped:
                raise FetchSkipped(f"{wheel.filename}: not needed after all")

    def fetch(self, wheel: WheelFile) -> Fetched:
        """Download and verify one wheel into the store (a store hit makes no request)."""
        sha = wheel.sha256.lower()
        self._check_url(wheel)
        hit = self._hit(wheel, sha)
        if hit is not None:
            return hit
        try:
            with self._slot(), self.store.lock(sha, stop=self._stop):
                self._check_skipped(wheel, sha)
                self._emit(wheel, sha, wheel.size, 0, 0, "start", force=True)
                hit = self._hit(wheel, sha)  # another thread/process may have finished it
                if hit is not None:
                    return hit
                for attempt in (1, 2):
                    try:
                        return self._fetch_locked(wheel, sha)
                    except _Changed as exc:
                        self.store.drop_partial(sha)
                        if attempt == 2:
                            raise FetchError(
                                f"{wheel.filename}: file changed on the server twice while downloading "
                                f"from {redact(wheel.url)} ({exc}); try again later"
                            ) from None
                        logger.info("{}: changed upstream mid-download ({}); starting over", wheel.filename, exc)
                        self._emit(wheel, sha, wheel.size, 0, 0, "retry", f"changed upstream: {exc}", force=True)
        except FetchSkipped:
            self._emit(wheel, sha, wheel.size, 0, 0, "done", "already in uv's cache", force=True)
            raise
        except WarmdError as exc:
            self._emit(wheel, sha, wheel.size, 0, 0, "failed", str(exc), force=True)
            raise
        raise AssertionError("unreachable")

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

    def fetch_many(self, wheels: Iterable[WheelFile], max_parallel_files: int = 2,
                   on_done: Callable[[str, Fetched | WarmdError], None] | None = None) -> dict[str, Fetched | WarmdError]:
        """Fetch several wheels, a few at a time; one failure does not stop the others.

        `on_done(sha256, result)` is called from a worker thread as each file finishes.
        """
        unique: dict[str, WheelFile] = {}
        for w in wheels:
            unique.setdefault(w.sha256.lower(), w)
        with self._lock:
            # skip() said "not needed" of a download under way then, not of every later one: a
            # daemon's Fetcher lives for months, and uv may lose a file it had (`uv cache clean`).
            self._skipped -= unique.keys()
        # Biggest first, so a small wheel never holds back torch; the PyTorch index's locks carry
        # no sizes, so ask the server (one HEAD each, in parallel) where the lock is silent.
        sizes = self._sizes([w for sha, w in unique.items() if w.size is None and not self.store.has(sha)])
        unique = dict(sorted(unique.items(), key=lambda kv: -(kv[1].size or sizes.get(kv[0], 0))))
        results: dict[str, Fetched | WarmdError] = {}

        def one(sha: str, w: WheelFile) -> None:
            try:
                results[sha] = self.fetch(w)
            except WarmdError as exc:
                results[sha] = exc
            except Exception as exc:  # a bug must not take the other files down with it
                logger.exception("{}: unexpected error while fetching", w.filename)
                results[sha] = FetchError(f"{w.filename}: unexpected error: {_scrub(str(exc))}")
            if on_done is not None:
                try:
                    on_done(sha, results[sha])
                except Exception:
                    logger.exception("{}: on_done callback failed", w.filename)

        with ThreadPoolExecutor(max_workers=max(1, max_parallel_files), thread_name_prefix="warmd-file") as pool:
            for sha, w in unique.items():
                pool.submit(one, sha, w)
        return results

    # -- one file -------------------------------------------------------------------------

    def _check_url(self, wheel: WheelFile) -> None:
        scheme = urllib.parse.urlsplit(wheel.url).scheme.lower()
        if scheme not in ("http", "https"):
            raise FetchError(f"{wheel.filename}: refusing to download from a {scheme or 'relative'} URL "
                             f"({redact(wheel.url)}); only http and https are fetched")

    def _hit(self, wheel: WheelFile, sha: str) -> Fetched | None:
        p = self.store.path(sha)
        if p is None:
            return None
        try:
            size = p.stat().st_size
        except FileNotFoundError:  # evicted in between
            return None
        self._emit(wheel, sha, size, size, 0, "done", "already in the store", force=True)
        return Fetched(sha256=sha, path=p, size=size, bytes_downloaded=0, bytes_reused=size)

    def _fetch_locked(self, wheel: WheelFile, sha: str) -> Fetched:
        """Probe, plan, download and verify one file; the caller holds the store lock for sha."""
        sc = self.store.read_sidecar(sha)
        if sc is not None and (wheel.size is not None and sc.size != wheel.size or sc.validator() is None):
            self.store.drop_partial(sha)
            sc = None
        if sc is not None and not missing_ranges(sc.done, sc.size):
            return self._finish_without_network(wheel, sha, sc)

        conn0 = self._open_conn()
        try:
            resp, sc, fresh = self._probe(conn0, wheel, sha, sc)
            part = self.store.part_path(sha)
            fd = self._open_part(part, sc.size, fresh, sha)
        except BaseException:
            self._close_conn(conn0)
            raise
        job = _Job(wheel, sha, fd, sc)
        job.conns.append(conn0)
        with self._lock:
            self._jobs[sha] = job
            skipped = sha in self._skipped  # skip() ran between the check above and now
        if skipped:
            job.fail(FetchSkipped(f"{wheel.filename}: not needed after all"))
        try:
            if fresh:
                self._save_sidecar(job, force=True)
            self._emit_job(job, "progress", force=True)
            self._run_workers(job, conn0, resp)
            self._save_sidecar(job, force=True)
            if job.error is not None:
                raise job.error
            if self._stop.is_set():
                raise FetchCancelled(f"{wheel.filename}: download cancelled; partial kept for resume")
            left = missing_ranges(job.sidecar.done, job.total)
            if left:
                raise FetchError(f"{wheel.filename}: download incomplete ({sum(e - s for s, e in left)} bytes missing)")
            with job.hash_lock:
                self._hash_prefix(job)
            if job.hashed != job.total:
                raise FetchError(f"{wheel.filename}: could not read back {job.total - job.hashed} bytes of the download")
        except BaseException:
            with contextlib.suppress(Exception):
                self._save_sidecar(job, force=True)
            raise
        finally:
            with self._lock:
                self._jobs.pop(sha, None)
            for c in job.conns:
                self._close_conn(c)
            os.close(fd)
        actual = job.hasher.hexdigest()
        if actual != sha and job.reused:
            # A partial from an earlier run that does not verify was cut short by a power loss or
            # an OS crash before its pages reached the disk: start over once instead of failing.
            raise _Changed("the resumed partial did not verify")
        path = self._verify_and_commit(wheel, sha, part, actual=actual)
        self._emit_job(job, "done", force=True)
        return Fetched(sha256=sha, path=path, size=job.total,
                       bytes_downloaded=job.downloaded, bytes_reused=job.reused)

    def _finish_without_network(self, wheel: WheelFile, sha: str, sc: Sidecar) -> Fetched:
        """Every byte was already on disk (a crash between last write and commit)."""
        path = self._verify_and_commit(wheel, sha, self.store.part_path(sha))
        self._emit(wheel, sha, sc.size, sc.size, 0, "done", "resumed: nothing left to download", force=True)
        return Fetched(sha256=sha, path=path, size=sc.size, bytes_downloaded=0, bytes_reused=sc.size)

    def _probe(self, conn: _Conn, wheel: WheelFile, sha: str,
               sc: Sidecar | None) -> tuple[httpx.Response, Sidecar, bool]:
        """First request: learn size/ETag/range support; returns the open response to stream."""
        while True:
            if sc is not None:
                start, end = missing_ranges(sc.done, sc.size)[0]
                end = min(end, start + self.segment_size)
                validator = sc.validator()
            else:
                start, end, validator = 0, min(self.segment_size, _PROBE_BYTES), None
            resp = self._request_with_retries(conn, wheel, sha, start, end, validator)
            etag = resp.headers.get("etag")
            last_mod = resp.headers.get("last-modified")
            if resp.status_code == 206:
                total = self._content_range(resp, wheel, start)[2]
                if sc is not None and (total != sc.size or (sc.etag and etag and etag != sc.etag)):
                    resp.close()
                    logger.info("{}: server has a different file than the partial; starting over", wheel.filename)
                    self.store.drop_partial(sha)
                    sc = None
                    continue
                self._check_size(wheel, total, resp)
                if sc is not None:
                    logger.debug("{}: resuming, {} of {} bytes on disk", wheel.filename, sc.done_bytes(), sc.size)
                    return resp, sc, False
                return resp, Sidecar(url=redact(wheel.url), size=total, etag=etag, last_modified=last_mod), True
            # 200: the server ignores Range, or If-Range said the file changed
            if sc is not None:
                resp.close()
                logger.info("{}: partial no longer matches the server's file; starting over", wheel.filename)
                self.store.drop_partial(sha)
                sc = None
                continue
            length = resp.headers.get("content-length")
            total = int(length) if length and length.isdigit() else wheel.size
            if total is None:
                resp.close()
                raise FetchError(f"{wheel.filename}: server sends no size and ignores Range; "
                                 "cannot download it safely")
            self._check_size(wheel, total, resp)
            logger.debug("{}: server ignores Range; one sequential stream", wheel.filename)
            return resp, Sidecar(url=redact(wheel.url), size=total, etag=etag, last_modified=last_mod), True

    def _check_size(self, wheel: WheelFile, total: int, resp: httpx.Response) -> None:
        if wheel.size is not None and total != wheel.size:
            resp.close()
            raise FetchError(f"{wheel.filename}: server says {total} bytes but the lock pins {wheel.size}; "
                             f"not downloading from {redact(wheel.url)}")

    def _content_range(self, resp: httpx.Response, wheel: WheelFile, start: int) -> tuple[int, int, int]:
        m = _CONTENT_RANGE.match(resp.headers.get("content-range", ""))
        if not m or m.group(3) == "*" or int(m.group(1)) != start:
            resp.close()
            raise _Retry(f"{wheel.filename}: bad Content-Range {resp.headers.get('content-range')!r}")
        return int(m.group(1)), int(m.group(2)) + 1, int(m.group(3))

    def _open_part(self, part: os.PathLike[str], size: int, fresh: bool, sha: str) -> int:
        """Open (fresh: create and preallocate) the .part so a full disk fails now, not at 90 %."""
        try:
            flags = os.O_RDWR | os.O_CREAT | (os.O_TRUNC if fresh else 0)
            fd = os.open(part, flags, 0o644)
        except OSError as exc:
            if is_disk_full(exc):
                raise disk_full_error(self.store.root, size, exc) from None
            raise FetchError(f"{part}: cannot open for writing: {exc.strerror}") from None
        try:
            if fresh:
                try:
                    if size:
                        os.posix_fallocate(fd, 0, size)
                except OSError as exc:
                    if is_disk_full(exc):
                        raise
                    os.ftruncate(fd, size)  # filesystem without fallocate: sparse is fine
            elif os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)
        except OSError as exc:
            os.close(fd)
            if fresh:
                self.store.drop_partial(sha)  # nothing in it worth keeping
            if is_disk_full(exc):
                raise disk_full_error(self.store.root, size, exc) from None
            raise FetchError(f"{part}: cannot allocate {size} bytes: {exc.strerror}") from None
        return fd

    # -- workers --------------------------------------------------------------------------

    def _run_workers(self, job: _Job, conn0: _Conn, resp0: httpx.Response) -> None:
        if resp0.status_code == 200:
            # no Range support: one sequential stream from byte 0, whatever the sidecar says
            self._worker(job, conn0, deque([(0, job.total)]), resp0, allow_full=True)
            return
        # The probe's response already streams its own range: that is the first segment.
        first_start, first_end, _ = self._content_range(resp0, job.wheel, missing_ranges(job.sidecar.done, job.total)[0][0])
        first = (first_start, first_end)
        missing = missing_ranges(merge_ranges(job.sidecar.done + [first]), job.total)
        # Several segments per connection, so that every connection stays busy to the end and a
        # small file still spreads over all of them; never more than segment_size, nor tiny.
        remaining = sum(e - s for s, e in missing)
        floor = min(1 * MiB, self.segment_size)
        step = max(floor, min(self.segment_size, -(-remaining // (2 * self.connections))))
        segments: deque[tuple[int, int]] = deque()
        for s, e in missing:
            for a in range(s, e, step):
                segments.append((a, min(e, a + step)))
        queue: deque[tuple[int, int]] = segments
        n_extra = min(self.connections - 1, len(queue))
        threads = []
        for i in range(n_extra):
            t = threading.Thread(target=self._worker_thread, args=(job, queue), name=f"warmd-seg-{job.sha[:8]}-{i}",
                                 daemon=True)
            t.start()
            threads.append(t)
        self._worker(job, conn0, queue, resp0, allow_full=False, first=first)
        for t in threads:
            t.join()

    def _worker_thread(self, job: _Job, queue: deque[tuple[int, int]]) -> None:
        try:
            conn = self._open_conn()
        except BaseException as exc:
            job.fail(exc)
            return
        with job.lock:
            job.conns.append(conn)
        if job.abort.is_set():
            conn.interrupt()
        self._worker(job, conn, queue, None, allow_full=False)

    def _worker(self, job: _Job, conn: _Conn, queue: deque[tuple[int, int]], resp: httpx.Response | None,
                allow_full: bool, first: tuple[int, int] | None = None) -> None:
        try:
            seg = first
            while not (job.abort.is_set() or self._stop.is_set()):
                if seg is None:
                    with job.lock:
                        if not queue:
                            return
                        seg = queue.popleft()
                self._range(job, conn, seg[0], seg[1], resp, allow_full)
                resp, seg = None, None
        except BaseException as exc:
            job.fail(exc)
        finally:
            if resp is not None:
                resp.close()

    def _range(self, job: _Job, conn: _Conn, start: int, end: int, resp: httpx.Response | None,
               allow_full: bool) -> None:
        """Download bytes [start, end) into the .part, resuming from the last byte written on retry."""
        w = job.wheel
        pos = mark = start
        best = start  # furthest byte reached: attempts reset only when a retry gets further
        failures = 0
        while pos < end:
            if job.abort.is_set() or self._stop.is_set():
                break
            try:
                if resp is None:
                    resp = self._request(conn, w, pos, end, job.sidecar.validator())
                if resp.status_code == 206:
                    got_start, _, total = self._content_range(resp, w, pos)
                    etag = resp.headers.get("etag")
                    if total != job.total or (job.sidecar.etag and etag and etag != job.sidecar.etag):
                        raise _Changed(f"ETag {job.sidecar.etag} became {etag}, size {job.total} became {total}")
                elif resp.status_code == 200:
                    etag = resp.headers.get("etag")
                    if not allow_full or (job.sidecar.etag and etag and etag != job.sidecar.etag):
                        raise _Changed(f"server answered 200 to a range request (ETag {etag})")
                    if pos != 0:
                        logger.debug("{}: server ignored Range on retry; rewriting from byte 0", w.filename)
                        self._flush_range(job, mark, pos)
                        pos = mark = 0
                else:
                    raise AssertionError(f"unexpected status {resp.status_code}")
                for chunk in resp.iter_raw():
                    if job.abort.is_set() or self._stop.is_set():
                        break
                    take = min(len(chunk), end - pos)
                    if take:
                        self._write(job, chunk, take, pos)
                    pos += take
                    with job.lock:
                        job.downloaded += take
                    if pos - mark >= job.flush_every:
                        self._flush_range(job, mark, pos)
                        mark = pos
                    self._emit_job(job, "progress")
                    if take < len(chunk):
                        # never write past the range; closing drops the connection, which is fine
                        logger.debug("{}: server sent more than asked; ignoring the excess", w.filename)
                        break
                if pos < end and not (job.abort.is_set() or self._stop.is_set()):
                    raise _Retry(f"body ended after {pos - start} of {end - start} bytes")
            except (httpx.TransportError, _Retry) as exc:
                if job.abort.is_set() or self._stop.is_set():
                    break
                if pos >= end:
                    break  # a close after the last byte we needed (lying Content-Length) is fine
                self._flush_range(job, mark, pos)
                mark = pos
                if pos > best:
                    best, failures = pos, 0
                failures += 1
                if failures > self.retries:
                    raise FetchError(f"{w.filename}: giving up after {self.retries} retries "
                                     f"at byte {pos} of {job.total}: {_why(exc)}") from None
                delay = self._delay(failures, getattr(exc, "delay", None))
                msg = f"{_why(exc)}; retry {failures}/{self.retries} in {delay:.2f}s"
                logger.debug("{}: bytes {}-{}: {}", w.filename, pos, end - 1, msg)
                self._emit_job(job, "retry", msg, force=True)
                if self._stop.wait(delay) or job.abort.is_set():
                    break
            finally:
                if resp is not None:
                    resp.close()
                    resp = None
        self._flush_range(job, mark, pos)

    def _write(self, job: _Job, chunk: bytes, take: int, pos: int) -> None:
        view = memoryview(chunk)[:take]
        try:
            while view:
                n = os.pwrite(job.fd, view, pos)
                view, pos = view[n:], pos + n
        except OSError as exc:
            if is_disk_full(exc):
                need = job.total - job.sidecar.done_bytes()
                raise disk_full_error(self.store.root, need, exc) from None
            raise FetchError(f"{self.store.part_path(job.sha)}: write failed: {exc.strerror}") from None

    def _flush_range(self, job: _Job, start: int, end: int) -> None:
        """Record [start, end) as done (its pwrite returned), and hash what is now contiguous.

        No fsync here: a killed process loses nothing the kernel already has, and what a power
        loss tears is caught by the final sha256 (the file then starts over once). The one fsync
        is the store's, when the verified file is committed.
        """
        if end <= start:
            return
        with job.lock:
            job.sidecar.done = merge_ranges(job.sidecar.done + [(start, end)])
        self._save_sidecar(job)
        if job.hash_lock.acquire(blocking=False):  # one worker hashes; the others go on downloading
            try:
                self._hash_prefix(job)
            finally:
                job.hash_lock.release()

    def _hash_prefix(self, job: _Job) -> None:
        """Feed the hasher the done bytes from where it stopped up to the first gap (caller holds hash_lock)."""
        with job.lock:
            done = job.sidecar.done
            upto = done[0][1] if done and done[0][0] == 0 else 0
        start = job.hashed
        while job.hashed < upto:
            data = os.pread(job.fd, min(_HASH_CHUNK, upto - job.hashed), job.hashed)
            if not data:
                break
            job.hasher.update(data)
            job.hashed += len(data)
        if job.hashed - start >= _HASH_CHUNK and hasattr(os, "posix_fadvise"):
            # Hashed pages are not needed again: start their writeback now (the commit's fsync then
            # has little left to wait for) and keep a 4 GiB wheel from crowding the page cache.
            with contextlib.suppress(OSError):
                os.posix_fadvise(job.fd, start, job.hashed - start, os.POSIX_FADV_DONTNEED)

    def _save_sidecar(self, job: _Job, force: bool = False) -> None:
        with job.lock:
            now = time.monotonic()
            if not force and now - job.last_save < _SIDECAR_EVERY:
                return
            job.last_save = now
            self.store.write_sidecar(job.sha, Sidecar(**{**job.sidecar.__dict__, "done": list(job.sidecar.done)}))

    # -- HTTP -----------------------------------------------------------------------------

    def _sizes(self, wheels: list[WheelFile]) -> dict[str, int]:
        """Content-Length of each wheel by HEAD, for ordering only (never trusted beyond that)."""
        if len(wheels) < 2:
            return {}

        def head(w: WheelFile) -> tuple[str, int]:
            try:
                with self._new_client() as client:
                    resp = client.head(w.url, timeout=min(self.timeout, 5.0))
                return w.sha256.lower(), int(resp.headers.get("content-length", 0)) if resp.is_success else 0
            except (httpx.HTTPError, ValueError):
                return w.sha256.lower(), 0

        with ThreadPoolExecutor(max_workers=min(8, len(wheels)), thread_name_prefix="warmd-head") as pool:
            return dict(pool.map(head, wheels))

    def _new_client(self) -> httpx.Client:
        return httpx.Client(
            http1=True,
            http2=False,
            follow_redirects=True,
            trust_env=self.trust_env,
            auth=self._auth,
            timeout=httpx.Timeout(self.timeout),
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            headers={"User-Agent": self.user_agent, "Accept-Encoding": "identity"},
        )

    def _open_conn(self) -> _Conn:
        conn = _Conn(self)
        with self._lock:
            self._conns.add(conn)
        if self._stop.is_set():
            conn.interrupt()
        return conn

    def _close_conn(self, conn: _Conn) -> None:
        with self._lock:
            self._conns.discard(conn)
        with contextlib.suppress(Exception):
            conn.close()

    def _request(self, conn: _Conn, wheel: WheelFile, start: int, end: int, validator: str | None) -> httpx.Response:
        """One GET for bytes [start, end); returns an open 200/206 response or raises."""
        if self._stop.is_set():
            raise FetchCancelled(f"{wheel.filename}: download cancelled; partial kept for resume")
        headers = {"Range": f"bytes={start}-{end - 1}"}
        if validator:
            headers["If-Range"] = validator
        req = conn.client.build_request("GET", wheel.url, headers=headers, extensions={"trace": conn.trace})
        try:
            resp = conn.client.send(req, stream=True)
        except httpx.ConnectError as exc:
            # A certificate no CA vouches for stays so on every retry: say so once, with the fix.
            bad = _untrusted(exc)
            if bad is None:
                raise
            raise FetchError(f"{wheel.filename}: the TLS certificate of {urllib.parse.urlsplit(redact(wheel.url)).netloc} "
                             f"is not trusted ({bad.verify_message}); if a proxy or your network uses its own CA, "
                             f"point SSL_CERT_FILE at a bundle holding it") from None
        status = resp.status_code
        if status in (200, 206):
            return resp
        resp.close()
        where = redact(str(resp.url))
        if status in (408, 429) or 500 <= status < 600:
            raise _Retry(f"HTTP {status} from {where}", _retry_after(resp.headers.get("retry-after"), self.max_backoff))
        if status == 416:
            raise _Changed(f"HTTP 416 for bytes {start}-{end - 1}: the file is shorter than before")
        raise FetchError(f"{wheel.filename}: HTTP {status} from {where}")

    def _request_with_retries(self, conn: _Conn, wheel: WheelFile, sha: str, start: int, end: int,
                              validator: str | None) -> httpx.Response:
        failures = 0
        while True:
            try:
                return self._request(conn, wheel, start, end, validator)
            except (httpx.TransportError, _Retry) as exc:
                if self._stop.is_set():
                    raise FetchCancelled(f"{wheel.filename}: download cancelled; partial kept for resume") from None
                failures += 1
                text = _why(exc)
                if failures > self.retries:
                    raise FetchError(f"{wheel.filename}: giving up after {self.retries} retries "
                                     f"({redact(wheel.url)}): {text}") from None
                delay = self._delay(failures, getattr(exc, "delay", None))
                logger.debug("{}: {}; retry {}/{} in {:.2f}s", wheel.filename, text, failures, self.retries, delay)
                self._emit(wheel, sha, wheel.size, 0, 0, "retry", text, force=True)
                if self._stop.wait(delay):
                    raise FetchCancelled(f"{wheel.filename}: download cancelled; partial kept for resume") from None

    def _delay(self, failures: int, hint: float | None) -> float:
        if hint is not None:
            return min(hint, self.max_backoff)
        ceiling = min(self.max_backoff, self.backoff * 2 ** (failures - 1))
        return random.uniform(ceiling / 2, ceiling)  # jitter: parallel workers do not retry in lockstep

    # -- verify ---------------------------------------------------------------------------

    def _verify_and_commit(self, wheel: WheelFile, sha: str, part: os.PathLike[str], actual: str | None = None) -> Any:
        if actual is None:
            h = hashlib.sha256()
            try:
                with open(part, "rb") as f:
                    while chunk := f.read(_HASH_CHUNK):
                        h.update(chunk)
            except OSError as exc:
                raise FetchError(f"{part}: cannot read back the download: {exc.strerror}") from None
            actual = h.hexdigest()
        if actual != sha:
            self.store.drop_partial(sha)
            raise HashMismatch(wheel.filename, sha, actual)
        try:
            return self.store.commit(sha, part)
        except DiskFull:
            raise
        except OSError as exc:
            raise FetchError(f"{part}: cannot move into the store: {exc.strerror}") from None

    # -- progress -------------------------------------------------------------------------

    def _emit_job(self, job: _Job, state: str, message: str = "", force: bool = False) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        with job.lock:
            if not force and now - job.last_progress < _PROGRESS_EVERY:
                return
            job.last_progress = now
            done = job.reused + job.downloaded
        self._emit(job.wheel, job.sha, job.total, min(done, job.total), job.downloaded, state, message, force=True)

    def _emit(self, wheel: WheelFile, sha: str, total: int | None, done: int, downloaded: int, state: str,
              message: str = "", force: bool = False) -> None:
        if self.progress is None:
            return
        event = ProgressEvent(wheel.filename, sha, total, done, downloaded, state, message)
        with self._progress_lock:
            try:
                self.progress(event)
            except Exception:
                logger.exception("progress callback failed")
