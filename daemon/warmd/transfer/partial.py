"""The bookkeeping of a partial download: which bytes of which version of a file are on disk.

A `Sidecar` is what survives a crash (it lives beside the `.part` in the store); a `Ledger` is the
live view while connections write, and decides when the sidecar is worth rewriting.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


def merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sort and merge overlapping or touching [start, end) ranges."""
    out: list[tuple[int, int]] = []
    for s, e in sorted(r for r in ranges if r[1] > r[0]):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def missing_ranges(done: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    """The [start, end) ranges of a file of `size` bytes not covered by `done`."""
    out, pos = [], 0
    for s, e in merge_ranges(done):
        if s > pos:
            out.append((pos, s))
        pos = max(pos, e)
    if pos < size:
        out.append((pos, size))
    return out


@dataclass
class Sidecar:
    """What a partial download needs to resume safely: which bytes of which version are on disk."""

    url: str  # credentials stripped; informational only
    size: int
    etag: str | None = None
    last_modified: str | None = None
    done: list[tuple[int, int]] = field(default_factory=list)  # sorted, merged [start, end)

    def validator(self) -> str | None:
        """The If-Range value that proves the server still has the same file."""
        return self.etag or self.last_modified

    def done_bytes(self) -> int:
        """Bytes recorded as written to the `.part`."""
        return sum(e - s for s, e in self.done)

    def to_json(self) -> str:
        """Serialise for the sidecar file."""
        return json.dumps({
            "version": 1, "url": self.url, "size": self.size, "etag": self.etag,
            "last_modified": self.last_modified, "done": [list(r) for r in self.done],
        })

    @classmethod
    def from_json(cls, text: str) -> Sidecar:
        """Parse a sidecar file; raises ValueError on anything unexpected."""
        d = json.loads(text)
        if d.get("version") != 1 or not isinstance(d.get("size"), int) or d["size"] < 0:
            raise ValueError("bad sidecar")
        done = [(int(s), int(e)) for s, e in d.get("done", [])]
        if any(not 0 <= s < e <= d["size"] for s, e in done):
            raise ValueError("sidecar range outside the file")
        return cls(url=str(d.get("url", "")), size=d["size"], etag=d.get("etag"),
                   last_modified=d.get("last_modified"), done=merge_ranges(done))


# A SIGKILL loses what was written since the last save: at most this share of the file (or
# _SAVE_MIN_BYTES of a small one), and at most what arrived in _SAVE_EVERY seconds. A save is
# a small write and a rename (~0.2 ms): 1/64 keeps them to ~50 a second at 700 MiB/s.
_SAVE_SHARE = 1 / 64
_SAVE_MIN_BYTES = 256 * 1024
_SAVE_EVERY = 0.1


class Ledger:
    """Which bytes of one `.part` are written, kept current by the connections writing them.

    Each connection reports the range it is filling (`begin`, `advance` after every write that
    returned, `end`); `save` is called on every advance and rewrites the sidecar when enough is
    new. Nothing here waits on the disk: a sidecar only claims bytes whose write already
    returned, which a killed process cannot lose (the kernel has them).
    """

    def __init__(self, sidecar: Sidecar, save: Callable[[Sidecar], None]) -> None:
        self.sidecar = sidecar
        self._save = save
        self._lock = threading.Lock()
        self._save_lock = threading.Lock()
        self._active: dict[int, tuple[int, int]] = {}  # slot -> (start, written end)
        self._unsaved = 0
        self._saved_at = time.monotonic()
        self._every = max(_SAVE_MIN_BYTES, int(sidecar.size * _SAVE_SHARE))
        self._next_slot = 0

    @property
    def size(self) -> int:
        """The file's length."""
        return self.sidecar.size

    def begin(self, start: int) -> int:
        """A connection starts writing at `start`; returns its slot."""
        with self._lock:
            slot = self._next_slot
            self._next_slot += 1
            self._active[slot] = (start, start)
            return slot

    def advance(self, slot: int, end: int) -> None:
        """Bytes up to `end` of the slot's range are written."""
        with self._lock:
            start, old = self._active[slot]
            self._active[slot] = (start, end)
            self._unsaved += end - old
            due = self._unsaved >= self._every or time.monotonic() - self._saved_at >= _SAVE_EVERY
        if due:
            self.save()

    def end(self, slot: int) -> None:
        """The slot's connection stopped; what it wrote stays recorded."""
        with self._lock:
            start, end = self._active.pop(slot)
            self.sidecar.done = merge_ranges(self.sidecar.done + [(start, end)])

    def written(self) -> list[tuple[int, int]]:
        """Every range written so far, merged."""
        with self._lock:
            return merge_ranges(self.sidecar.done + list(self._active.values()))

    def prefix(self) -> int:
        """How many bytes from the start of the file are written without a gap."""
        w = self.written()
        return w[0][1] if w and w[0][0] == 0 else 0

    def save(self, wait: bool = False) -> None:
        """Rewrite the sidecar with every written range (skipped when another thread is at it, unless `wait`)."""
        if not self._save_lock.acquire(blocking=wait):
            return
        try:
            with self._lock:
                snapshot = Sidecar(self.sidecar.url, self.sidecar.size, self.sidecar.etag,
                                   self.sidecar.last_modified,
                                   merge_ranges(self.sidecar.done + list(self._active.values())))
                self._unsaved = 0
                self._saved_at = time.monotonic()
            self._save(snapshot)
        finally:
            self._save_lock.release()
