"""Many non-recursive folder watches behind one inotify instance and one reader thread.

watchdog's Observer runs one emitter thread per scheduled folder: 2,000 project folders were
2,000 threads (a systemd user unit's TasksMax is a few thousand). Its lower layer, `InotifyFD`,
holds any number of watches on one inotify instance read by one thread; warmd uses that on Linux,
and the Observer (FSEvents, kqueue, polling) elsewhere.
"""

from __future__ import annotations

import errno
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Protocol

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch

Kind = Literal["dir-new", "dir-gone", "file", "overflow"]


@dataclass(frozen=True)
class FolderEvent:
    """What happened in a watched folder: a subfolder came or went, a file was written or moved in
    ("dir-gone" of the watched folder itself when it is deleted or moved away), or events were lost."""

    kind: Kind
    path: Path


Sink = Callable[[FolderEvent], None]


class Watches(Protocol):
    """Non-recursive watches on folders, their events handed to one sink (which must not block)."""

    def add(self, folder: Path) -> None:
        """Watch `folder`; OSError (ENOSPC/EMFILE at the inotify limits, ENOENT, ...) when it cannot."""

    def remove(self, folder: Path) -> None:
        """Stop watching `folder` (nothing when it is not watched)."""

    def close(self) -> None:
        """Remove every watch and stop the thread(s)."""


def default_watches(sink: Sink) -> Watches:
    """One inotify instance on Linux; watchdog's Observer (one thread per folder) on other systems."""
    if sys.platform.startswith("linux"):
        return InotifyWatches(sink)
    return ObserverWatches(sink, Observer)


# --- Linux: one inotify instance ------------------------------------------------------------------

class InotifyWatches:
    """All folders on one `watchdog.observers.inotify_c.InotifyFD`: one fd, one reader thread."""

    def __init__(self, sink: Sink) -> None:
        from watchdog.observers.inotify_c import InotifyConstants as C, InotifyFD

        self._c = C
        # No IN_MODIFY: it fires on every write() to any file in a project folder; a lock written
        # in place ends with a close-after-write, and `uv lock` renames onto it (fact 6).
        # IN_DONT_FOLLOW as watchdog's Observer: a link is not a way out of the root.
        self._mask = (C.IN_CREATE | C.IN_CLOSE_WRITE | C.IN_MOVED_FROM | C.IN_MOVED_TO | C.IN_DELETE
                      | C.IN_DELETE_SELF | C.IN_MOVE_SELF | C.IN_ONLYDIR | C.IN_DONT_FOLLOW)
        self._sink = sink
        self._lock = threading.Lock()
        self._by_wd: dict[int, Path] = {}
        self._by_path: dict[Path, int] = {}
        self._id = id(self)
        self._error: OSError | None = None
        try:
            self._fd: object | None = InotifyFD()
        except OSError as exc:  # EMFILE: the instance limit; every add() then says so
            self._fd, self._error = None, exc
            return
        self._fd.start()  # type: ignore[attr-defined]

    def add(self, folder: Path) -> None:
        """Watch `folder` (on the shared instance)."""
        if self._fd is None:
            assert self._error is not None
            raise OSError(self._error.errno, self._error.strerror)
        wd = self._fd.add_callback(os.fsencode(folder), self._mask, self, self._id)  # type: ignore[attr-defined]
        if wd < 0:  # InotifyFD does not raise on EACCES: it records a watch -1
            self._fd.remove_callbacks([(wd, self._id)])  # type: ignore[attr-defined]
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))
        with self._lock:
            # The same inode under another name (a folder moved) is the same watch: the new name wins.
            old = self._by_wd.get(wd)
            if old is not None and old != folder:
                self._by_path.pop(old, None)
            self._by_wd[wd] = folder
            self._by_path[folder] = wd

    def remove(self, folder: Path) -> None:
        """Stop watching `folder`."""
        with self._lock:
            wd = self._by_path.pop(folder, None)
            if wd is None:
                return
            self._by_wd.pop(wd, None)
        if self._fd is not None:
            self._fd.remove_callbacks([(wd, self._id)])  # type: ignore[attr-defined]

    def close(self) -> None:
        """Close the instance (its watches go with it) and end its thread."""
        with self._lock:
            self._by_wd.clear()
            self._by_path.clear()
        if self._fd is not None:
            self._fd.stop()  # type: ignore[attr-defined]
            self._fd.join(timeout=5)  # type: ignore[attr-defined]

    # watchdog's WatchCallback, called on the reader thread

    def on_event(self, event: object) -> None:
        """Translate one raw event into a FolderEvent for the sink."""
        c, mask = self._c, event.mask  # type: ignore[attr-defined]
        with self._lock:
            folder = self._by_wd.get(event.wd)  # type: ignore[attr-defined]
        if folder is None:
            return  # a watch removed meanwhile
        name = event.name  # type: ignore[attr-defined]
        path = folder / os.fsdecode(name) if name else folder
        kind: Kind | None = None
        if mask & (c.IN_DELETE_SELF | c.IN_MOVE_SELF):
            kind = "dir-gone"
        elif mask & c.IN_ISDIR:
            if mask & (c.IN_DELETE | c.IN_MOVED_FROM):
                kind = "dir-gone"
            elif mask & (c.IN_CREATE | c.IN_MOVED_TO):
                kind = "dir-new"
        elif mask & (c.IN_CREATE | c.IN_CLOSE_WRITE | c.IN_MOVED_TO):
            kind = "file"
        if kind is not None:
            self._sink(FolderEvent(kind, path))

    def on_watch_deleted(self, wd: int) -> None:
        """The kernel dropped a watch (its folder was deleted): forget its number."""
        with self._lock:
            folder = self._by_wd.pop(wd, None)
            if folder is not None and self._by_path.get(folder) == wd:
                del self._by_path[folder]

    def on_queue_overflow(self) -> None:
        """Events were lost: the sink's owner walks again."""
        self._sink(FolderEvent("overflow", Path()))


