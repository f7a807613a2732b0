"""A uv project as warmd knows it: its folder and the files there warmd reads, named in one place."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..base import FileStamp, InputError
from .lockfile import file_stamp

LOCK = "uv.lock"
PYPROJECT = "pyproject.toml"


@dataclass(frozen=True)
class Project:
    """One project: its folder, the uv.lock and pyproject.toml there, and its lock's stamp once read.

    Two values of one folder are equal (and hash alike) whatever their stamps: a Project names the
    project, not one version of its lock. Nothing here opens a file but `stamped` and `lock_stamp`,
    and those read the lock as an untrusted file (a regular file only, bounded, never a blocking open).
    """

    folder: Path  # absolute
    stamp: FileStamp | None = field(default=None, compare=False)  # of the uv.lock, as it was read

    @property
    def lock(self) -> Path:
        """Its uv.lock (which may not be there, or not be a regular file)."""
        return self.folder / LOCK

    @property
    def pyproject(self) -> Path:
        """Its pyproject.toml (which may not be there, or not be a regular file)."""
        return self.folder / PYPROJECT

    @classmethod
    def of(cls, path: Path) -> Project:
        """The project a path a user or the watcher gives names: the folder itself, or the one holding
        the uv.lock, pyproject.toml or other file given. Only stats the path; `at` checks the folder too."""
        path = path.expanduser().absolute()
        # is_file stats (never opens): a FIFO named uv.lock is the lock of its folder, not a blocked read
        return cls(path.parent if path.name in (LOCK, PYPROJECT) or path.is_file() else path)

    @classmethod
    def at(cls, path: Path) -> Project:
        """`of(path)`, checked: InputError when the folder it names does not exist."""
        return cls.of(path).checked()

    def checked(self) -> Project:
        """This project; InputError when its folder does not exist (what a path that is neither a
        project folder nor a file in one gets, exit code 2)."""
        if not self.folder.is_dir():
            raise InputError(f"{self.folder}: no such project folder")
        return self

    def lock_stamp(self) -> FileStamp:
        """The stamp of its uv.lock now (sha256 None when there is none or it is not a readable file)."""
        return file_stamp(self.lock)

    def stamped(self) -> Project:
        """This project with the stamp of its uv.lock now."""
        return dataclasses.replace(self, stamp=self.lock_stamp())

    def has_lock(self) -> bool:
        """True when its uv.lock is a file (a symlink followed); only stats it."""
        return self.lock.is_file()

    def names_lock(self) -> bool:
        """True when any entry is named uv.lock there: a FIFO, a device or a dangling symlink too
        (warmd reports what is wrong with such a lock rather than waiting on it in silence)."""
        return os.path.lexists(self.lock)
