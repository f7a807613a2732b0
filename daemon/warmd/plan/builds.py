"""What `uv sync` builds from the project's own folders, and whether that build needs the network.

A project (or workspace member, or path dependency) that is a package is built by uv at every fresh
sync, with the build backend its `[build-system]` names. uv fetches that backend from the index,
unless it is `uv_build` in a range that takes the running uv (uv then builds it itself). warmd runs
no build, so such a project is named with the reason an offline sync of it would still need the
network, and the flag that leaves it out. Warming the backend's `requires` would not be enough: a
backend asks for more through its own hook, which is code (hatchling asks for `editables` before an
editable build; with hatchling in uv's cache, `uv sync --offline` still failed on it, uv 0.13.9 and
0.8.2).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import Version

from ..base import InputError, Skipped, read_toml
from ..uv import Lock, LockedPackage
from .export import _Line

_BUILT = ("editable", "directory")  # sources uv builds; `virtual` is only its dependencies
# What uv assumes for a package without a [build-system] table (PEP 517's legacy fallback).
_LEGACY: tuple[tuple[str, ...], str] = (("setuptools>=40.8.0",), "setuptools.build_meta:__legacy__")


def local_builds(folder: Path, lock: Lock, lines: Sequence[_Line], env: Mapping[str, str],
                 uv_version: Version | None) -> list[tuple[LockedPackage, str]]:
    """The local packages this sync builds with a backend from the network, each with why and how to avoid it."""
    wanted = {os.path.normpath(folder / ln.path) for ln in lines if ln.path and ln.applies(env)}
    out = []
    for pkg in lock.packages:
        if pkg.source not in _BUILT or pkg.local is None:
            continue
        where = os.path.normpath(folder / pkg.local)
        is_project = where == os.path.normpath(folder)
        if not is_project and where not in wanted:
            continue
        requires, backend = _build_system(Path(where))
        if _uv_builds_itself(requires, backend, uv_version):
            continue
        flag = "--no-install-project" if is_project else "--no-install-local"
        out.append((pkg, f"built from its folder by uv at sync with {backend} ({', '.join(requires) or 'no requires'}), "
                         f"which uv fetches from the index: warmd never builds, so an offline `uv sync` needs the "
                         f"network for it unless uv's cache already has it (`uv sync {flag}` does not build it)"))
    return out


def build_skips(builds: Sequence[tuple[LockedPackage, str]], python: str) -> list[Skipped]:
    """The plan's `skipped` entries for those builds, for one Python."""
    return [Skipped(pkg.name, pkg.version, python, why) for pkg, why in builds]


def _build_system(folder: Path) -> tuple[tuple[str, ...], str]:
    try:
        table: Any = (read_toml(folder / "pyproject.toml") or {}).get("build-system")
    except InputError:
        table = None  # check_inputs named a bad member file already; uv would stop on it too
    if not isinstance(table, dict):
        return _LEGACY
    requires = table.get("requires", [])
    backend = table.get("build-backend", _LEGACY[1])
    if not isinstance(requires, list) or not isinstance(backend, str):
        return _LEGACY
    return tuple(r for r in requires if isinstance(r, str)), backend


def _uv_builds_itself(requires: Sequence[str], backend: str, uv_version: Version | None) -> bool:
    """True for `uv_build` in a range that holds this uv: uv builds it with its own code, offline."""
    if backend != "uv_build" or len(requires) != 1 or uv_version is None:
        return False
    try:
        req = Requirement(requires[0])
    except InvalidRequirement:
        return False
    return req.name.replace("-", "_") == "uv_build" and not req.extras and req.marker is None \
        and req.specifier.contains(uv_version, prereleases=True)
