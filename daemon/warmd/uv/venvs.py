"""The empty venvs the probe names as a project's environment, kept in warmd's state folder.

`uv sync --dry-run` told to use a venv path that does not exist builds a throw-away venv in
`<uv cache>/builds-v0` (~22 files and folders) and removes it again, on every probe: on a disk that
churn slows every later file creation (bench row 13). Told to use an existing empty venv of the
same interpreter, uv plans the same sync and creates nothing in its cache (uv 0.8.0 to 0.13.9,
strace); it opens the venv's `.lock` and takes an flock on it, so a venv serves one probe at a
time, and reads the rest. uv records an interpreter entry in its cache per venv python path, so the
paths are stable, the same in every warmd process: `<folder>/<hash of the interpreter path>-<n>`.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from loguru import logger

from ..base import Owner, UvError, scratch

PROBE_VENVS = "probe-venvs"  # the pool's folder in warmd's state folder
RETRY_AFTER = 600.0  # seconds a venv that could not be made is not tried again (each try runs uv)
_VERSION_SCRIPT = "import platform; print(platform.python_version())"  # what uv writes as `version_info`

_lock = threading.Lock()
_busy: set[Path] = set()  # the venvs a probe of this process holds (every pool, every Uv)
_versions: dict[tuple[str, int, int, int, int], str] = {}  # an interpreter file, as it is now -> its version
_failed: dict[tuple[Path, str], float] = {}  # (venv, version) -> when it could not be made


class ProbeVenvs:
    """Empty venvs in `folder`, one per probe running at once per interpreter, made by `make(interpreter, dest)`."""

    def __init__(self, folder: Path, make: Callable[[Path, Path], None]) -> None:
        self.folder = folder
        self._make = make

    @contextmanager
    def slot(self, interpreter: Path, version: str | None = None) -> Iterator[Path | None]:
        """An empty venv of `interpreter` that no other probe of this process holds until the block
        ends; None when there is none to be had (the caller then does without).

        `version`: the interpreter's full version (`3.12.4`), when the caller knows it; else it is
        asked of the interpreter once per process and interpreter file.
        """
        version = version or _full_version(interpreter)
        if version is None:
            yield None
            return
        key = hashlib.sha256(os.fsencode(interpreter)).hexdigest()[:12]
        with _lock:
            n = 0
            while self.folder / f"{key}-{n}" in _busy:
                n += 1
            path = self.folder / f"{key}-{n}"
            _busy.add(path)
        try:
            yield path if _fits(path, interpreter, version) or self._build(path, interpreter, version) else None
        finally:
            with _lock:
                _busy.discard(path)

    def _build(self, path: Path, interpreter: Path, version: str) -> bool:
        """Make `path` a fresh venv of `interpreter`; False when it cannot be (logged), or could not
        be lately: probes go on without it rather than pay a failing `uv venv` each."""
        with _lock:
            failed = _failed.get((path, version))
        if failed is not None and 0 <= time.monotonic() - failed < RETRY_AFTER:
            return False
        try:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            scratch.sweep(self.folder)  # what a warmd killed while it made a venv left
            # Made beside its place and renamed into it: no process ever sees half a venv there.
            tmp = Path(tempfile.mkdtemp(prefix=f"{scratch.PREFIX}venv-{Owner.me().tag}-", dir=self.folder))
            try:
                self._make(interpreter, tmp / "venv")
                if not _fits(tmp / "venv", interpreter, version):  # else every probe would make it again
                    raise UvError(f"`uv venv` made a venv that does not name {interpreter} {version}")
                if path.exists() or path.is_symlink():  # broken, or its interpreter was upgraded
                    logger.debug("probe venv {} no longer fits {} {}: made again", path, interpreter, version)
                    try:
                        os.rename(path, tmp / "old")  # removed with tmp; a uv still reading it fails once
                    except FileNotFoundError:
                        pass  # another warmd moved it first
                try:
                    os.rename(tmp / "venv", path)
                except OSError:
                    # another warmd put its own there first: that one serves, if it fits
                    if not _fits(path, interpreter, version):
                        raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        except (OSError, UvError) as exc:
            logger.debug("no probe venv for {}: {}", interpreter, exc)
            with _lock:
                _failed[(path, version)] = time.monotonic()
            return False
        return True


def _fits(venv: Path, interpreter: Path, version: str) -> bool:
    """True when `venv` runs `interpreter` and its pyvenv.cfg names `version`, as uv checks before it
    uses a venv (otherwise it plans to replace it, and builds a throw-away one again)."""
    try:
        cfg = (venv / "pyvenv.cfg").read_text(encoding="utf-8", errors="replace")
        same = os.path.samefile(venv / "bin" / "python", interpreter)
    except OSError:
        return False
    return same and re.search(rf"^version_info\s*=\s*{re.escape(version)}\s*$", cfg, re.MULTILINE) is not None


def _full_version(interpreter: Path) -> str | None:
    """The interpreter's `platform.python_version()`, asked of it once per process while its file stays the same."""
    try:
        st = os.stat(interpreter)
    except OSError:
        return None
    key = (str(interpreter), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    with _lock:
        found = _versions.get(key)
    if found is not None:
        return found
    try:
        # The interpreter `uv python find --system` chose outside any project, as Uv._find runs it.
        ran = subprocess.run([str(interpreter), "-I", "-c", _VERSION_SCRIPT], capture_output=True, text=True,
                             timeout=60, stdin=subprocess.DEVNULL, cwd="/")
    except (OSError, subprocess.TimeoutExpired):
        return None
    version = ran.stdout.strip()
    if ran.returncode != 0 or not re.fullmatch(r"\d+\.\d+\.\d+\S*", version):
        return None
    with _lock:
        _versions[key] = version
    return version
