"""A `.part` that connections are still writing, hashed in order as its prefix grows, readable while it grows.

The hash runs on bytes as they arrive: a connection writing at the hashed frontier hands its
buffer to sha256 straight away, and bytes that landed beyond the frontier (another connection's
piece) are read back from the page cache once the gap before them closes. Nothing is read twice
from the disk.

The feeder streams the file to uv while it grows, but never the last `holdback` bytes before
the whole file matched the lock's sha256: uv cannot finish a wheel whose body has not ended, so
it keeps nothing of a file that fails (tests/warm/test_stream.py proves it for each uv version).
"""

from __future__ import annotations

import hashlib
import os
import threading

from .partial import Ledger

_READ_BACK = 1 << 20


class GrowingFile:
    """One file being downloaded: its in-order hash, and how much of it the feeder may send."""

    def __init__(self, fd: int, ledger: Ledger, holdback: int) -> None:
        self.fd = fd
        self.size = ledger.size
        self._ledger = ledger
        self._holdback = min(max(holdback, 0), self.size)
        self._hasher = hashlib.sha256()
        self._hashed = 0
        self._hash_lock = threading.Lock()
        self._cv = threading.Condition()
        self._outcome: bool | None = None  # True: verified; False: failed or abandoned
        self._closed = False

    @property
    def hashed(self) -> int:
        """Bytes from the start that are written and hashed."""
        return self._hashed

    def wrote(self, offset: int, data: memoryview) -> None:
        """`data` was written at `offset` (and recorded in the ledger): hash what is now in order."""
        while True:
            if not self._hash_lock.acquire(blocking=False):
                return  # the holder re-checks after releasing, and will take these bytes too
            try:
                if offset == self._hashed and data:
                    self._hasher.update(data)
                    self._hashed += len(data)
                    data = memoryview(b"")
                self._read_back()
            finally:
                self._hash_lock.release()
            self._notify()
            if self._ledger.prefix() <= self._hashed:
                return

    def _read_back(self) -> None:
        upto = self._ledger.prefix()
        while self._hashed < upto:
            chunk = os.pread(self.fd, min(_READ_BACK, upto - self._hashed), self._hashed)
            if not chunk:
                raise OSError(f"short read at byte {self._hashed} of the partial download")
            self._hasher.update(chunk)
            self._hashed += len(chunk)

    def digest(self) -> str | None:
        """The sha256 of the whole file, once every byte is written and hashed; else None."""
        with self._hash_lock:
            self._read_back()
            return self._hasher.hexdigest() if self._hashed == self.size else None

    def settle(self, verified: bool) -> None:
        """The hash matched (readers may take the rest) or the download failed (readers must abort)."""
        with self._cv:
            if self._outcome is None:
                self._outcome = verified
            self._cv.notify_all()

    def _notify(self) -> None:
        with self._cv:
            self._cv.notify_all()

    def servable(self) -> int | None:
        """Bytes the feeder may send now; None once the download failed."""
        if self._outcome is False:
            return None
        if self._outcome is True:
            return self.size
        return max(0, min(self._hashed, self.size - self._holdback))

    def wait(self, sent: int, timeout: float | None = None) -> int | None:
        """Block until more than `sent` bytes may be sent (or the download ended); returns servable()."""
        with self._cv:
            self._cv.wait_for(lambda: (n := self.servable()) is None or n > sent, timeout)
            return self.servable()

    def reader(self) -> int | None:
        """A file descriptor of the reader's own (valid after a rename), or None once the writer closed."""
        with self._cv:
            return None if self._closed else os.dup(self.fd)

    def close(self) -> None:
        """The writer is about to close its descriptor: later readers go to the store instead."""
        with self._cv:
            self._closed = True
