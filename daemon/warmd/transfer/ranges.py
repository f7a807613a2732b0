"""Range requests for one file: ask for bytes, and read what each answer says about the file.

The first answer tells the size, the validator (ETag, else Last-Modified) and whether the server
honours Range at all; every later one must agree with it (a 206 for the asked start, the same
size and ETag), or the file changed upstream and a partial must not be stitched from two versions.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from loguru import logger

from ..base import Changed, FetchCancelled, FetchError, Refused, Retry, TransportError, Untrusted, WheelFile
from .connection import Connection, Response
from .partial import Sidecar, missing_ranges
from .retry import RetryPolicy, retry_after, why

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class First:
    """The first answer for a file: the open response, the piece it carries, the sidecar to keep."""

    response: Response
    piece: tuple[int, int]
    sidecar: Sidecar
    fresh: bool  # a new partial (else the sidecar resumes one)
    whole: bool  # the server ignores Range: this answer is the whole file


class RangeRequests:
    """Range GETs of one wheel's URL; `on_retry(message)` is told of each failed attempt."""

    def __init__(self, wheel: WheelFile, policy: RetryPolicy, stops: tuple[threading.Event, ...],
                 on_retry: Callable[[str], None]) -> None:
        self.wheel = wheel
        self.policy = policy
        self._stops = stops  # any set: the download is over (cancelled, skipped or failed)
        self._on_retry = on_retry

    def _stopped(self) -> bool:
        return any(e.is_set() for e in self._stops)

    def pause(self, seconds: float) -> bool:
        """Sleep, but return True at once when the download is stopped."""
        deadline = time.monotonic() + seconds
        while not self._stopped():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._stops[0].wait(min(left, 0.05))
        return True

    def cancelled(self) -> FetchCancelled:
        """The error a cancelled download ends with."""
        return FetchCancelled(f"{self.wheel.filename}: download cancelled; partial kept for resume")

    def first(self, conn: Connection, sc: Sidecar | None, limit: Callable[[int], int | None],
              drop_partial: Callable[[], None]) -> First:
        """Ask for the first missing piece (of at most `limit(gap)` bytes); a partial that no longer
        matches the server's file is dropped and the file starts over."""
        name = self.wheel.filename
        while True:
            if sc is not None:
                start, end = missing_ranges(sc.done, sc.size)[0]
                most = limit(end - start)
                stop: int | None = end if most is None else min(end, start + most)
            else:
                most = limit(self.wheel.size or 0)
                start, stop = 0, most if most is not None else self.wheel.size
                if stop is not None and self.wheel.size is not None:
                    stop = min(stop, self.wheel.size)
            resp = self.get_retrying(conn, start, stop, sc.validator() if sc else None)
            etag, last_mod = resp.header("etag"), resp.header("last-modified")
            if resp.status == 206:
                got_start, got_end, total = self.span(resp, start)
                if sc is not None and (total != sc.size or (sc.etag and etag and etag != sc.etag)):
                    resp.close()
                    logger.info("{}: server has a different file than the partial; starting over", name)
                    drop_partial()
                    sc = None
                    continue
                self._check_size(total, resp)
                if sc is not None:
                    logger.debug("{}: resuming, {} of {} bytes on disk", name, sc.done_bytes(), sc.size)
                    return First(resp, (got_start, got_end), sc, False, False)
                return First(resp, (got_start, got_end), Sidecar(self.wheel.url, total, etag, last_mod),
                             True, False)
            # 200: the server ignores Range, or If-Range said the file changed
            if sc is not None:
                resp.close()
                logger.info("{}: partial no longer matches the server's file; starting over", name)
                drop_partial()
                sc = None
                continue
            length = resp.header("content-length")
            total = int(length) if length and length.isdigit() else self.wheel.size
            if total is None:
                resp.close()
                raise FetchError(f"{name}: server sends no size and ignores Range; cannot download it safely")
            self._check_size(total, resp)
            logger.debug("{}: server ignores Range; one sequential stream", name)
            return First(resp, (0, total), Sidecar(self.wheel.url, total, etag, last_mod), True, True)

    def _check_size(self, total: int, resp: Response) -> None:
        if self.wheel.size is not None and total != self.wheel.size:
            resp.close()
            raise FetchError(f"{self.wheel.filename}: server says {total} bytes, not the {self.wheel.size} its lock "
                             f"(or its index, asked earlier) gave; not downloading from {self.wheel.url}")

    def span(self, resp: Response, start: int) -> tuple[int, int, int]:
        """(start, end, file size) from a 206's Content-Range, which must begin at `start`."""
        m = _CONTENT_RANGE.match(resp.header("content-range") or "")
        if not m or m.group(3) == "*" or int(m.group(1)) != start:
            resp.close()
            raise Retry(f"{self.wheel.filename}: bad Content-Range {resp.header('content-range')!r}")
        return int(m.group(1)), int(m.group(2)) + 1, int(m.group(3))

    def get(self, conn: Connection, start: int, end: int | None, validator: str | None) -> Response:
        """One GET for bytes [start, end) (end None: to the end of the file); an open 200/206 or raises."""
        if self._stopped():
            raise self.cancelled()
        headers = {"Range": f"bytes={start}-{'' if end is None else end - 1}"}
        if validator:
            headers["If-Range"] = validator
        try:
            resp = conn.get(self.wheel.url, headers)
        except (Untrusted, Refused) as exc:
            raise FetchError(f"{self.wheel.filename}: {exc}") from None
        if resp.status in (200, 206):
            return resp
        resp.close()
        where = resp.url
        if resp.status in (408, 429) or 500 <= resp.status < 600:
            raise Retry(f"HTTP {resp.status} from {where}", retry_after(resp.header("retry-after"), self.policy.max_backoff))
        if resp.status == 416:
            raise Changed(f"HTTP 416 for bytes {start}-: the file is shorter than before")
        raise FetchError(f"{self.wheel.filename}: HTTP {resp.status} from {where}")

    def get_retrying(self, conn: Connection, start: int, end: int | None, validator: str | None) -> Response:
        """get(), retried on network errors, 5xx and 429 as the policy says."""
        failures = 0
        while True:
            try:
                return self.get(conn, start, end, validator)
            except (TransportError, Retry) as exc:
                if self._stopped():
                    raise self.cancelled() from None
                failures += 1
                text = why(exc)
                if failures > self.policy.retries:
                    raise FetchError(f"{self.wheel.filename}: giving up after {self.policy.retries} retries "
                                     f"({self.wheel.url}): {text}") from None
                delay = self.policy.delay(failures, getattr(exc, "delay", None))
                logger.debug("{}: {}; retry {}/{} in {:.2f}s", self.wheel.filename, text, failures,
                             self.policy.retries, delay)
                self._on_retry(text)
                if self.pause(delay):
                    raise self.cancelled() from None
