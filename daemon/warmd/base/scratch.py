"""warmd's scratch folders in TMPDIR (or in memory), and the sweep of those a killed warmd left behind.

Each folder is named `warmd-<what>-<owner>-<random>` and holds an flock on itself while in use.
The uv child a folder is made for inherits that lock, so a uv still running after its warmd was
killed keeps its folder too. A sweep removes a folder only when its owner is gone *and* nobody
holds its lock: never one of another running warmd, never one a uv is still writing into.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from loguru import logger

from .owner import Owner

PREFIX = "warmd-"


@dataclass(frozen=True)
class Scratch:
    """A scratch folder and the descriptor holding its lock (pass it to the child that uses it)."""

    path: Path
    fd: int


def memory_dir() -> Path | None:
    """A memory-backed folder this user may write in ($XDG_RUNTIME_DIR, else /dev/shm), if there is one."""
    for candidate in (os.environ.get("XDG_RUNTIME_DIR"), "/dev/shm"):
        if candidate and os.path.isdir(candidate) and os.access(candidate, os.W_OK | os.X_OK):
            return Path(candidate)
    return None


def bases() -> list[Path]:
    """Every folder scratch folders are made in: TMPDIR, and the memory-backed one."""
    found = [Path(tempfile.gettempdir()), memory_dir()]
    return list(dict.fromkeys(p for p in found if p is not None))


@contextmanager
def folder(what: str, *, memory: bool = False, detach: bool = False) -> Iterator[Scratch]:
    """A fresh scratch folder `warmd-<what>-…` in TMPDIR (`memory`: in memory_dir() when there is
    one), locked while the block runs, then removed.

    `detach`: removed by a thread of its own, still locked until it is gone, so the caller goes on
    at once (an import's ~13,000 symlinks take ~0.04 s to remove); the process waits for that
    thread before it exits, and a folder a kill left half removed is the sweep's.
    """
    where = memory_dir() if memory else None
    path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{what}-{Owner.me().tag}-", dir=where))
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def remove() -> None:
        try:
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)

    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield Scratch(path, fd)
    finally:
        if detach:
            # daemon=False said outright: a thread inherits the flag, and the importer's are daemons
            threading.Thread(target=remove, name="warmd-scratch-rm", daemon=False).start()
        else:
            remove()


def sweep(where: Path | None = None) -> list[Path]:
    """Remove the scratch folders in `where` (None: every one of bases()) whose warmd is gone and
    that nobody holds."""
    if where is None:
        return [p for base in bases() for p in sweep(base)]
    base = Path(where)
    removed = []
    try:
        entries = list(base.iterdir())
    except OSError:
        return []
    for path in entries:
        owner = _owner(path.name)
        if owner is None or owner.alive() or path.is_symlink() or not path.is_dir():
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # a uv child of that warmd still works in it
        try:
            shutil.rmtree(path)
            removed.append(path)
        except OSError as exc:
            logger.debug("could not remove {}: {}", path, exc)
        finally:
            os.close(fd)
    if removed:
        logger.info("removed {} scratch folder(s) a stopped warmd left in {}", len(removed), base)
    return removed


def _owner(name: str) -> Owner | None:
    """The owner a scratch folder's name records (`warmd-<what>-<pid>.<start>-<random>`), if it is one."""
    if not name.startswith(PREFIX):
        return None
    parts = name[len(PREFIX):].split("-")
    return Owner.from_tag(parts[1]) if len(parts) >= 3 else None
