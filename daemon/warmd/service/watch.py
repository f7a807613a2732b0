"""Report when a project's uv.lock changes or a new project appears under the roots (watchdog/inotify)."""

from __future__ import annotations

import errno
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from loguru import logger

from .discovery import LOCK, PYPROJECT, _Ignore, _scan, _walk
from .watches import FolderEvent, Watches, default_watches

_LIMIT_ERRNOS = (errno.ENOSPC, errno.EMFILE)
INOTIFY_WATCHES = 524288  # what to raise fs.inotify.max_user_watches to (many distributions' new default)


def inotify_fix(needed: int | None = None) -> str:
    """How to raise the inotify limits: the one hint the watcher logs and doctor gives."""
    watches = max(INOTIFY_WATCHES, needed or 0)
    return (f"as root, `sysctl fs.inotify.max_user_watches={watches}` and `sysctl fs.inotify.max_user_instances=1024`"
            + (f" (about {needed} watches needed here)" if needed else "")
            + "; make them permanent in /etc/sysctl.d/90-warmd.conf")


_LIMIT_HINT = "inotify limit reached while watching {path}: {n} project(s) fall back to a check every rescan; "

StatKey = tuple[int, int, int] | None  # (mtime_ns, inode, size) of a uv.lock, None when absent


def _lock_stat(project: Path) -> StatKey:
    """The uv.lock's stat key: of what a symlink names, else of the entry itself (a symlink loop or
    a dangling link is a lock too, one the run reports as bad input). Only stats: never opens it,
    so a FIFO or device named uv.lock cannot block discovery."""
    try:
        st = os.stat(project / LOCK)
    except OSError:
        try:
            st = os.lstat(project / LOCK)
        except OSError:
            return None
    return (st.st_mtime_ns, st.st_ino, st.st_size)


@dataclass
class _Watched:
    depth: int
    is_project: bool


_STOP = object()


