"""The would-be lock of an upgrade: what `uv lock --upgrade-package P` would write for a project,
computed by the user's uv in a scratch copy. The project itself is only read.

What `uv lock` reads, and so what is copied, each at its place relative to the others (a path
dependency `../lib` is beside the copy as it is beside the project):
- the project's pyproject.toml, uv.lock, uv.toml and .python-version;
- every local package the lock names (workspace members, path and editable dependencies: their
  `source` in uv.lock): its pyproject.toml, uv.toml and .python-version when uv reads its metadata
  statically, the whole folder (but .venv, .git and the like) when uv must build it for that
  (`dynamic` fields, no `[project]`); a local archive (`source = { path = "x.whl" }`) is linked;
- the nearest uv.toml (or pyproject.toml with `[tool.uv]`) above the project, which uv reads as
  project configuration. User and system uv.toml files and UV_* variables uv finds by itself.
A path dependency given by an absolute path stays where it is; uv reads it there, as it would.

The copy also gets uv's per-index `cache-control` files override for the indexes of the packages
looked ahead for (in its pyproject.toml and uv.toml files; an index only the user's own uv.toml
declares keeps uv's default, and its metadata is fetched again by the user's lock), so that the wheel metadata uv reads while locking (Range requests to a no-store
index) stays in the user's uv cache: the user's own `uv lock --upgrade-package` later reads it
from there and sends no wheel request at all. It changes what uv keeps, never what it resolves.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, Sequence

from loguru import logger

from .errors import WarmdError
from .lockfile import Lock
from .plan import matches
from .uvcache import Uv
from .uvconfig import add_cache_control, dig, read_toml, settings_urls

# A local package uv must build to lock (dynamic metadata) is copied whole, up to this size.
COPY_LIMIT = 256 * 2**20
_READS = ("pyproject.toml", "uv.toml", ".python-version")  # what uv reads of a package it need not build
_NEVER = (".git", ".hg", ".svn", ".jj")  # version control: never copied (a build could write into it)


def would_be_lock(uv: Uv, folder: Path, lock: Lock, packages: Sequence[str], dest: Path, *,
                  ignore: Sequence[str] = (), pass_fds: Sequence[int] = ()) -> Path | None:
    """Copy the project into `dest` and have uv lock it with `--upgrade-package` for the lock's packages
    matching `packages`; the copy's folder, holding the would-be uv.lock, or None when none matches.

    Raises IndexUnreachable when an index is down or slow, UvError when uv refuses, WarmdError when
    the project cannot be copied.
    """
    names = sorted({p.name for p in lock.packages if not p.is_root and p.local is None and matches(p.name, packages)})
    if not names:
        return None
    try:
        copy = copy_for_lock(folder, lock, dest, ignore=ignore)
    except OSError as exc:  # a full TMPDIR, a file that vanished mid-copy: the project itself is fine
        raise WarmdError(f"{folder}: cannot copy what `uv lock` reads into {dest}: "
                         f"{exc.strerror or exc}{f' ({exc.filename})' if exc.filename else ''}") from None
    registries = {p.registry for p in lock.packages if p.registry and p.name in names}
    for config in _uv_configs(dest):
        try:
            add_cache_control(config, sorted(registries))
        except ValueError as exc:  # tomlkit refuses a file uv reads: the lock comes out the same, uv keeps less
            logger.debug("{}: no cache-control override in the look-ahead's copy: {}", config, exc)
    uv.lock_upgrade(copy, names, pass_fds=pass_fds)
    return copy


def copy_for_lock(folder: Path, lock: Lock, dest: Path, *, ignore: Sequence[str] = ()) -> Path:
    """Copy what `uv lock` in `folder` reads into `dest`, keeping relative places; returns the copy of `folder`."""
    folder = Path(os.path.abspath(folder))
    packages: set[Path] = {folder}
    archives: set[Path] = set()
    for pkg in lock.packages:
        if pkg.local is None or os.path.isabs(pkg.local):
            continue  # an absolute path is read where it is, by the copy as by the project
        where = Path(os.path.normpath(folder / pkg.local))
        (archives if pkg.source == "path" else packages).add(where)
    config = _config_above(folder)
    anchor = Path(os.path.commonpath([str(p) for p in (*packages, *archives, *([config.parent] if config else []))]))

    def mirror(path: Path) -> Path:
        # Named after the common folder, so the copy of `folder` ends in the project's own name.
        return dest / (anchor.name or "root") / path.relative_to(anchor)

    skip = set(ignore) | set(_NEVER)
    for pkg_folder in sorted(packages):
        _copy_package(pkg_folder, mirror(pkg_folder), skip)
    for archive in sorted(archives):
        mirror(archive).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(archive, mirror(archive))  # uv only reads a local wheel or sdist
    if config is not None:
        mirror(config).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(config, mirror(config))
    copy = mirror(folder)
    shutil.copy2(folder / "uv.lock", copy / "uv.lock")
    return copy


def contacts(folder: Path, lock: Lock) -> list[tuple[str, str, str | None]]:
    """What `uv lock` in `folder` may connect to: (URL, the file naming it, the registry it belongs
    to). Every URL of the lock; the indexes, find-links and url/git sources of the project's, its
    local packages' and the configuration above's pyproject.toml and uv.toml. The user's own uv
    configuration is not listed: the guard vouches for it."""
    folder = Path(os.path.abspath(folder))
    out: list[tuple[str, str, str | None]] = [(u, str(lock.path), p.registry) for p in lock.packages for u in p.urls]
    places = [folder] + [Path(os.path.normpath(folder / p.local)) for p in lock.packages
                         if p.local is not None and p.source != "path"]
    files = [f for d in dict.fromkeys(places) for f in (d / "pyproject.toml", d / "uv.toml")]
    above = _config_above(folder)
    if above is not None:
        files.append(above)
    for f in files:
        data = read_toml(f)
        settings = data if f.name == "uv.toml" else dig(data, "tool", "uv")
        out += [(u, str(f), None) for u in settings_urls(settings) if "://" in u]
    return out


def _uv_configs(dest: Path) -> list[Path]:
    """The pyproject.toml and uv.toml files of a copy, where uv finds the indexes it locks against."""
    found = []
    for where, dirs, files in os.walk(dest):  # never into a symlinked folder: that is not the copy's
        found += [Path(where) / f for f in sorted(files) if f in ("pyproject.toml", "uv.toml")]
    return found


def needs_build(pyproject: dict[str, Any] | None) -> bool:
    """True when uv must build a local package to know its metadata (it cannot read it from pyproject.toml)."""
    project = dig(pyproject, "project")
    return not isinstance(project, dict) or bool(project.get("dynamic"))


def _copy_package(src: Path, dst: Path, skip: set[str]) -> None:
    if not src.is_dir():
        return  # uv says what is missing, as it would in the project
    dst.mkdir(parents=True, exist_ok=True)
    if not needs_build(read_toml(src / "pyproject.toml")):
        for name in _READS:
            if (src / name).is_file():
                shutil.copy2(src / name, dst / name)
        return
    size = 0
    for where, dirs, files in os.walk(src):
        dirs[:] = [d for d in dirs if d not in skip]
        for name in files:
            try:
                size += os.lstat(os.path.join(where, name)).st_size
            except OSError:
                continue
        if size > COPY_LIMIT:
            raise WarmdError(f"{src}: uv must build it to lock it (its metadata is dynamic), and it holds more "
                             f"than {COPY_LIMIT // 2**20} MiB besides {', '.join(sorted(skip))}: too much to copy "
                             "for a look-ahead")
    shutil.copytree(src, dst, symlinks=True, ignore=_skipping(skip), dirs_exist_ok=True)


def _skipping(skip: set[str]) -> Callable[[str, list[str]], set[str]]:
    """copytree's ignore: the names in `skip`, and whatever is not a file, folder or symlink.

    A FIFO would block the copy on its open, a socket fail it; no build reads either.
    """
    def ignore(where: str, names: list[str]) -> set[str]:
        out = set(names) & skip
        for name in set(names) - out:
            try:
                mode = os.lstat(os.path.join(where, name)).st_mode
            except OSError:
                continue  # gone meanwhile: copytree says so if it matters
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
                out.add(name)
        return out

    return ignore


def _config_above(folder: Path) -> Path | None:
    """The project configuration uv reads from a folder above `folder` (the nearest uv.toml, or
    pyproject.toml with `[tool.uv]`), when `folder` has none of its own."""
    for where in (folder, *folder.parents):
        if (where / "uv.toml").is_file():
            found = where / "uv.toml"
        elif dig(read_toml(where / "pyproject.toml"), "tool", "uv") is not None:
            found = where / "pyproject.toml"
        else:
            continue
        return None if where == folder else found
    return None
