"""Project discovery and the real watchdog observers on temporary folders."""

from __future__ import annotations

import errno
import os
import queue
from collections.abc import Iterator
from pathlib import Path

import pytest
from loguru import logger
from watchdog.observers import Observer

from warmd.base import DEFAULT_IGNORED_DIRS
from warmd.service import ProjectWatcher, WatchSet, discover, inotify_fix, watch_set

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

    def next(self) -> tuple[str, Path]:
        return self.q.get(timeout=WAIT)


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
def make_watcher(calls: Calls) -> Iterator:
    made: list[ProjectWatcher] = []

    def make(roots: list[Path], **kw: object) -> ProjectWatcher:
        opts: dict = {"max_depth": 3, "ignore": DEFAULT_IGNORED_DIRS, "debounce": 0.2}
        opts.update(kw)
        w = ProjectWatcher(roots, on_change=calls.change, on_new_project=calls.new, **opts)
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
    # The kernel limit cannot be lowered for one test: this observer refuses watches past a
    # budget exactly as inotify_add_watch does (OSError ENOSPC from schedule()).
    class LimitedObserver(Observer):  # type: ignore[misc, valid-type]
        budget = 3

        def schedule(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
            if LimitedObserver.budget <= 0:
                raise OSError(errno.ENOSPC, "inotify watch limit reached")
            LimitedObserver.budget -= 1
            return super().schedule(*args, **kwargs)

    root = tmp_path / "code"
    projects = [_project(root / f"p{i}") for i in range(4)]
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="ERROR")
    try:
        w = make_watcher([root], observer_factory=LimitedObserver)
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
