"""Drive the user's own uv: its version and cache dir, importing verified wheels, and the probe.

warmd never writes under uv's cache itself (DESIGN.md fact 1): uv does, so the layout is always
the one the user's uv reads.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from loguru import logger
from packaging.version import InvalidVersion, Version

from .errors import UvError
from .model import Pin

_DOWNLOADS = re.compile(r"Would download (\d+) packages?")
_INSTALL_LINE = re.compile(r"^\s*\+\s*([A-Za-z0-9._-]+)==(\S+)")
_PY_VERSION = re.compile(r"(\d+\.\d+)")
# A probe or an import may wait on uv's shared cache lock while `uv cache clean` runs.
_TIMEOUT = 3600.0
_DROPS_BAD_WHEELS_FROM = Version("0.13.8")
_TIMEOUT_FEEDER = 24 * 3600  # seconds uv may wait on the feeder for a byte (see import_wheels)


@dataclass(frozen=True)
class ProbeResult:
    """What uv says a plain `uv sync` of a project would need, per selected package name."""

    warm: frozenset[str] = frozenset()
    cold: frozenset[str] = frozenset()
    unproven: Mapping[str, str] = field(default_factory=dict)  # name -> why uv could not tell


class Uv:
    """One uv executable (the user's), and the cache it reads."""

    def __init__(self, exe: str = "uv", *, cache_dir: Path | None = None, env: Mapping[str, str] | None = None) -> None:
        self._exe = exe
        self._cache_dir = cache_dir
        self._env = dict(os.environ if env is None else env)

    @cached_property
    def exe(self) -> Path:
        """The absolute path of the uv that runs."""
        found = shutil.which(self._exe, path=self._env.get("PATH"))
        if found is None:
            raise UvError(
                f"uv not found ({self._exe!r} on PATH={self._env.get('PATH', '')!r}); "
                'set `uv = "/absolute/path/to/uv"` in the config'
            )
        return Path(found).resolve()

    def _run(self, args: Sequence[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None,
             timeout: float = _TIMEOUT, on_line: Callable[[str], None] | None = None) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.exe), *args]
        full_env = {**self._env, **(env or {})}
        if self._cache_dir is not None:
            full_env["UV_CACHE_DIR"] = str(self._cache_dir)
        logger.debug("uv: {}", " ".join(cmd))
        try:
            if on_line is None:
                return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
                                      stdin=subprocess.DEVNULL)
            return _run_reading(cmd, cwd, full_env, timeout, on_line)
        except subprocess.TimeoutExpired:
            raise UvError(f"`uv {' '.join(args[:2])}` did not finish within {timeout:.0f} s") from None
        except OSError as exc:
            raise UvError(f"cannot run {self.exe}: {exc}") from None

    @cached_property
    def version(self) -> Version:
        """The version of this uv (`uv 0.13.9 (...)`)."""
        out = self._run(["--version"], timeout=60)
        m = re.search(r"uv (\d+\.\d+\.\d+)", out.stdout)
        if out.returncode != 0 or m is None:
            raise UvError(f"{self.exe} --version did not print a uv version: {_last_line(out)}")
        try:
            return Version(m.group(1))
        except InvalidVersion:
            raise UvError(f"{self.exe}: unreadable version {m.group(1)!r}") from None

    @property
    def drops_bad_wheels(self) -> bool:
        """True when this uv keeps nothing of a wheel whose bytes fail the pinned sha256.

        uv 0.13.8 (DESIGN.md fact 11) and the pinned 0.13.9 (tests/test_stream.py) keep nothing;
        0.8.2 keeps the unpacked wrong bytes, so it is never handed a wheel it fetches itself.
        """
        return self.version >= _DROPS_BAD_WHEELS_FROM

    @cached_property
    def cache_dir(self) -> Path:
        """The cache this uv reads and writes (`uv cache dir`)."""
        if self._cache_dir is not None:
            return self._cache_dir
        out = self._run(["cache", "dir"], timeout=60)
        if out.returncode != 0 or not out.stdout.strip():
            raise UvError(f"`uv cache dir` failed: {_last_line(out)}")
        return Path(out.stdout.strip().splitlines()[-1])

    def project_python(self, project: Path) -> str | None:
        """The Python version ("3.12") uv would use for the project, or None when uv finds none."""
        pin = project / ".python-version"
        try:
            for line in pin.read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    m = _PY_VERSION.search(line)
                    if m:
                        return m.group(1)
        except (OSError, UnicodeDecodeError):
            pass
        out = self._run(["python", "find"], cwd=project, env={"UV_PYTHON_DOWNLOADS": "never"}, timeout=120)
        if out.returncode != 0 or not out.stdout.strip():
            return None
        interp = out.stdout.strip().splitlines()[-1]
        try:
            ver = subprocess.run([interp, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return None
        m = _PY_VERSION.search(ver.stdout)
        return m.group(1) if m else None

    def import_wheels(self, pins: Sequence[Pin], urls: Mapping[str, str], *, python: str, platform: str,
                      patient: bool = False, on_line: Callable[[str], None] | None = None) -> None:
        """Have uv download `pins` from `urls` (sha256 -> URL) into its cache, checking hashes.

        `patient`: the URLs are the feeder's, which may hold an answer back for as long as a
        download takes; `on_line` is handed each line uv prints, as it prints it.
        """
        if not pins:
            return
        with tempfile.TemporaryDirectory(prefix="warmd-import-", dir=_scratch_dir()) as tmp:
            # PEP 751 wants this exact file name; uv refuses other names for a pylock.
            lock = Path(tmp) / "pylock.toml"
            lock.write_text(render_pylock(pins, urls), encoding="utf-8")
            env = {"UV_PYTHON_DOWNLOADS": "never"}
            if patient:
                # uv asks for every wheel at once; the feeder answers each as its download
                # proceeds, so one queued behind others may wait longer than uv's 30 s default.
                # The feeder ends every answer (whole, or cut off when a download fails).
                env["UV_HTTP_TIMEOUT"] = str(_TIMEOUT_FEEDER)
            out = self._run(
                ["pip", "install", "--no-deps", "--target", str(Path(tmp) / "target"),
                 "--python-version", python, "--python-platform", platform,
                 # Symlinks into the cache: the scratch install costs no copy of a 4 GiB wheel.
                 "--link-mode", "symlink", "-r", str(lock)],
                env=env, on_line=on_line,
            )
            if out.returncode != 0:
                raise UvError(f"uv could not import {len(pins)} wheel(s) for Python {python}: {_last_line(out)}")

    def probe(self, project: Path, *, selected: Iterable[str], others: Iterable[str], python: str,
              extras: Sequence[str] = ()) -> ProbeResult:
        """Ask uv, offline and without touching the project's venv, which selected packages it would download."""
        selected = sorted(set(selected))
        if not selected:
            return ProbeResult()
        exclude = sorted(set(others) - set(selected))
        first = self._probe_once(project, selected, exclude, python, extras)
        if isinstance(first, str):
            return ProbeResult(unproven={n: first for n in selected})
        downloads, listed = first
        missing = {n for n in selected if n not in listed}
        unproven = {n: "uv would not install it (selection differs from uv's)" for n in missing}
        present = [n for n in selected if n in listed]
        if downloads == 0:
            return ProbeResult(warm=frozenset(present), unproven=unproven)
        if downloads >= len(present):  # every one of them is missing: no need to ask one by one
            return ProbeResult(cold=frozenset(present), unproven=unproven)
        warm, cold = set(), set()
        for name in present:  # tell which ones: one probe per package, the rest excluded
            one = self._probe_once(project, [name], exclude + [n for n in present if n != name], python, extras)
            if isinstance(one, str):
                unproven[name] = one
            elif one[0] == 0:
                warm.add(name)
            else:
                cold.add(name)
        return ProbeResult(warm=frozenset(warm), cold=frozenset(cold), unproven=unproven)

    def _probe_once(self, project: Path, selected: Sequence[str], exclude: Sequence[str], python: str,
                    extras: Sequence[str]) -> tuple[int, set[str]] | str:
        args = ["sync", "--frozen", "--dry-run", "--offline", "--no-install-workspace", "--python", python]
        for e in extras:
            args += ["--extra", e]
        for name in exclude:
            args += ["--no-install-package", name]
        with tempfile.TemporaryDirectory(prefix="warmd-probe-") as tmp:
            # A venv path that does not exist: the dry run plans a fresh venv, as a new checkout would.
            out = self._run(args, cwd=project, env={"UV_PROJECT_ENVIRONMENT": str(Path(tmp) / "venv"),
                                                    "UV_PYTHON_DOWNLOADS": "never"}, timeout=600)
        if out.returncode != 0:
            return f"uv could not plan a sync for Python {python}: {_last_line(out)}"
        text = out.stdout + "\n" + out.stderr
        m = _DOWNLOADS.search(text)
        listed = set()
        for line in text.splitlines():
            lm = _INSTALL_LINE.match(line)
            if lm:
                listed.add(_normalize(lm.group(1)))
        return (int(m.group(1)) if m else 0), listed


def _run_reading(cmd: list[str], cwd: Path | None, env: Mapping[str, str], timeout: float,
                 on_line: Callable[[str], None]) -> subprocess.CompletedProcess[str]:
    """Run `cmd`, handing each line of its output to `on_line` as it comes; the output is kept too."""
    lines: list[str] = []
    expired = threading.Event()
    with subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as proc:
        timer = threading.Timer(timeout, lambda: (expired.set(), proc.kill()))
        timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                with contextlib.suppress(Exception):
                    on_line(line.rstrip("\n"))
            code = proc.wait()
        finally:
            timer.cancel()
    if expired.is_set():
        raise subprocess.TimeoutExpired(cmd, timeout)
    return subprocess.CompletedProcess(cmd, code, "", "".join(lines))


def _scratch_dir() -> str | None:
    """A memory-backed folder for the import's throw-away install, when there is one.

    The install is thousands of symlinks (torch alone ~13,000); creating and removing them on a
    disk busy writing back uv's unpacked wheels took 1-3 s, on tmpfs a few ms.
    """
    for candidate in (os.environ.get("XDG_RUNTIME_DIR"), "/dev/shm"):
        if candidate and os.path.isdir(candidate) and os.access(candidate, os.W_OK | os.X_OK):
            return candidate
    return None


def render_pylock(pins: Sequence[Pin], urls: Mapping[str, str]) -> str:
    """A PEP 751 lock naming each pin's registry as `index` and its loopback URL as the wheel `url`."""
    lines = ['lock-version = "1.0"', 'created-by = "warmd"', ""]
    for pin in pins:
        lines += [
            "[[packages]]",
            f"name = {_toml_str(pin.name)}",
            f"version = {_toml_str(pin.version)}",
            f"index = {_toml_str(pin.index)}",
            "",
            "[[packages.wheels]]",
            f"name = {_toml_str(pin.wheel.filename)}",
            f"url = {_toml_str(urls[pin.wheel.sha256])}",
            f"hashes = {{ sha256 = {_toml_str(pin.wheel.sha256)} }}",
            "",
        ]
    return "\n".join(lines)


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _last_line(out: subprocess.CompletedProcess[str]) -> str:
    lines = [ln.strip() for ln in (out.stderr or out.stdout or "").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(("error", "×", "Caused by"))]
    return (errors or lines or [f"exit status {out.returncode}"])[-1]
