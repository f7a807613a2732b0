"""Which bytes each connection of a file asks for next, and whether the file deserves more connections.

A file starts with one stream. Splitting it pays only where the server caps each connection
(a CDN's per-connection limit); on a shared link, or on a fast one where the CPU is the limit,
more connections cost CPU and gain nothing. So `Width` measures what the host delivers: the rate
of every stream it serves now (one per file, each one request for the whole file: no gaps
between requests in the measurement), then, with as many streams again, the rate of them all;
only a clear gain opens the rest, and only then is the first stream cut short to share the file
out. It is the host's total that is compared, never one file's share: on a shared link a file
given more streams takes a bigger share from the others without the link getting any faster.
Pieces are handed out front first, so the file's written prefix (what the feeder streams to
uv) grows steadily.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

MiB = 2**20

MEASURE = 0.25  # seconds of transfer behind each decision
WINDOW = 0.1  # seconds over which a rate is taken
EARLY = 0.15  # a trial that shows its gain this soon decides at once (a link shared by all cannot)
# Twice the streams must bring the host this many times its total to open more (a cap per
# connection brings ~2x, a shared link 1x). A wrong "no" on a capped server costs a factor of
# `connections`; a wrong "yes" only some CPU: lean to yes.
GAIN = 1.3
WORTH = 1.0  # a trial is worth it only if one stream would still need this many seconds
# One stream faster than uv unpacks on this machine (measured: ~120 MiB/s of wheel per core)
# cannot be helped by more: the import, not the download, sets the pace.
FAST_PER_CORE = 120 * 2**20
# More bytes than any socket buffer holds (Linux's largest default receive buffer is 6 MiB): a host
# that brought this many at the fast rate since the first byte is fast, no burst of buffered bytes
# can fake it. It decides before a whole WINDOW has passed (~0.04 s instead of 0.1 s on PyPI's
# CDN), and so hands the files to uv sooner and throws away fewer speculative bytes.
SURE = 16 * MiB
PIECE = 16 * MiB  # the largest piece when several connections share a file


@dataclass(eq=False)
class Piece:
    """Bytes [start, end) one connection fetches; `end` may be lowered while it works (Pieces.shorten)."""

    start: int
    end: int
    pos: int = -1  # how far the connection got (set by it)

    def __post_init__(self) -> None:
        if self.pos < 0:
            self.pos = self.start


class Pieces:
    """The bytes of a file no connection has been given yet, handed out front first."""

    def __init__(self, missing: list[tuple[int, int]]) -> None:
        self._ranges = [r for r in missing if r[1] > r[0]]
        self._active: list[Piece] = []
        self._lock = threading.Lock()

    def take(self, limit: int | None) -> Piece | None:
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
            piece = Piece(start, stop)
            self._active.append(piece)
            return piece

    def hold(self, piece: Piece) -> None:
        """`piece` (not taken from here: the first request's) is being fetched."""
        with self._lock:
            self._active.append(piece)

    def release(self, piece: Piece) -> None:
        """The connection stopped working on `piece`."""
        with self._lock:
            if piece in self._active:
                self._active.remove(piece)

    def shorten(self, keep: int) -> None:
        """Let the piece with most still to come stop `keep` bytes further, and hand out the rest again.

        How the first, open-ended request makes room for more connections: its connection stops
        reading there and drops the answer (a server that caps each connection has sent little
        beyond it: what a cap lets through in a round trip).
        """
        with self._lock:
            if not self._active:
                return
            piece = max(self._active, key=lambda p: p.end - p.pos)
            cut = piece.pos + max(keep, MiB)
            if cut >= piece.end:
                return
            self._ranges.insert(0, (cut, piece.end))
            piece.end = cut

    def remaining(self) -> int:
        """Bytes not yet given to any connection."""
        with self._lock:
            return sum(e - s for s, e in self._ranges)


class HostMeter:
    """The bytes every file of one host received, how many of them are downloading, which one of
    them measures the host (one at a time: two trials at once would each see the other's streams),
    and which use every connection they may (a host that caps each connection)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.total = 0
        self.streams = 0  # files of the host downloading now
        self._measurer: object | None = None
        self._wide: list[Width] = []

    def add(self, n: int) -> int:
        """`n` more bytes arrived from the host; returns the total so far."""
        with self._lock:
            self.total += n
            return self.total

    def join(self) -> None:
        """A file of the host began downloading."""
        with self._lock:
            self.streams += 1

    def widened(self, width: Width) -> None:
        """`width` now uses every connection it may."""
        with self._lock:
            if width not in self._wide:
                self._wide.append(width)

    def leave(self, width: object, hand_on: bool = True) -> None:
        """A file of the host stopped downloading (it may have been the one measuring).

        `hand_on` (no other file of the host waits to start in its place): the connections a wide
        file used go to the host's files still downloading wide. On a host that caps each
        connection the last file (often the biggest) would otherwise end alone on its own few; a
        file waiting to start takes the place itself, so connections never pile up on one file.
        """
        with self._lock:
            self.streams = max(0, self.streams - 1)
            if self._measurer is width:
                self._measurer = None
            if width not in self._wide:
                return
            self._wide.remove(width)
            heirs = list(self._wide) if hand_on else []
        freed = width.most  # type: ignore[attr-defined]
        # the file with most still to come first: a small one nearly done could not use them
        for heir in sorted(heirs, key=lambda w: w.left, reverse=True):
            freed -= heir.grant(freed)
            if freed <= 0:
                break

    def claim(self, width: object) -> bool:
        """True when `width` measures the host: it already does, or nobody does."""
        with self._lock:
            if self._measurer is None:
                self._measurer = width
            return self._measurer is width

    def release(self, width: object) -> None:
        """`width` is done measuring."""
        with self._lock:
            if self._measurer is width:
                self._measurer = None


class Width:
    """How many connections one file gets, decided from the rates it measures.

    States: "measure" (one connection, growing pieces), "trial" (a second connection joined),
    "single" (one stream takes the rest in one request), "wide" (up to `most` connections).
    What a host is like (`verdict`: "capped" per connection, "shared" link, or "fast": one
    stream outruns uv's unpacking) comes from an earlier file of the same host, or is found here
    and reported through `on_verdict`. Files of one host share a `HostMeter`: one of them
    measures the host's total while the others keep one stream each and adopt its verdict.
    """

    def __init__(self, most: int, verdict: str | None, on_verdict: Callable[[str], None] = lambda v: None,
                 *, piece: int = PIECE, fast: float | None = None, meter: HostMeter | None = None,
                 clock: Callable[[], float] = time.monotonic, ceiling: int | None = None) -> None:
        self.most = max(1, most)
        # what grants may raise `most` to: what the host had from all its files at once
        self._ceiling = max(self.most, ceiling if ceiling is not None else 2 * self.most)
        self.meter = meter if meter is not None else HostMeter()
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
        self._mark: tuple[float, int] | None = None  # (time, bytes) where the running measurement began
        self._samples: deque[tuple[float, int]] = deque()  # (time, bytes) of the last WINDOW seconds
        self._best = 0.0  # the best WINDOW rate of the running measurement
        self._rate1 = 0.0  # the host's best with one stream per file
        self._streams1 = 1  # how many streams that was
        self._extra = 1  # connections the trial adds (as many as the host had)
        self._adopted: str | None = None  # a verdict another file of the host found, not acted on yet
        self._cut_first = False  # the first stream's open-ended request must make room (adopted "capped")
        self._granted = 0  # connections a finished file of the host left to this one, not opened yet
        self.left = 2**63  # bytes still to come, as last received (unknown: all)
        if self.state == "wide":
            self.meter.widened(self)

    def adopt(self, verdict: str) -> None:
        """Another file of the same host found what it is like: a file still measuring follows it."""
        with self._lock:
            if self.state == "measure":
                self._adopted = verdict

    @property
    def stream_rate(self) -> float:
        """One stream's best rate, bytes/s, as measured so far (0 before a measurement)."""
        with self._lock:
            return self._rate1 / self._streams1 if self._rate1 else self._best / max(1, self.meter.streams)

    def grant(self, n: int) -> int:
        """Up to `n` more connections for this file (another file of the host ended, HostMeter.leave);
        returns how many it took."""
        with self._lock:
            n = min(n, self._ceiling - self.most)
            if self.state != "wide" or n <= 0:
                return 0
            self.most += n
            self._granted += n
            return n

    def cut_first(self) -> bool:
        """Once, after adopting "capped": the running stream must shorten its piece for the others."""
        with self._lock:
            cut, self._cut_first = self._cut_first, False
            return cut

    def wanted(self) -> int:
        """Connections this file should have now."""
        return {"measure": 1, "single": 1, "trial": 1 + self._extra, "wide": self.most}[self.state]

    def keep(self) -> int:
        """What the first stream keeps to itself while a trial runs: a little more than a measurement's worth."""
        with self._lock:
            return int(self._rate1 / self._streams1 * (MEASURE + 0.2))

    def limit(self, remaining: int) -> int | None:
        """The size of the next piece a connection takes (None: all the rest of its gap)."""
        with self._lock:
            if self.state == "single":
                return None
            if self.state == "measure":
                return None  # one request: a CDN spends ~20 ms per request, which a measurement must not see
            if self.state == "trial":
                # about one measurement's worth each, so the trial ends before the pieces do
                return max(self._min_piece, int(self._rate1 / self._streams1 * MEASURE))
            # several pieces per connection, so every connection stays busy to the end
            return max(self._min_piece, min(self._max_piece, -(-remaining // (2 * self.most))))

    def received(self, n: int, remaining: int, joining: bool, now: float | None = None) -> int:
        """`n` more bytes arrived, `remaining` are still to come (`joining`: on the connection a trial
        added); returns how many connections to add.

        Rates are the host's (every file's bytes, through the meter), taken over the last WINDOW
        seconds, and a measurement is judged by the best such rate it reached: a new TCP
        connection starts slow (a CDN's stream ramps up for tenths of a second), so an average
        from its first byte would make any server look capped.
        """
        now = self._clock() if now is None else now
        self.left = remaining
        total = self.meter.add(n)
        verdict = None
        add = 0
        with self._lock:
            if self._adopted is not None and self.state == "measure":
                kind, self._adopted = self._adopted, None
                self.meter.release(self)
                if kind == "capped" and self.most > 1:
                    self.state, self._cut_first = "wide", True
                    self.meter.widened(self)
                    return self.most - 1
                self.state = "single"
                return 0
            if self.state == "wide" and self._granted:
                # a connection is worth opening only while there is a piece left to give it
                add, self._granted = min(self._granted, remaining // self._min_piece), 0
                return add
            if self.state not in ("measure", "trial"):
                return 0
            if self.state == "measure" and not self.meter.claim(self):
                return 0  # another file measures the host; this one follows its verdict (adopt)
            if self._mark is None:
                if self.state == "measure" or joining:
                    self._mark = (now, total)
                    self._samples = deque([(now, total)])
                    self._best = 0.0
                return 0
            self._samples.append((now, total))
            while len(self._samples) > 2 and now - self._samples[1][0] >= WINDOW:
                self._samples.popleft()
            t_old, b_old = self._samples[0]
            if now - t_old >= WINDOW:
                self._best = max(self._best, (total - b_old) / (now - t_old))
            elapsed = now - self._mark[0]
            since = total - self._mark[1]
            if self.state == "measure" and since >= SURE and since >= self._fast * elapsed:
                self._best = max(self._best, since / max(elapsed, 1e-9))
            if self.state == "measure" and self._best >= self._fast:
                self.state, verdict = "single", "fast"
            elif self.state == "trial" and elapsed >= EARLY and self._best >= GAIN * self._rate1:
                # the host's total grew with its streams: a cap per connection, seen; no need to wait
                self.state, verdict = "wide", "capped"
                add = max(0, self.most - 1 - self._extra)
            elif elapsed < MEASURE:
                return 0
            elif self.state == "measure":
                streams = max(1, self.meter.streams)
                if remaining < self._best / streams * WORTH:
                    self.state = "single"  # one stream ends soon anyway: no verdict learnt
                else:
                    # as many streams again as the host has: a cap per connection doubles the total
                    self._rate1, self._streams1, self._mark = self._best, streams, None
                    self._extra = max(1, min(streams, self.most - 1))
                    self.state = "trial"
                    add = self._extra
            else:
                capped = self._best >= GAIN * self._rate1
                self.state, verdict = ("wide", "capped") if capped else ("single", "shared")
                add = max(0, self.most - 1 - self._extra) if capped else 0
            if self.state in ("single", "wide"):
                self.meter.release(self)
            if self.state == "wide":
                self.meter.widened(self)
        if verdict is not None:
            self._on_verdict(verdict)
        return add