# --- elsewhere: watchdog's Observer -----------------------------------------------------------------

# No FileModifiedEvent, as above.
_EVENT_FILTER = [FileCreatedEvent, FileClosedEvent, FileMovedEvent, DirCreatedEvent, DirMovedEvent, DirDeletedEvent]


class _Handler(FileSystemEventHandler):
    """Translates on watchdog's dispatch thread; the sink never waits."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    def dispatch(self, event: FileSystemEvent) -> None:
        src = Path(os.fsdecode(event.src_path))
        dest = Path(os.fsdecode(event.dest_path)) if getattr(event, "dest_path", "") else None
        if isinstance(event, (DirMovedEvent, DirDeletedEvent)):
            self.sink(FolderEvent("dir-gone", src))
        if isinstance(event, (DirCreatedEvent, DirMovedEvent)):
            self.sink(FolderEvent("dir-new", dest or src))
        elif isinstance(event, (FileCreatedEvent, FileClosedEvent, FileMovedEvent)):
            self.sink(FolderEvent("file", dest or src))


class ObserverWatches:
    """watchdog's Observer for the system (one emitter thread per folder): where inotify is not."""

    def __init__(self, sink: Sink, factory: Callable[[], BaseObserver]) -> None:
        self._handler = _Handler(sink)
        self._observer = factory()
        # Started before any schedule(): a watch that fails then fails alone, not the whole start.
        self._observer.start()
        self._watches: dict[Path, ObservedWatch] = {}

    def add(self, folder: Path) -> None:
        """Schedule `folder`."""
        self._watches[folder] = self._observer.schedule(self._handler, str(folder), recursive=False,
                                                        event_filter=_EVENT_FILTER)

    def remove(self, folder: Path) -> None:
        """Unschedule `folder`."""
        watch = self._watches.pop(folder, None)
        if watch is not None:
            try:
                self._observer.unschedule(watch)
            except KeyError:
                pass  # the emitter stopped itself when the folder was deleted

    def close(self) -> None:
        """Stop the observer."""
        self._observer.stop()
        self._observer.join(timeout=5)


class CacheWatch:
    """A non-recursive watch of uv's cache root: `uv cache clean` removes its top folders (uv 0.8
    the root too), which no warm uv cache does; `cleaned` is set when one goes."""

    def __init__(self, root: Path, watches: Callable[[Sink], Watches] = default_watches) -> None:
        self.root = root
        self.cleaned = threading.Event()
        self._watching = False
        self._backend = watches(self._event)
        self.ensure()

    def ensure(self) -> None:
        """Watch the root if it is not watched (it may not exist yet, or uv made it again since)."""
        if self._watching:
            return
        self._backend.remove(self.root)  # the watch of a root that went, if any is left
        try:
            self._backend.add(self.root)
        except OSError:
            return  # not there yet: the next call tries again
        self._watching = True

    def close(self) -> None:
        """Stop watching."""
        self._backend.close()

    def _event(self, event: FolderEvent) -> None:
        if event.kind == "overflow":
            self.cleaned.set()  # nothing is known of what happened meanwhile: ask uv again
        if event.kind != "dir-gone":
            return
        if event.path == self.root:
            self._watching = False  # ensure() watches it again once uv made it again
            self.cleaned.set()
        elif event.path.parent == self.root and not event.path.name.startswith("."):
            self.cleaned.set()  # a bucket of uv's went; its own scratch folders are hidden
