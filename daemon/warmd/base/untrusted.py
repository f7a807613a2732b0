"""Reading a project's own files (everything under the roots is untrusted): regular files only, of a
bounded size, and never a call that can block.

A `uv.lock` that is a FIFO would block an `open()` until someone writes to it, a character device
(`/dev/zero`) never ends, a symlink loop or an unreadable file fails: each is one error naming the
file, raised before anything (warmd or uv) opens it for reading.
"""

from __future__ import annotations

import errno
import os
import stat
import tomllib
from pathlib import Path
from typing import Any

from .errors import InputError

# pyproject.toml, uv.toml, .python-version: a real one is a few KiB; the largest seen are ~100 KiB.
MAX_TEXT_BYTES = 4 * 2**20

_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a folder"),
)


def _kind(mode: int) -> str:
    return next((what for test, what in _KINDS if test(mode)), "not a regular file")


def _refuse(path: Path, exc: OSError, error: type[InputError]) -> InputError:
    if exc.errno == errno.ELOOP:
        return error(f"{path}: a symlink loop (too many levels of symbolic links); warmd reads only regular files "
                     "in a project")
    return error(f"{path}: cannot read: {exc.strerror or exc}")


def check(path: Path, *, error: type[InputError] = InputError) -> bool:
    """True when `path` is a regular file (symlinks followed), False when there is none; `error` naming it
    when it is anything else (a FIFO, socket, device, folder, symlink loop) or cannot be looked at.

    Only stats the path: nothing is opened.
    """
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False  # none there (a dangling symlink is as good as none)
    except OSError as exc:
        raise _refuse(path, exc, error) from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path}: {_kind(st.st_mode)}, not a regular file; warmd reads only regular files in a project")
    return True


def read_bytes(path: Path, limit: int = MAX_TEXT_BYTES, *,
               error: type[InputError] = InputError) -> tuple[bytes, os.stat_result]:
    """The bytes of the regular file at `path` and its stat, from one open (a rename onto it cannot mix two).

    FileNotFoundError when there is none; `error` naming the file when it is not a regular file, is
    `limit` bytes or more, or cannot be read. Never blocks: the open is non-blocking and what it
    opened is checked again before a byte is read.
    """
    if not check(path, error=error):
        raise FileNotFoundError(errno.ENOENT, "No such file", str(path))
    try:
        # O_NONBLOCK: were it swapped for a FIFO since the check, the open still returns at once.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise _refuse(path, exc, error) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{path}: {_kind(st.st_mode)}, not a regular file; warmd reads only regular files in a project")
        if st.st_size >= limit:
            raise error(f"{path}: {st.st_size} bytes is too large for a {path.name}")
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = os.read(fd, min(1 << 20, limit - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size >= limit:  # it grew since the fstat
                raise error(f"{path}: {size} bytes or more is too large for a {path.name}")
        return b"".join(chunks), st
    except OSError as exc:
        raise _refuse(path, exc, error) from None
    finally:
        os.close(fd)


def read_text(path: Path, limit: int = MAX_TEXT_BYTES, *, error: type[InputError] = InputError) -> str:
    """The UTF-8 text of the regular file at `path` (read_bytes' rules; `error` when it is not UTF-8)."""
    data, _st = read_bytes(path, limit, error=error)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: cannot read: not UTF-8 ({exc.reason} at byte {exc.start})") from None


def read_toml(path: Path, *, error: type[InputError] = InputError) -> dict[str, Any] | None:
    """The table of the TOML file at `path` (read_text's rules), or None when there is none; `error`
    naming the file when it is not a regular file, cannot be read, or is not valid TOML."""
    try:
        text = read_text(path, error=error)
    except FileNotFoundError:
        return None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: not valid TOML ({exc})") from None
