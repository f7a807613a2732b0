"""What a URL says of itself (status, size) before any download: the engine's HEAD and first-byte GET."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from ..base import FetchError, HeaderCheck, Refused, TransportError, Untrusted, WheelFile, redact
from .connection import Connection, HttpSettings, Response
from .retry import RetryPolicy, why as failure_text


@dataclasses.dataclass(frozen=True)
class Asked:
    """What one URL answered warmd's engine (Fetcher.ask)."""

    status: int | None  # the status that settled it (200 for a size from a first-byte GET); None: no answer
    size: int | None = None  # the file's size, where it gave one
    error: str | None = None  # why it did not answer with a success
    mendable: bool = True  # the fault is one waiting may mend (no answer, 408, 429, 5xx); not a refusal


class Asking:
    """The Fetcher's questions to a URL about itself: sizes for a plan, a redirect chain checked before
    uv is handed the URL (the attributes are the Fetcher's, Fetcher.__init__)."""

    settings: HttpSettings
    policy: RetryPolicy
    _stop: threading.Event
    _lock: threading.Lock
    _idle: list[Connection]
    _seen: dict[str, HeaderCheck]

    def sizes(self, wheels: list[WheelFile], *, keep: bool = True) -> dict[str, int | str | None]:
        """What each wheel's index says of its size: sha256 -> bytes; None when it answered without
        one; a string saying why when it did not answer (after the retries a download gets: 5xx, 429,
        a dropped connection; none for an untrusted certificate or an address the guard refuses).

        A HEAD first; where HEAD gives no size (no Content-Length; 405 or 501: HEAD not served; 403:
        storage that signs GETs only), a GET of the first byte (`Range: bytes=0-0`, the size in its
        Content-Range), as a download would begin. A size learned here and put into the WheelFile is
        enforced by the download: a server that then sends another size is refused (ranges.py).
        `keep`: keep the connections for the downloads that follow (fetch_many takes them or closes them).
        """
        return self._sizes(wheels, at_least=1, keep=keep, retry=True)

    def _sizes(self, wheels: list[WheelFile], at_least: int = 2, keep: bool = True,
               retry: bool = False) -> dict[str, int | str | None]:
        """HEAD each wheel (in parallel); for ordering only in fetch_many (a single file needs no order,
        and no GET is sent where HEAD is silent). `retry`: as sizes() (retries, the first-byte GET)."""
        if len(wheels) < at_least:
            return {}
        said = self.ask([w.url for w in wheels], keep=keep, retry=retry, first_byte=retry)
        out: dict[str, int | str | None] = {}
        for w in wheels:
            a = said[w.url]
            out[w.sha256.lower()] = a.size if a.status == 200 else a.error
        return out

    def ask(self, urls: Sequence[str], *, keep: bool = True, retry: bool = False,
            first_byte: bool = True) -> dict[str, Asked]:
        """The one way warmd's engine asks a URL about itself, each in parallel, 5 s at most a request:
        a HEAD; where it gives no size (`first_byte`: no Content-Length; 405 or 501: HEAD not served;
        403: storage that signs GETs only), a GET of the first byte (`Range: bytes=0-0`, the size in
        its Content-Range). Every redirect hop is the guard's (a success records the chain as passed,
        NetGuard.passed). `retry`: with a download's retries for a fault that waiting may mend.
        `keep`: keep the connections for the downloads that follow. A success's headers join the
        engine's `seen` (a download's own first answer, where there is one, stays): whether uv keeps
        the file is known before anyone downloads it (HandOver._checked_for_uv)."""
        settings = dataclasses.replace(self.settings, timeout=min(self.settings.timeout, 5.0))

        def record(url: str, resp: Response, method: str, size: int | None) -> None:
            seen = HeaderCheck(url=redact(url), status=resp.status, cache_control=resp.header("cache-control"),
                               etag=resp.header("etag"), last_modified=resp.header("last-modified"),
                               content_length=size, method=method, checked_at=time.time())
            with self._lock:
                self._seen.setdefault(seen.url, seen)

        def once(conn: Connection, url: str) -> tuple[int, int | None]:
            """(the status that settles it, the size it gave or None)."""
            resp = conn.request("HEAD", url, {})
            resp.readinto(memoryview(bytearray(1)))  # the empty body: the connection is free again
            resp.close()
            length = resp.header("content-length") or ""
            if resp.status == 200 and length.isdigit():
                record(url, resp, "HEAD", int(length))
                return 200, int(length)
            if resp.status == 200:
                record(url, resp, "HEAD", None)
            if not first_byte or resp.status not in (200, 403, 405, 501):
                return (200 if resp.status in (405, 501) else resp.status), None
            resp = conn.request("GET", url, {"Range": "bytes=0-0"})
            if resp.status == 206:
                resp.readinto(memoryview(bytearray(2)))  # the one byte
                resp.readinto(memoryview(bytearray(1)))  # and the end of the body
                resp.close()
                total = (resp.header("content-range") or "").rpartition("/")[2].strip()
                record(url, resp, "GET-range", int(total) if total.isdigit() else None)
                return 200, int(total) if total.isdigit() else None
            resp.close()  # a 200 brings the whole file: the connection is dropped unread
            length = resp.header("content-length") or ""
            if resp.status == 200:
                record(url, resp, "GET", int(length) if length.isdigit() else None)
            return (200, int(length) if length.isdigit() else None) if resp.status == 200 else (resp.status, None)

        # One connection per worker, kept alive from one URL to the next: a lock's files mostly share
        # a host, and a handshake per HEAD would cost each question two more round trips.
        mine = threading.local()
        made: list[Connection] = []
        made_lock = threading.Lock()

        def connection() -> Connection:
            conn = getattr(mine, "conn", None)
            if conn is None:
                conn = mine.conn = Connection(settings)
                with made_lock:
                    made.append(conn)
            return conn

        def drop() -> None:  # a connection that failed or was left mid-answer is not asked again
            conn, mine.conn = getattr(mine, "conn", None), None
            if conn is not None:
                with made_lock:
                    made.remove(conn)
                conn.close()

        def one(url: str) -> tuple[str, Asked]:
            failures = 0
            while True:
                conn = connection()
                try:
                    status, size = once(conn, url)
                except (Untrusted, Refused) as exc:  # no retry mends a certificate, or the guard's refusal
                    drop()
                    return url, Asked(None, None, failure_text(exc), mendable=False)
                except (TransportError, FetchError) as exc:
                    drop()
                    status, error = None, failure_text(exc)
                else:
                    if status == 200:
                        return url, Asked(200, size)
                    drop()
                    error = f"HTTP {status}"
                    if status not in (408, 429) and status < 500:
                        return url, Asked(status, None, f"{error} ({redact(url)})", mendable=False)
                failures += 1
                if not retry or failures > self.policy.retries:
                    # the words of a download that gives up (ranges.py): the same fault, told the same way
                    return url, Asked(status, None, f"giving up after {failures - 1} retries ({redact(url)}): {error}"
                                      if retry else error)
                if self._stop.wait(self.policy.delay(failures)):
                    return url, Asked(status, None, error)

        urls = list(dict.fromkeys(urls))
        if not urls:
            return {}
        try:
            with ThreadPoolExecutor(max_workers=min(8, len(urls)), thread_name_prefix="warmd-head") as pool:
                return dict(pool.map(one, urls))
        finally:
            for conn in made:
                if keep:  # the first downloads go to the same hosts: they start on these, TLS done
                    conn.retime(self.settings.timeout)
                    with self._lock:
                        self._idle.append(conn)
                else:
                    conn.close()
