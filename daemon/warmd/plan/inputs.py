"""What of a project reaches uv, refused first when uv would block on it, run it or read it as an option."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from packaging.specifiers import InvalidSpecifier, SpecifierSet

from ..base import InputError, LockError, WarmdError, check, read_text, read_toml
from ..uv import Lock, Project, dig, read_lock
from .choice import _default_groups

_PY_VERSION = re.compile(r"(\d+\.\d+)")  # "3.12" of a .python-version line ("3.12.4", "cpython@3.12")


def pinned_python(folder: Path) -> str | None:
    """The Python version ("3.12") the project's .python-version pins, if it pins one (read as uv reads it).

    Only the version is taken: a path there names the project's own interpreter, which warmd
    never runs. InputError when the file is there but not a regular file warmd can read.
    """
    try:
        text = read_text(folder / ".python-version")
    except FileNotFoundError:
        return None
    except OSError:
        return None  # gone between the check and the read; uv finds what it finds
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            m = _PY_VERSION.search(line)
            if m:
                return m.group(1)
    return None


# A workspace's members are expanded by uv from these globs; reading a member's pyproject.toml that
# is a FIFO would block uv. Matches past this many are not looked at (uv would not get that far either).
_MAX_MEMBERS = 10_000


def check_inputs(folder: Path, lock: Lock, pyproject: Mapping[str, Any]) -> None:
    """Raise InputError naming the first file uv reads for this project that is not a regular file.

    Run before uv is asked anything about the project: uv reads the project's pyproject.toml,
    uv.toml and .python-version, the uv.toml or pyproject.toml of every folder above it, and the
    members of its workspace: its own (those the lock names and those its globs match now), or the
    one declared above it, whose root's .python-version it reads too. A FIFO among them would keep
    uv waiting until its timeout. Only the pyproject.toml files above are read (never blocking).
    """
    for name in ("pyproject.toml", "uv.toml", ".python-version"):
        check(folder / name)
    for above in folder.parents:
        for name in ("uv.toml", "pyproject.toml"):
            check(above / name)
    members = {Path(os.path.normpath(folder / p.local)) for p in lock.packages
               if p.local is not None and p.source in ("editable", "virtual", "directory")}
    members |= _members(folder, pyproject)
    root = _workspace_above(folder)
    if root is not None:
        where, table = root
        members |= _members(where, table)
        for between in (folder, *folder.parents):
            check(between / ".python-version")
            if between == where:
                break
    for member in sorted(members):
        if member != folder:
            for name in ("pyproject.toml", "uv.toml"):
                check(member / name)


def _members(root: Path, pyproject: Mapping[str, Any]) -> set[Path]:
    """The folders the `[tool.uv.workspace] members` globs of `root`'s pyproject.toml match now."""
    found: set[Path] = set()
    globs = dig(pyproject, "tool", "uv", "workspace", "members")
    for pattern in globs if isinstance(globs, list) else []:
        if not isinstance(pattern, str) or not pattern or os.path.isabs(pattern):
            continue
        try:
            for i, match in enumerate(root.glob(pattern)):
                if i >= _MAX_MEMBERS:
                    break
                found.add(match)
        except (OSError, ValueError, NotImplementedError):
            continue  # a pattern Python's glob cannot follow: uv says what it makes of it
    return found


def _workspace_above(folder: Path) -> tuple[Path, dict[str, Any]] | None:
    """The workspace root above `folder` and its pyproject.toml, found as uv finds it: the nearest
    pyproject.toml above with a `[tool.uv.workspace]`; one with a `[project]` and none ends the search."""
    for above in folder.parents:
        try:
            data = read_toml(above / "pyproject.toml")
        except InputError:
            return None  # uv stops there too, saying what is wrong with it
        if data is None:
            continue
        if dig(data, "tool", "uv", "workspace") is not None:
            return above, data
        if "project" in data:
            return None
    return None


def requires_python(lock: Lock) -> SpecifierSet | None:
    """The lock's `requires-python` as a specifier set (None when it gives none); LockError when it is not one.

    Only this parsed form reaches uv: given a path as an interpreter request, uv runs that file.
    Arbitrary equality (`===`) compares any string, a path included, so it is refused too.
    """
    raw = lock.requires_python
    if not raw:
        return None
    try:
        spec = SpecifierSet(raw)
    except InvalidSpecifier:
        raise LockError(f"{lock.path}: requires-python {raw!r} is not a valid specifier") from None
    if any(s.operator == "===" for s in spec):
        raise LockError(f"{lock.path}: requires-python {raw!r} uses `===`, which warmd does not read")
    return spec


# A package, extra or group name as PEP 508 and uv spell them: what a lock or pyproject.toml may hand
# to a uv option (`--extra`, `--no-install-package`, `--upgrade-package`); anything else could be
# read by uv as another option.
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")


def check_names(lock: Lock, pyproject: Mapping[str, Any]) -> None:
    """LockError naming the first package, extra or group name of the lock (or default group of the
    project) that is not a valid name; uv writes none such, and each may become a uv argument."""
    names = [("package", p.name) for p in lock.packages]
    names += [(kind, name) for group in lock.conflicts for item in group
              for kind, name in (("extra", item.extra), ("group", item.group)) if name is not None]
    for kind, name in names:
        if not _NAME.fullmatch(name):
            raise LockError(f"{lock.path}: {kind} name {name!r} is not a valid name")
    for group in _default_groups(pyproject):
        if not _NAME.fullmatch(group):
            raise InputError(f"{lock.path.parent / 'pyproject.toml'}: default group {group!r} is not a valid name")


def interpreter_requests(project: Project, pythons: Sequence[str] = ()) -> list[str | None]:
    """The interpreters plan_project asks uv for first (`pythons`: the config's), from the same
    parsed inputs; none when the project's files cannot be read (its plan then says why).

    `warmd prefetch` has uv look them up (Uv.interpreter_soon) while it imports the rest of warmd.
    """
    try:
        lock = read_lock(project.lock)
        spec = requires_python(lock)
        own = pinned_python(project.folder)
    except (WarmdError, OSError):
        return []
    if own is None:  # the interpreter uv finds for the lock's requires-python, whose version is then the project's
        return [str(spec) if spec else None]
    return list(allowed_pythons([own, *pythons], spec))


def allowed_pythons(pythons: Sequence[str], spec: SpecifierSet | None) -> list[str]:
    """Keep the Python versions the lock's requires-python (`spec`) admits, in order, without repeats."""
    out: list[str] = []
    for py in pythons:
        if py in out:
            continue
        if spec is None or spec.contains(f"{py}.0", prereleases=True) or spec.contains(f"{py}.99", prereleases=True):
            out.append(py)
    return out
