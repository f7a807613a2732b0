"""Project discovery and the real watches (one inotify instance; watchdog's Observer elsewhere) on temporary folders."""

from __future__ import annotations

import errno
import os
import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from loguru import logger
from watchdog.observers import Observer

from warmd.base import DEFAULT_IGNORED_DIRS
from warmd.service import CacheWatch, InotifyWatches, ObserverWatches, ProjectWatcher, WatchSet, discover, \
    inotify_fix, watch_set

WAIT = 10.0  # generous: a loaded CI box; the waits end on the event, not on the clock


def _project(folder: Path, lock: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    if lock:
        (folder / "uv.lock").write_text("version = 1\n")
    return folder


def _uv_lock_write(project: Path, text: str) -> None:
    """What `uv lock` does (DESIGN.md fact 6): a hidden temp file renamed onto uv.lock."""
    tmp = project / ".tmpAbC123"
    tmp.write_text(text)
    os.replace(tmp, project / "uv.lock")


class Calls:
    """Callback recorder whose events tests await (no sleeps)."""

    def __init__(self) -> None:
        self.q: queue.Queue[tuple[str, Path]] = queue.Queue()
        self.all: list[tuple[str, Path]] = []

    def change(self, p: Path) -> None:
        self.all.append(("change", p))
        self.q.put(("change", p))

    def new(self, p: Path) -> None:
        self.all.append(("new", p))
        self.q.put(("new", p))

    def gone(self, p: Path) -> None:
        self.all.append(("gone", p))
        self.q.put(("gone", p))

    def next(self) -> tuple[str, Path]:
        return self.q.get(timeout=WAIT)


@pytest.fixture
def calls() -> Calls:
    return Calls()


# Linux's one inotify instance, and the Observer other systems get (here: watchdog's inotify one).
BACKENDS = {"inotify": InotifyWatches, "observer": lambda sink: ObserverWatches(sink, Observer)}


@pytest.fixture(params=sorted(BACKENDS))
def make_watcher(calls: Calls, request: pytest.FixtureRequest) -> Iterator:
    made: list[ProjectWatcher] = []

    def make(roots: list[Path], **kw: object) -> ProjectWatcher:
        opts: dict = {"max_depth": 3, "ignore": DEFAULT_IGNORED_DIRS, "debounce": 0.2,
                      "watches": BACKENDS[request.param]}
        opts.update(kw)
        w = ProjectWatcher(roots, on_change=calls.change, on_new_project=calls.new, on_gone=calls.gone, **opts)
        made.append(w)
        return w

    yield make
    for w in made:
        w.stop()


def test_discover_skips_venv_git_hidden_ignored_and_depth(tmp_path: Path) -> None:
    root = tmp_path / "code"
    a = _project(root / "a")
    b = _project(root / "group" / "b", lock=False)  # pyproject only: gets a lock later
    deep = _project(root / "x" / "y" / "z" / "c")  # depth 4
    _project(root / "x" / "y" / "z" / "w" / "too-deep")  # depth 5
    _project(root / ".venv" / "lib" / "pkg")
    _project(root / "a" / ".venv" / "lib" / "python3.11" / "site-packages" / "torch")
    _project(root / ".git" / "p")
    _project(root / ".hidden" / "p")
    _project(root / "node_modules" / "p")
    _project(root / "__pycache__" / "p")
    _project(root / "mine-ignored" / "p")
    _project(a / "sub")  # inside a project: the project's own business
    outside = _project(tmp_path / "elsewhere" / "p")
    (root / "link").symlink_to(outside.parent)  # links are not followed out of the root

    found = discover(root, 4, (*DEFAULT_IGNORED_DIRS, "mine-*"))
    assert found == sorted([a, b, deep])
    assert discover(root, 3, (*DEFAULT_IGNORED_DIRS, "mine-ignored")) == sorted([a, b])
    assert discover(root / "a", 0, DEFAULT_IGNORED_DIRS) == [a]  # the root itself can be a project


def test_lock_replaced_by_rename_is_one_change(tmp_path: Path, calls: Calls, make_watcher) -> None:
    root = tmp_path / "code"
    p = _project(root / "app")
    w = make_watcher([root])
    assert w.start() == [p]
    _uv_lock_write(p, "version = 1\n# relocked\n")
    assert calls.next() == ("change", p)
    assert calls.all == [("change", p)]  # the .tmp file itself never counts


def test_burst_of_writes_is_one_run(tmp_path: Path, calls: Calls, make_watcher) -> None:
    root = tmp_path / "code"
    p = _project(root / "app")
    w = make_watcher([root], debounce=0.5)
    w.start()
    for i in range(3):
        (p / "uv.lock").write_text(f"version = 1\n# write {i}\n")
    assert calls.next() == ("change", p)
    assert w.pending == set()
    # A later, separate change is one more call: the burst left nothing behind to merge with.
    _uv_lock_write(p, "version = 1\n# later\n")
    assert calls.next() == ("change", p)
    assert calls.all == [("change", p), ("change", p)]


def test_new_project_at_depth_two_is_picked_up(tmp_path: Path, calls: Calls, make_watcher) -> None:
    root = tmp_path / "code"
    root.mkdir()
    w = make_watcher([root])
    assert w.start() == []
    project = root / "team" / "app"
    project.mkdir(parents=True)
    (project / "pyproject.toml").write_text("[project]\nname='app'\n")
    assert calls.next() == ("new", project)
    _uv_lock_write(project, "version = 1\n")  # the first `uv lock` of the new project
    assert calls.next() == ("change", project)
    assert project in w.projects
    assert project in w.watched_paths


def test_watches_grow_with_projects_not_folders(tmp_path: Path, make_watcher) -> None:
    root = tmp_path / "code"
    projects = [_project(root / "group" / f"p{i}") for i in range(3)]
    for p in projects:  # a venv of many folders in each project, and junk beside them
        for j in range(60):
            (p / ".venv" / "lib" / "site-packages" / f"pkg{j}" / "sub").mkdir(parents=True)
        (p / "src" / "pkg").mkdir(parents=True)
    for j in range(60):
        (root / "group" / "node_modules" / f"m{j}").mkdir(parents=True)
    w = make_watcher([root])
    assert w.start() == projects
    assert w.watched_paths == {root, root / "group", *projects}
    # doctor counts this very set against the inotify limit
    assert watch_set([root], 3, DEFAULT_IGNORED_DIRS) == WatchSet(tuple(projects), frozenset(w.watched_paths))


def test_inotify_limit_falls_back_to_rescan(tmp_path: Path, calls: Calls, make_watcher) -> None:
    # The kernel limit cannot be lowered for one test: these watches refuse folders past a
    # budget exactly as inotify_add_watch does (OSError ENOSPC).
    class Limited(InotifyWatches):
        budget = 3

        def add(self, folder: Path) -> None:
            if Limited.budget <= 0:
                raise OSError(errno.ENOSPC, "inotify watch limit reached")
            Limited.budget -= 1
            super().add(folder)

    root = tmp_path / "code"
    projects = [_project(root / f"p{i}") for i in range(4)]
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="ERROR")
    try:
        w = make_watcher([root], watches=Limited)
        assert w.start() == projects
    finally:
        logger.remove(sink)
    unwatched = set(projects[2:])  # the root and p0, p1 used the budget
    assert w.fallback_projects == unwatched
    assert len(lines) == 1 and "sysctl fs.inotify.max_user_watches" in lines[0]
    assert inotify_fix() in lines[0]  # the hint doctor gives, word for word
    # A change in an unwatched project is found by the rescan, and only the changed one.
    (projects[3] / "uv.lock").write_text("version = 1\n# changed behind inotify's back\n")
    w.rescan()
    assert calls.all == [("change", projects[3])]


