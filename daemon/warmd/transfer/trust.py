"""The projects the user trusted with `warmd trust PATH`, and what each one's lock named then.

Kept in `trust.json` in the state dir, not in the SQLite state: a dry run reads it without
writing a byte (an SQLite reader makes its -wal and -shm files), and a running daemon notices a
change by its stamp, once a second, without a query. Writers take `trust.lock` and replace the
file atomically.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loguru import logger

from ..base import InputError, origin, write_atomic
from ..uv import Lock
from .vouches import Trust, key

TRUST_FILE = "trust.json"


@dataclass(frozen=True)
class Trusted:
    """One project the user trusted: when, and the origins its uv.lock named then."""

    path: Path
    trusted_at: float
    origins: tuple[str, ...]

    def as_trust(self) -> Trust:
        """What the guard holds of it."""
        return Trust(self.path, frozenset(self.origins))


def lock_origins(lock: Lock) -> list[str]:
    """Every origin (scheme://host:port) a lock names: its sources, sdists and wheels."""
    return sorted({o for pkg in lock.packages for u in pkg.urls if (o := origin(u)) is not None})


class TrustStore:
    """`trust.json` in a state dir."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / TRUST_FILE
        self._lock_path = state_dir / "trust.lock"

    def stamp(self) -> tuple[int, int, int] | None:
        """What the file is now (inode, mtime, size), to tell a change; None when there is none."""
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def read(self) -> list[Trusted]:
        """Every trusted project; InputError when the file cannot be read or is not warmd's."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise InputError(f"{self.path}: cannot read the trusted projects ({exc}); remove it and "
                             "`warmd trust` them again") from None
        projects = data.get("projects") if isinstance(data, dict) else None
        if not isinstance(projects, dict):
            raise InputError(f"{self.path}: not warmd's list of trusted projects; remove it and `warmd trust` "
                             "them again")
        out = []
        for path, row in sorted(projects.items()):
            row = row if isinstance(row, dict) else {}
            origins = row.get("origins")
            at = row.get("trusted_at")
            out.append(Trusted(Path(path), float(at) if isinstance(at, (int, float)) else 0.0,
                               tuple(o for o in origins if isinstance(o, str)) if isinstance(origins, list) else ()))
        return out

    def add(self, project: Path, origins: Iterable[str]) -> Trusted:
        """Trust `project` with these origins (replacing what an earlier `warmd trust` recorded)."""
        row = Trusted(project, time.time(), tuple(sorted(set(origins))))

        def put(projects: dict[str, Any]) -> bool:
            for same in _same(projects, project):  # the folder by another path (a symlink)
                del projects[same]
            projects[str(project)] = {"trusted_at": row.trusted_at, "origins": list(row.origins)}
            return True

        self._edit(put)
        return row

    def remove(self, project: Path) -> bool:
        """Trust `project` no more (by whichever path it was trusted); False when it was not trusted."""

        def drop(projects: dict[str, Any]) -> bool:
            same = _same(projects, project)
            for path in same:
                del projects[path]
            return bool(same)

        return self._edit(drop)

    def _edit(self, change: Callable[[dict[str, Any]], bool]) -> bool:
        with self._locked():
            projects = {str(t.path): {"trusted_at": t.trusted_at, "origins": list(t.origins)} for t in self.read()}
            changed = change(projects)
            if changed:
                text = json.dumps({"version": 1, "projects": projects}, indent=2, sort_keys=True) + "\n"
                write_atomic(self.path, text, mode=0o600)
            return changed

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _same(projects: dict[str, Any], project: Path) -> list[str]:
    """The recorded paths that are `project`'s folder (symlinks resolved)."""
    real = key(project)
    return [p for p in projects if key(Path(p)) == real]


def recorded(state_dir: Path) -> list[Trust]:
    """The trust `warmd trust` recorded in `state_dir`, for the guard; none when the file is unusable
    (the guard then refuses what only that trust would allow: it fails closed)."""
    try:
        return [t.as_trust() for t in TrustStore(state_dir).read()]
    except InputError as exc:
        logger.error("{}", exc)
        return []
