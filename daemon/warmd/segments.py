"""Which bytes each connection of a file asks for next, and whether the file deserves more connections.

A file starts with one stream. Splitting it pays only where the server caps each connection
(a CDN's per-connection limit); on a shared link, or on a fast one where the CPU is the limit,
more connections cost CPU and gain nothing. So `Width` measures: the first connection's rate,
then, with a second one, the rate of both; only a clear gain opens the rest. Pieces are handed
out front first, so the file's written prefix (what the feeder streams to uv) grows steadily,
and every request is bounded: no connection is ever cut mid-response, so no byte is fetched twice.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

MiB = 2**20

MEASURE = 0.3  # seconds of transfer behind each rate measurement
FAST_AFTER = 0.15  # seconds of transfer enough to call one stream fast (no cap lets a burst last)
# Two connections must bring this many times one connection's rate to open more. A wrong "no"
# on a capped server costs a factor of `connections`; a wrong "yes" only some CPU: lean to yes.
GAIN = 1.3
WORTH = 1.0  # a trial is worth it only if one stream would still need this many seconds
# One stream faster than uv unpacks on this machine (measured: ~120 MiB/s of wheel per core)
# cannot be helped by more: the import, not the download, sets the pace.
FAST_PER_CORE = 120 * 2**20
_FIRST_PIECE = 4 * MiB  # doubled on every request while the first rate is measured...
_SMALLEST_FIRST = 256 * 1024  # ...but a quarter of a small file at most, so it can still be split
PIECE = 16 * MiB  # the largest piece when several connections share a file


class Pieces:
    """The bytes of a file no connection has been given yet, handed out front first."""

    def __init__(self, missing: list[tuple[int, int]]) -> None:
        self._ranges = [r for r in missing if r[1] > r[0]]
        self._lock = threading.Lock()

    def take(self, limit: int | None) -> tuple[int, int] | None:
        """The next piece, at most `limit` bytes (None: the rest of the first gap); None when all are given."""
        with self._lock:
            if not self._ranges:
                return None
            start, end = self._ranges[0]
            stop = end if limit is None else min(end, start + max(1, limit))
            if stop == end:
                self._ranges.pop(0)
            else:
                self._ranges[0] = (stop, end)
            return start, stop

    def remaining(self) -> int:
        """Bytes not yet given to any connection."""
        with self._lock:
            return sum(e - s for s, e in self._ranges)


class Width:
    """How many connections one file gets, decided from the rates it measures.

    States: "measure" (one connection, growing pieces), "trial" (a second connection joined),
    "single" (one stream takes the rest in one request), "wide" (up to `most` connections).
    What a host is like (`verdict`: "capped" per connection, "shared" link, or "fast": one
    stream outruns uv's unpacking) comes from an earlier file of the same host, or is found here
    and reported through `on_verdict`.
    """

    def __init__(self, most: int, verdict: str | None, on_verdict: Callable[[str], None] = lambda v: None,
                 *, piece: int = PIECE, fast: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.most = max(1, most)
        self._max_piece = max(1, piece)
        self._min_piece = min(MiB, self._max_piece)
        self._fast = fast if fast is not None else FAST_PER_CORE * (os.cpu_count() or 1)
        self._on_verdict = on_verdict
        self._clock = clock
        self._lock = threading.Lock()
        if verdict == "capped" and self.most > 1:
            self.state = "wide"
        elif verdict is not None or self.most == 1:
            self.state = "single"
        else:
            self.state = "measure"
        self._piece = 0  # the last piece handed out while measuring
        self._bytes = 0
        self._mark: tuple[float, int] | None = None  # (time, bytes) where the running measurement began
        self._rate1 = 0.0

    def wanted(self) -> int:
        """Connections this file should have now."""
        return {"measure": 1, "single": 1, "trial": 2, "wide": self.most}[self.state]

    def limit(self, remaining: int) -> int | None:
        """The size of the next piece a connection takes (None: all the rest of its gap)."""
        with self._lock:
            if self.state == "single":
                return None
            if self.state == "measure":
                # doubling from the first: the measurement costs a handful of requests at most
                self._piece = self._piece * 2 if self._piece else min(_FIRST_PIECE, max(_SMALLEST_FIRST, remaining // 4))
                return self._piece
            if self.state == "trial":
                # about one measurement's worth each, so the trial ends before the pieces do
                return max(self._min_piece, int(self._rate1 * MEASURE))
            # several pieces per connection, so every connection stays busy to the end
            return max(self._min_piece, min(self._max_piece, -(-remaining // (2 * self.most))))

    def received(self, n: int, remaining: int, joining: bool, now: float | None = None) -> int:
        """`n` more bytes arrived (`joining`: on the connection a trial added); returns connections to add.

        A measurement starts at the first read that completes on the connection it is about, so
        the time to the first byte and a server's initial burst stay out of it.
        """
        now = self._clock() if now is None else now
        verdict = None
        add = 0
        with self._lock:
            self._bytes += n
            if self.state not in ("measure", "trial"):
                return 0
            if self._mark is None:
                if self.state == "measure" or joining:
                    self._mark = (now, self._bytes)
                return 0
            t0, b0 = self._mark
            elapsed = now - t0
            rate = (self._bytes - b0) / elapsed if elapsed > 0 else 0.0
            if self.state == "measure" and elapsed >= FAST_AFTER and rate >= self._fast:
                self.state, verdict = "single", "fast"
            elif elapsed < MEASURE:
                return 0
            elif self.state == "measure":
                if remaining < rate * WORTH:
                    self.state = "single"  # one stream ends soon anyway: no verdict learnt
                else:
                    self.state, self._rate1, self._mark = "trial", rate, None
                    add = 1
            else:
                capped = rate >= GAIN * self._rate1
                self.state, verdict = ("wide", "capped") if capped else ("single", "shared")
                add = self.most - 2 if capped else 0
        if verdict is not None:
            self._on_verdict(verdict)
        return add