def test_rescan_finds_what_events_missed(tmp_path: Path, calls: Calls, make_watcher) -> None:
    root = tmp_path / "code"
    root.mkdir()
    w = make_watcher([root], max_depth=1)
    w.start()
    w.stop()  # events off: everything below happens unseen
    p = _project(root / "late")
    w.rescan()
    assert calls.all == [("new", p)]
    w.rescan()  # nothing changed since: no calls
    assert calls.all == [("new", p)]


class _CountingDict(dict):
    """A dict that counts walks over all of it (what made discovery grow as N squared)."""

    walks = 0


def _counted(name: str):  # noqa: ANN202
    plain = getattr(dict, name)

    def walk(self: _CountingDict):  # noqa: ANN202
        type(self).walks += 1
        return plain(self)

    return walk


for _name in ("__iter__", "keys", "items", "values"):
    setattr(_CountingDict, _name, _counted(_name))


@pytest.mark.parametrize("count", [10, 200])
def test_finding_a_project_never_walks_every_watched_folder(tmp_path: Path, calls: Calls, make_watcher,
                                                            count: int) -> None:
    root = tmp_path / "code"
    projects = sorted(_project(root / f"g{i % 7}" / f"p{i:03d}") for i in range(count))
    w = make_watcher([root])
    w._watched = _CountingDict()  # the folders watched; a walk over it per project is N squared
    _CountingDict.walks = 0
    found: list[Path] = []
    assert w.start(on_found=found.append) == projects
    assert sorted(found) == projects  # told as found, not only returned at the end
    # A project appearing later, and one deleted, cost their own folders too.
    late = root / "g0" / "late"
    late.mkdir()
    (late / "pyproject.toml").write_text("[project]\nname = 'late'\n")
    assert calls.next() == ("new", late)
    _rmtree(projects[0])
    assert calls.next() == ("gone", projects[0])
    assert _CountingDict.walks == 0
    assert len(w.projects) == count


