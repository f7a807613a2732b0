"""A Project made from each kind of path a user or the watcher gives: a folder, a uv.lock, a path
that is not there, and a lock that is a FIFO (named, never opened for a blocking read)."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from warmd.base import InputError, LockError
from warmd.uv import LOCK, PYPROJECT, Project, read_lock

LOCK_TEXT = 'version = 1\nrevision = 3\nrequires-python = ">=3.11"\n'


def _project(tmp_path: Path) -> Path:
    folder = tmp_path / "app"
    folder.mkdir()
    (folder / PYPROJECT).write_text('[project]\nname = "app"\nversion = "0.1.0"\n')
    (folder / LOCK).write_text(LOCK_TEXT)
    return folder


def test_a_folder_a_lock_or_a_pyproject_name_the_same_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _project(tmp_path)
    monkeypatch.chdir(tmp_path)
    made = [Project.at(p) for p in (folder, folder / LOCK, folder / PYPROJECT, Path("app"), Path("app") / LOCK)]
    assert {p.folder for p in made} == {folder}
    assert all(p.lock == folder / LOCK and p.pyproject == folder / PYPROJECT for p in made)
    assert all(p.stamp is None for p in made)  # nothing read yet


def test_the_stamp_is_of_the_lock_as_read_and_does_not_change_which_project_it_is(tmp_path: Path) -> None:
    folder = _project(tmp_path)
    project = Project.at(folder)
    stamped = project.stamped()
    assert stamped.stamp is not None and stamped.stamp.sha256 == hashlib.sha256(LOCK_TEXT.encode()).hexdigest()
    assert stamped.stamp == read_lock(project.lock).stamp
    assert stamped == project and hash(stamped) == hash(project) and {stamped: 1}[project] == 1
    (folder / LOCK).write_text(LOCK_TEXT + "\n")
    assert project.lock_stamp() != stamped.stamp  # the lock now is another file than the one read
    assert project.has_lock() and project.names_lock()


def test_a_path_that_is_not_there_is_no_project(tmp_path: Path) -> None:
    gone = tmp_path / "nowhere"
    with pytest.raises(InputError) as err:
        Project.at(gone)
    assert str(err.value) == f"{gone}: no such project folder"
    with pytest.raises(InputError, match="no such project folder"):
        Project.at(gone / LOCK)  # a uv.lock of a folder that is not there either
    assert Project.of(gone).folder == gone  # named without a check (a report, `untrust` of a folder gone)
    empty = tmp_path / "empty"
    empty.mkdir()
    project = Project.at(empty)  # a folder without uv.lock yet: the watcher's new project
    assert not project.has_lock() and not project.names_lock()
    assert project.stamped().stamp is not None and project.stamped().stamp.sha256 is None


def test_a_fifo_lock_is_named_and_stamped_without_a_blocking_open(tmp_path: Path) -> None:
    folder = tmp_path / "app"
    folder.mkdir()
    os.mkfifo(folder / LOCK)  # no writer: an open for reading would wait for good
    found: dict[str, object] = {}

    def make() -> None:
        project = Project.at(folder / LOCK)
        found["project"], found["stamped"] = project, project.stamped()
        try:
            read_lock(project.lock)
        except LockError as exc:
            found["error"] = str(exc)

    t = threading.Thread(target=make, daemon=True)
    t.start()
    t.join(timeout=30)
    assert not t.is_alive(), "making or stamping the Project opened the FIFO and blocked"
    project = found["project"]
    assert isinstance(project, Project) and project.folder == folder
    assert found["stamped"].stamp.sha256 is None  # type: ignore[attr-defined]
    assert not project.has_lock() and project.names_lock()  # reported, not passed over as "no lock yet"
    assert str(folder / LOCK) in str(found["error"])
