"""Content-addressed store of verified wheel files, with resumable partials and an LRU size cap.

Layout under `root`:
    blobs/<aa>/<sha256>      complete, verified files (read-only)
    partial/<sha256>.part    a download in progress (never read as a wheel)
    partial/<sha256>.json    its sidecar: url, size, validator, byte ranges known to be on disk
    locks/<sha256>.lock      flock(2) target: one writer per sha across threads and processes

LRU: last use is the blob's mtime. A blob's content never changes (its name is its hash), so
mtime carries no other meaning; `path()` bumps it with os.utime. atime is not used because
noatime/relatime mounts make it unreliable.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from loguru import logger

from ..base import DiskFull, FetchError, fsync_dir, write_atomic
from .partial import Sidecar

_SHA = re.compile(r"^[0-9a-f]{64}$")
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


def is_disk_full(exc: BaseException) -> bool:
    """True when `exc` is the OS saying the disk (or the user's quota) is full."""
    return isinstance(exc, OSError) and exc.errno in _NO_SPACE


def disk_full_error(store_dir: Path, needed: int | None, exc: OSError | None = None) -> DiskFull:
    """A DiskFull naming the store folder and how much room the download needed."""
    need = f"{needed} bytes ({needed / 2**20:.1f} MiB)" if needed is not None else "more room"
    why = "quota exceeded" if exc is not None and exc.errno == errno.EDQUOT else "no space left"
    return DiskFull(
        f"{store_dir}: {why}; the download needs {need}. Free space there, "
        "or lower store-max-size / move store-dir in warmd's config"
    )


def _check_sha(sha: str) -> str:
    if not _SHA.match(sha):
        raise ValueError(f"not a lowercase sha256 hex digest: {sha!r}")
    return sha


class Store:
    """sha256-addressed files on disk: verified blobs, resumable partials, per-sha locks."""

    def __init__(self, root: Path, max_bytes: int | None = None) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.blobs = self.root / "blobs"
        self.partial = self.root / "partial"
        self.locks = self.root / "locks"
        for d in (self.blobs, self.partial, self.locks):
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                if is_disk_full(exc):
                    raise disk_full_error(self.root, None, exc) from None
                raise FetchError(f"{d}: cannot create the store folder: {exc.strerror}") from None
        # shas this process is writing now; flock alone cannot tell us about ourselves cheaply
        self._active: set[str] = set()
        self._active_lock = threading.Lock()

    # -- complete blobs -------------------------------------------------------------------

    def blob_path(self, sha: str) -> Path:
        """Where the complete blob for `sha` lives (whether or not it exists)."""
        return self.blobs / _check_sha(sha)[:2] / sha

    def has(self, sha: str) -> bool:
        """True when a complete, verified blob for `sha` is in the store."""
        return self.blob_path(sha).is_file()

    def path(self, sha: str) -> Path | None:
        """The complete blob for `sha`, marking it as just used; None if absent."""
        p = self.blob_path(sha)
        try:
            os.utime(p)
        except FileNotFoundError:
            return None
        except OSError:
            if not p.is_file():
                return None
        return p

    def discard(self, sha: str) -> int:
        """Remove the complete blob for `sha` unless a download of it holds its lock; returns the bytes freed."""
        if self._busy(sha):
            return 0
        p = self.blob_path(sha)
        try:
            size = p.stat().st_size
            p.unlink()
        except FileNotFoundError:
            return 0
        logger.debug("store: dropped {} ({} bytes)", sha[:12], size)
        return size

    def commit(self, sha: str, part_path: Path) -> Path:
        """Move a verified partial into blobs/ atomically and durably; returns the blob path."""
        dest = self.blob_path(sha)
        try:
            dest.parent.mkdir(exist_ok=True)
            fd = os.open(part_path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.chmod(part_path, 0o444)
            os.replace(part_path, dest)
            fsync_dir(dest.parent)
            with contextlib.suppress(FileNotFoundError):
                self.sidecar_path(sha).unlink()
            fsync_dir(self.partial)
        except OSError as exc:
            if is_disk_full(exc):
                raise disk_full_error(self.root, None, exc) from None
            raise
        os.utime(dest)
        return dest

    def remove(self, sha: str) -> None:
        """Delete the blob for `sha` (readers that have it open keep reading it)."""
        with contextlib.suppress(FileNotFoundError):
            self.blob_path(sha).unlink()

    # -- partials -------------------------------------------------------------------------

    def part_path(self, sha: str) -> Path:
        """The in-progress download file for `sha`."""
        return self.partial / f"{_check_sha(sha)}.part"

    def sidecar_path(self, sha: str) -> Path:
        """The resume record beside the partial for `sha`."""
        return self.partial / f"{_check_sha(sha)}.json"

    def partial_paths(self, sha: str) -> tuple[Path, Path]:
        """(part file, sidecar file) for `sha`; neither need exist."""
        return self.part_path(sha), self.sidecar_path(sha)

    def open_part(self, sha: str, size: int, fresh: bool) -> int:
        """Open the partial for writing (fresh: created and preallocated, so a full disk fails now, not at 90 %)."""
        part = self.part_path(sha)
        try:
            fd = os.open(part, os.O_RDWR | os.O_CREAT | (os.O_TRUNC if fresh else 0), 0o644)
        except OSError as exc:
            if is_disk_full(exc):
                raise disk_full_error(self.root, size, exc) from None
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
                self.drop_partial(sha)  # nothing in it worth keeping
            if is_disk_full(exc):
                raise disk_full_error(self.root, size, exc) from None
            raise FetchError(f"{part}: cannot allocate {size} bytes: {exc.strerror}") from None
        return fd

    def read_sidecar(self, sha: str) -> Sidecar | None:
        """The sidecar of a partial that can be resumed, or None (absent, unreadable, no .part)."""
        part, side = self.partial_paths(sha)
        try:
            sc = Sidecar.from_json(side.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError) as exc:
            logger.debug("ignoring unreadable sidecar {}: {}", side, exc)
            return None
        try:
            if part.stat().st_size < sc.size:
                sc.done = []  # truncated .part: trust none of it (its ranges may be holes)
        except FileNotFoundError:
            return None
        return sc

    def write_sidecar(self, sha: str, sidecar: Sidecar) -> None:
        """Replace the sidecar atomically, without waiting for the disk.

        No fsync: a killed process loses nothing the kernel has, and what a power loss tears
        (a sidecar claiming bytes that never reached the disk) the final sha256 catches; the
        file then starts over once.
        """
        try:
            write_atomic(self.sidecar_path(sha), sidecar.to_json(), durable=False)
        except OSError as exc:
            if is_disk_full(exc):
                raise disk_full_error(self.root, None, exc) from None
            raise

    def drop_partial(self, sha: str) -> None:
        """Forget a partial download (sidecar first, so a crash leaves no stale resume point)."""
        part, side = self.partial_paths(sha)
        for p in (side, part):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    # -- locking --------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, sha: str, stop: threading.Event | None = None,
             poll: float = 0.1) -> Iterator[None]:
        """Hold the exclusive per-sha lock (waits for other threads/processes; `stop` aborts)."""
        path = self.locks / f"{_check_sha(sha)}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    # polling (not a blocking flock) so a cancel can interrupt the wait
                    if stop is not None and stop.wait(poll):
                        raise FetchError(f"{sha[:12]}: cancelled while waiting for another download") from None
                    if stop is None:
                        time.sleep(poll)
            with self._active_lock:
                self._active.add(sha)
            try:
                yield
            finally:
                with self._active_lock:
                    self._active.discard(sha)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _busy(self, sha: str) -> bool:
        """True when some thread or process holds the lock for `sha` right now."""
        with self._active_lock:
            if sha in self._active:
                return True
        path = self.locks / f"{sha}.lock"
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        finally:
            os.close(fd)

    # -- size cap -------------------------------------------------------------------------

    def _blobs(self) -> list[tuple[float, int, str, Path]]:
        out = []
        for p in self.blobs.glob("*/*"):
            if _SHA.match(p.name):
                with contextlib.suppress(FileNotFoundError):
                    st = p.stat()
                    out.append((st.st_mtime, st.st_size, p.name, p))
        return out

    def _partials(self) -> list[tuple[float, int, str, Path]]:
        out = []
        for p in self.partial.glob("*.part"):
            with contextlib.suppress(FileNotFoundError):
                st = p.stat()
                # allocated size: a preallocated .part really holds its blocks
                out.append((st.st_mtime, max(st.st_size, st.st_blocks * 512), p.stem, p))
        return out

    def total_bytes(self) -> int:
        """Bytes held by blobs and partials."""
        return sum(b[1] for b in self._blobs()) + sum(b[1] for b in self._partials())

    def evict(self, protect: set[str] = frozenset()) -> list[str]:  # type: ignore[assignment]
        """Remove least-recently-used blobs (then idle partials) until under max_bytes; returns shas."""
        if self.max_bytes is None:
            return []
        blobs, partials = self._blobs(), self._partials()
        total = sum(b[1] for b in blobs) + sum(b[1] for b in partials)
        removed: list[str] = []
        # blobs first (they can be re-fetched whole); idle partials only after, oldest first
        for kind, entries in (("blob", blobs), ("partial", partials)):
            for _mtime, size, sha, p in sorted(entries):
                if total <= self.max_bytes:
                    return removed
                if sha in protect or self._busy(sha):
                    continue
                try:
                    if kind == "blob":
                        p.unlink()
                    else:
                        self.drop_partial(sha)
                except FileNotFoundError:
                    continue
                logger.debug("store: evicted {} {} ({} bytes)", kind, sha[:12], size)
                total -= size
                removed.append(sha)
        return removed