def _rmtree(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder)


def test_project_deleted_or_moved_away_is_gone(tmp_path: Path, calls: Calls, make_watcher) -> None:
    root = tmp_path / "code"
    a, b = _project(root / "team" / "a"), _project(root / "team" / "b")
    w = make_watcher([root])
    assert w.start() == [a, b]
    _rmtree(a)
    assert calls.next() == ("gone", a)
    os.rename(root / "team", tmp_path / "elsewhere")  # b leaves with the folder above it
    assert calls.next() == ("gone", b)
    assert w.projects == [] and w.watched_paths == {root}
    assert not w.knows(b)


def test_one_inotify_thread_whatever_the_folders(tmp_path: Path, calls: Calls) -> None:
    def threads() -> int:
        return len(os.listdir("/proc/self/task"))

    root = tmp_path / "code"
    for i in range(300):
        _project(root / f"g{i % 10}" / f"p{i:03d}")
    before, before_py = threads(), set(threading.enumerate())
    w = ProjectWatcher([root], max_depth=3, ignore=DEFAULT_IGNORED_DIRS, debounce=0.2, on_change=calls.change,
                       on_new_project=calls.new)
    try:
        assert len(w.start()) == 300
        assert len(w.watched_paths) == 311
        assert threads() - before <= 2  # the watcher's own thread and the inotify reader
        p = root / "g3" / "p003"
        _uv_lock_write(p, "version = 1\n# relocked\n")
        assert calls.next() == ("change", p)
    finally:
        w.stop()
    # Once joined, a thread can still be listed in /proc for a moment while its OS thread unwinds
    # (a loaded machine stretches that moment); Python's own list is exact after the join.
    assert set(threading.enumerate()) - before_py == set()


def test_uv_cache_clean_is_seen(tmp_path: Path, uv_bin: Path) -> None:
    import subprocess

    cache = tmp_path / "uv-cache"
    (cache / "wheels-v5").mkdir(parents=True)
    (cache / "archive-v0").mkdir()
    watch = CacheWatch(cache)
    try:
        (cache / ".tmpXyZ").mkdir()
        (cache / ".tmpXyZ").rmdir()  # uv's own scratch going is no clean
        (cache / "CACHEDIR.TAG").write_text("x")
        subprocess.run([str(uv_bin), "cache", "clean"], env={**os.environ, "UV_CACHE_DIR": str(cache)},
                       check=True, capture_output=True)
        assert watch.cleaned.wait(WAIT)
        watch.cleaned.clear()
        # uv makes its cache again; the next look watches it again, and sees the next clean
        (cache / "wheels-v5").mkdir(parents=True)
        watch.ensure()
        (cache / "wheels-v5").rmdir()
        assert watch.cleaned.wait(WAIT)
    finally:
        watch.close()
