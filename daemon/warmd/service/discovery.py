"""What a project is and where the projects under a root are: the one walk the watcher, doctor and the bench share."""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..uv import LOCK, PYPROJECT


class _Ignore:
    """Folder names never walked into: hidden ones and the configured names or globs."""

    def __init__(self, patterns: Iterable[str]) -> None:
        pats = list(patterns)
        self.exact = frozenset(p for p in pats if not any(c in p for c in "*?["))
        self.globs = tuple(p for p in pats if p not in self.exact)

    def __call__(self, name: str) -> bool:
        return name.startswith(".") or name in self.exact or any(fnmatch.fnmatchcase(name, g) for g in self.globs)


def _scan(folder: Path) -> tuple[bool, list[str]] | None:
    """(is it a project, names of its subfolders), or None when it cannot be read."""
    is_project = False
    subdirs = []
    try:
        with os.scandir(folder) as it:
            for entry in it:
                if entry.name in (LOCK, PYPROJECT):
                    is_project = True
                # follow_symlinks=False: a link never leads the walk outside the root or in circles.
                elif entry.is_dir(follow_symlinks=False):
                    subdirs.append(entry.name)
    except OSError:
        return None
    return is_project, subdirs


def _walk(root: Path, max_depth: int, ignore: _Ignore) -> tuple[list[Path], list[tuple[Path, int]]]:
    """(project folders, (non-project folder, depth) within the depth limit) under `root`."""
    projects: list[Path] = []
    skeleton: list[tuple[Path, int]] = []
    stack = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        found = _scan(folder)
        if found is None:
            continue
        is_project, subdirs = found
        if is_project:
            projects.append(folder)  # a project's own subfolders are its business, not ours
            continue
        skeleton.append((folder, depth))
        if depth < max_depth:
            stack.extend((folder / name, depth + 1) for name in sorted(subdirs, reverse=True) if not ignore(name))
    projects.sort()
    return projects, skeleton


def discover(root: Path, max_depth: int, ignore: Iterable[str]) -> list[Path]:
    """Project folders (holding uv.lock or pyproject.toml) under `root`, at most `max_depth` below it."""
    return _walk(root, max_depth, _Ignore(ignore))[0]


@dataclass(frozen=True)
class WatchSet:
    """The projects under some roots and the folders the watcher puts a watch on for them."""

    projects: tuple[Path, ...]
    folders: frozenset[Path]  # each project, and every folder above one within max-depth: new projects appear there


def watch_set(roots: Iterable[Path], max_depth: int, ignore: Iterable[str]) -> WatchSet:
    """What ProjectWatcher watches for these roots (and what `doctor` counts against the inotify limit)."""
    projects: list[Path] = []
    folders: set[Path] = set()
    skip = _Ignore(ignore)
    for root in roots:
        found, skeleton = _walk(Path(os.path.abspath(root)), max_depth, skip)
        projects += found
        folders.update(found)
        folders.update(f for f, _depth in skeleton)
    return WatchSet(tuple(projects), frozenset(folders))