class ProjectWatcher:
    """Watches project folders and the folders above them; calls back on lock changes and new projects.

    Each folder costs the same whatever the count: a project found, added or dropped touches its own
    entries (and its watched subfolders), never a list of every folder watched.
    """

    def __init__(
        self,
        roots: Iterable[Path],
        *,
        max_depth: int,
        ignore: Iterable[str],
        debounce: float,
        on_change: Callable[[Path], None],
        on_new_project: Callable[[Path], None],
        on_gone: Callable[[Path], None] | None = None,
        watches: Callable[[Callable[[FolderEvent], None]], Watches] = default_watches,
    ) -> None:
        self.roots = tuple(Path(os.path.abspath(r)) for r in roots)
        self.max_depth = max_depth
        self.ignore = _Ignore(ignore)
        self.debounce = debounce
        self.on_change = on_change
        self.on_new_project = on_new_project
        self.on_gone = on_gone  # a project folder left (deleted, moved away, or now inside another project)
        self._watches_factory = watches
        self._backend: Watches | None = None
        self._lock = threading.RLock()
        self._events: queue.Queue = queue.Queue()
        self._watched: dict[Path, _Watched] = {}
        self._children: dict[Path, set[Path]] = {}  # watched folder -> its watched subfolders
        self._watches: set[Path] = set()
        self._projects: dict[Path, StatKey] = {}
        self._fallback: set[Path] = set()
        self._deadlines: dict[Path, float] = {}
        self._limit_reported = False
        self._limit_hit: Path | None = None
        self._thread: threading.Thread | None = None

    # --- public -------------------------------------------------------------------------

    @property
    def projects(self) -> list[Path]:
        """Every project folder known now (with or without a uv.lock yet)."""
        with self._lock:
            return sorted(self._projects)

    def knows(self, project: Path) -> bool:
        """Whether `project` is a project folder under the roots now."""
        # Without the lock (one dict lookup is atomic): a run settling while the walk that queued it
        # goes on (start's on_found) must not wait for the walk.
        return project in self._projects

    @property
    def watched_paths(self) -> set[Path]:
        """The folders holding an inotify watch now (each one non-recursive)."""
        with self._lock:
            return set(self._watches)

    @property
    def fallback_projects(self) -> set[Path]:
        """Projects without a watch (inotify limit): only rescan() notices their changes."""
        with self._lock:
            return {p for p in self._fallback if p in self._projects}

    @property
    def pending(self) -> set[Path]:
        """Projects with a lock change waiting out the debounce."""
        with self._lock:
            return set(self._deadlines)

    def start(self, on_found: Callable[[Path], None] | None = None) -> list[Path]:
        """Discover the roots, set up the watches, and return the projects found; `on_found` is called
        for each one as it is found (under the watcher's lock), so its work need not wait for the walk."""
        self._backend = self._watches_factory(self._events.put)
        self._thread = threading.Thread(target=self._run, name="warmd-watch", daemon=True)
        self._thread.start()
        found: list[Path] = []

        def emit(project: Path) -> None:
            found.append(project)
            if on_found is not None:
                self._call(on_found, project)

        with self._lock:
            for root in self.roots:
                if not root.is_dir():
                    logger.warning(f"root {root} is not a folder; it is checked again at every rescan")
                    continue
                self._adopt(root, 0, emit)
            self._report_limit()
        return sorted(found)

    def stop(self) -> None:
        """Remove every watch and stop the threads."""
        self._events.put(_STOP)
        if self._backend is not None:
            self._backend.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            self._watches.clear()
            self._watched.clear()
            self._children.clear()

    def rescan(self) -> None:
        """Walk the roots again: new projects, changed locks and missing watches that events missed."""
        new: list[Path] = []
        changed: list[Path] = []
        gone: list[Path] = []
        with self._lock:
            seen: set[Path] = set()
            for root in self.roots:
                if not root.is_dir():
                    continue
                projects, skeleton = _walk(root, self.max_depth, self.ignore)
                for folder, depth in skeleton:
                    seen.add(folder)
                    w = self._watched.get(folder)
                    if w is None or w.is_project or folder not in self._watches:
                        if w is not None and w.is_project:
                            self._projects.pop(folder, None)
                            gone.append(folder)
                        self._set_watched(folder, depth, is_project=False)
                        self._watch(folder)
                for project in projects:
                    seen.add(project)
                    depth = len(project.relative_to(root).parts)
                    if project not in self._projects:
                        self._add_project(project, depth)
                        new.append(project)
                    elif project not in self._watches:
                        self._watch(project)
                    stat = _lock_stat(project)
                    if project in self._projects and stat != self._projects[project] and project not in new:
                        self._projects[project] = stat
                        if stat is not None:
                            changed.append(project)
            for folder in [p for p in self._watched if p not in seen]:
                gone += self._drop(folder)
            self._report_limit()
        self._tell(new, changed, gone)

    # --- watches ------------------------------------------------------------------------

    def _watch(self, folder: Path) -> bool:
        """Add a non-recursive watch; on the inotify limit, remember the folder for the rescan."""
        assert self._backend is not None
        if folder in self._watches:
            return True
        try:
            self._backend.add(folder)
        except OSError as exc:
            if exc.errno in _LIMIT_ERRNOS:
                self._fallback.add(folder)
                self._limit_hit = folder
            elif exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                logger.warning(f"cannot watch {folder}: {exc.strerror or exc}")
            return False
        self._watches.add(folder)
        self._fallback.discard(folder)
        return True

    def _report_limit(self) -> None:
        if not self._fallback or self._limit_reported:
            return
        self._limit_reported = True  # one line, not one per folder
        folder = self._limit_hit or next(iter(self._fallback))
        n = len([p for p in self._fallback if p in self._projects])
        logger.error(_LIMIT_HINT.format(path=folder, n=n) + inotify_fix())

    def _unwatch(self, folder: Path) -> None:
        self._fallback.discard(folder)
        if folder in self._watches:
            self._watches.discard(folder)
            if self._backend is not None:
                self._backend.remove(folder)

    def _set_watched(self, folder: Path, depth: int, *, is_project: bool) -> None:
        self._watched[folder] = _Watched(depth, is_project)
        if folder not in self.roots:
            self._children.setdefault(folder.parent, set()).add(folder)

    def _drop(self, folder: Path) -> list[Path]:
        """Forget a folder and everything watched below it; returns the projects that went with it."""
        gone: list[Path] = []
        siblings = self._children.get(folder.parent)
        if siblings is not None:
            siblings.discard(folder)
            if not siblings:
                del self._children[folder.parent]
        stack = [folder]
        while stack:
            path = stack.pop()
            stack.extend(self._children.pop(path, ()))
            if self._watched.pop(path, None) is None:
                continue
            self._unwatch(path)
            if path in self._projects:
                del self._projects[path]
                gone.append(path)
            self._deadlines.pop(path, None)
        return gone

    def _add_project(self, folder: Path, depth: int) -> None:
        self._set_watched(folder, depth, is_project=True)
        self._projects[folder] = _lock_stat(folder)
        self._watch(folder)

    def _adopt(self, folder: Path, depth: int, emit: Callable[[Path], None]) -> None:
        """Watch `folder` first, then read it, so nothing created in between is missed."""
        self._set_watched(folder, depth, is_project=False)
        self._watch(folder)
        scanned = _scan(folder)
        if scanned is None:
            return
        is_project, subdirs = scanned
        if is_project:
            self._promote(folder, emit)
            return
        if depth < self.max_depth:
            for name in sorted(subdirs):
                sub = folder / name
                if not self.ignore(name) and sub not in self._watched:
                    self._adopt(sub, depth + 1, emit)

    def _promote(self, folder: Path, emit: Callable[[Path], None]) -> list[Path]:
        """A watched folder turned out to be a project: its subfolders need no watches any more
        (returns the projects that were among them)."""
        w = self._watched[folder]
        gone: list[Path] = []
        for sub in list(self._children.get(folder, ())):
            gone += self._drop(sub)
        w.is_project = True
        self._projects[folder] = _lock_stat(folder)
        if folder not in self._watches:
            self._fallback.add(folder)
        emit(folder)
        return gone

    # --- events -------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            timeout = None
            with self._lock:
                if self._deadlines:
                    timeout = max(0.0, min(self._deadlines.values()) - time.monotonic())
            try:
                item = self._events.get(timeout=timeout)
            except queue.Empty:
                item = None
            if item is _STOP:
                return
            if item is not None:
                try:
                    self._handle(item)
                except Exception as exc:  # one odd event must not end the watching
                    logger.opt(exception=exc).debug("watch event failed")
                    logger.warning(f"watch: could not handle {item!r}: {exc}")
            self._fire_due()

    def _fire_due(self) -> None:
        now = time.monotonic()
        due = []
        with self._lock:
            for project, deadline in list(self._deadlines.items()):
                if deadline <= now:
                    del self._deadlines[project]
                    stat = _lock_stat(project)
                    if project in self._projects:
                        self._projects[project] = stat
                    if stat is not None:  # a lock deleted in the burst is no change to warm
                        due.append(project)
        for project in due:
            self._call(self.on_change, project)

    def _handle(self, event: FolderEvent) -> None:
        if event.kind == "overflow":
            logger.warning("inotify's queue overflowed (events were lost); walking the roots again")
            self.rescan()
            return
        new: list[Path] = []
        gone: list[Path] = []
        with self._lock:
            if event.kind == "dir-gone":
                if event.path in self._watched:
                    gone = self._drop(event.path)
            elif event.kind == "dir-new":
                self._on_new_dir(event.path, new.append)
            else:
                gone = self._on_file(event.path, new)
        self._tell(new, [], gone)

    def _tell(self, new: list[Path], changed: list[Path], gone: list[Path]) -> None:
        """The callbacks, outside the lock."""
        for project in gone:
            if self.on_gone is not None and project not in new:
                self._call(self.on_gone, project)
        for project in new:
            self._call(self.on_new_project, project)
        for project in changed:
            self._call(self.on_change, project)

    def _on_new_dir(self, path: Path, emit: Callable[[Path], None]) -> None:
        parent = self._watched.get(path.parent)
        if parent is None or parent.is_project or parent.depth >= self.max_depth or self.ignore(path.name):
            return
        if path not in self._watched:
            self._adopt(path, parent.depth + 1, emit)
            self._report_limit()

    def _on_file(self, path: Path, new: list[Path]) -> list[Path]:
        if path.name not in (LOCK, PYPROJECT):
            return []  # includes uv's .tmpXXXXXX before its rename onto uv.lock
        folder = path.parent
        w = self._watched.get(folder)
        if w is None:
            return []
        gone: list[Path] = []
        if not w.is_project:
            gone = self._promote(folder, new.append)
            if path.name == PYPROJECT:
                return gone
            # A lock that arrives in a new folder is announced by on_new_project alone.
            if folder in new:
                return gone
        if path.name == LOCK:
            self._deadlines[folder] = time.monotonic() + self.debounce
        return gone

    def _call(self, fn: Callable[[Path], None], project: Path) -> None:
        try:
            fn(project)
        except Exception as exc:  # the daemon's callback failing must not stop the watching
            logger.opt(exception=exc).debug("watch callback failed")
            logger.error(f"{project}: could not queue it: {exc} (a bug in warmd: please report it with the log of "
                         f"`warmd -v run`; `warmd prefetch {project}` warms it meanwhile)")
