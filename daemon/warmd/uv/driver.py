"""Drive the user's own uv: its version and cache dir, importing verified wheels, and the probe.

warmd never writes under uv's cache itself (DESIGN.md fact 1): uv does, so the layout is always
the one the user's uv reads.

No call runs a project's code or lets a project's own uv settings move what uv writes
(docs/SECURITY.md): every call names uv's cache (`UV_CACHE_DIR`, as the user's own configuration
resolves it outside any project) and forbids Python downloads; calls that are not about a
project run in `/`, so no project's uv.toml or `[tool.uv]` is found from warmd's working folder;
interpreters are looked for outside any project and virtual environment (`--system`, an explicit
request), since uv runs an interpreter to inspect it and a project's `.venv/bin/python` or a path
in its `.python-version` is the project's code; everything that could build passes `--no-build`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from loguru import logger
from packaging.version import InvalidVersion, Version

from ..base import CancelToken, IndexUnreachable, LockError, NeedsBuild, Pin, Skipped, UvError, cancel, reveal, scratch
from .interpreter import _MARKERS_SCRIPT, Interpreter
from .reason import uv_reason
from .render import _toml_str, render_pylock, render_requirements, requirement_line
from .settings import IMMUTABLE_FILES
from .venvs import ProbeVenvs

_DOWNLOADS = re.compile(r"Would download (\d+) packages?")
# ` + torch==2.8.0`, ` + flash-attn==2.6.3 (from https://…)`, ` + flash-attn @ https://…` (not cached yet)
_INSTALL_LINE = re.compile(r"^\s*\+\s*([A-Za-z0-9._-]+)\s*(?:==|@)")
# What uv says when an index is down, too slow or out of reach (0.8.2 and 0.13.x word it alike).
_UNREACHABLE = re.compile(r"Failed to fetch|error sending request|Request failed after|operation timed out|"
                          r"Connection refused|connection reset|dns error|server error \(5\d\d|429 Too Many|"
                          r"Network connectivity is disabled", re.IGNORECASE)
# `uv lock` resolves against the network: an index slower than this postpones it.
_LOCK_TIMEOUT = 600.0
# A probe or an import may wait on uv's shared cache lock while `uv cache clean` runs.
_TIMEOUT = 3600.0
_DROPS_BAD_WHEELS_FROM = Version("0.13.8")
# uv's words (0.8.2 and 0.13.x) when --no-build keeps it from building a package it needs: for a local
# one, or (the resolver's) for a registry package that has only an sdist.
_BUILD_DISABLED = re.compile(r"Building source distributions (?:for `([^`]+)` )?(?:is|are) disabled|"
                             r"\b([A-Za-z0-9][A-Za-z0-9._-]*)(?:==\S+)? has no usable wheels")
# Where uv runs when a call is not about a project: a folder no project can own, so uv finds no
# project's uv.toml or pyproject.toml walking up from it (uv reads the nearest one it finds).
NEUTRAL = Path("/")
FOUND_TTL = 60.0  # seconds an interpreter lookup's answer is reused (Uv.interpreter)
_TIMEOUT_FEEDER = 24 * 3600  # seconds uv may wait on the feeder for a byte (see import_wheels)


@dataclass(frozen=True)
class ProbeResult:
    """What uv says a plain `uv sync` of a project would need, per selected package name."""

    warm: frozenset[str] = frozenset()
    cold: frozenset[str] = frozenset()
    unproven: Mapping[str, str] = field(default_factory=dict)  # name -> why uv could not tell


class Uv:
    """One uv executable (the user's), and the cache it reads."""

    def __init__(self, exe: str = "uv", *, cache_dir: Path | None = None, env: Mapping[str, str] | None = None,
                 probe_venvs: Path | None = None) -> None:
        """`probe_venvs`: a folder of warmd's own where the probe keeps the empty venvs it names as
        the project's environment (uv/venvs.py); None: it names a path that does not exist, and uv
        builds a throw-away venv in its cache for every probe (what a dry run that writes nothing does)."""
        self._exe = exe
        self._cache_dir = cache_dir
        self._env = dict(os.environ if env is None else env)
        self._venvs = ProbeVenvs(probe_venvs, self._make_venv) if probe_venvs is not None else None
        # Interpreter lookups started ahead of need (interpreter_soon), by request, each used once.
        self._soon: dict[str | None, tuple[Future[Interpreter | None], cancel.CancelToken]] = {}
        self._soon_lock = threading.Lock()
        # request -> (when, answer): what uv found for it lately (FOUND_TTL), shared by every project
        self._found: dict[str | None, tuple[float, Interpreter | None]] = {}

    @cached_property
    def exe(self) -> Path:
        """The absolute path of the uv that runs."""
        # Only absolute PATH entries: a relative one names a folder of whatever project warmd runs in.
        path = os.pathsep.join(d for d in self._env.get("PATH", "").split(os.pathsep) if os.path.isabs(d))
        found = shutil.which(self._exe, path=path) if os.path.isabs(self._exe) or path else None
        if found is None:
            raise UvError(
                f"uv not found ({self._exe!r} on PATH={self._env.get('PATH', '')!r}); "
                'set `uv = "/absolute/path/to/uv"` in the config'
            )
        return Path(found).resolve()

    def _run(self, args: Sequence[str], *, cwd: Path = NEUTRAL, env: Mapping[str, str] | None = None,
             timeout: float = _TIMEOUT, pass_fds: Sequence[int] = (), on_line: Callable[[str], None] | None = None,
             pin_cache: bool = True, memory: bool = False) -> subprocess.CompletedProcess[str]:
        """Run uv in `cwd` (a project's folder only for calls about that project); a run called off
        (cancel.Cancelled) stops it at once and raises instead of answering.

        `on_line` is handed each line uv prints (stdout and stderr, merged into stderr), as it prints it.
        `pin_cache`: name uv's cache explicitly (env beats a project's `cache-dir`, both uv versions).
        `memory`: uv's TMPDIR in memory (scratch.memory_dir()) where there is one. For the small
        offline calls made for every project (export, probe, python find): each makes and removes
        a dozen files and folders there, and on a disk that churn costs every later file creation
        (ext4 without a journal skips inodes freed in the last minutes: bench row 13 grew with the
        projects done). Never for a call that may stage a wheel's bytes in TMPDIR.
        """
        cmd = [str(self.exe), *args]
        # A project's `python-downloads = "automatic"` (and its `python-install-mirror`) loses to this.
        full_env = {**self._env, **(env or {}), "UV_PYTHON_DOWNLOADS": "never"}
        if pin_cache:
            full_env["UV_CACHE_DIR"] = str(self.cache_dir)
        token = cancel.current()
        if token is not None:
            token.check()
        # uv's own scratch (`--no-cache`'s throw-away cache, `uv-*.lock` files) goes into a TMPDIR of
        # warmd's, removed after uv however it ended: a uv killed mid-run cannot remove its own.
        with contextlib.ExitStack() as stack:
            try:
                tmp = stack.enter_context(scratch.folder("uv", memory=memory))
            except OSError as exc:
                where = (scratch.memory_dir() if memory else None) or tempfile.gettempdir()
                raise UvError(f"cannot make a scratch folder for uv in {where}: {exc}") from None
            full_env["TMPDIR"] = str(tmp.path)
            # uv holds the folder's lock too: a uv outliving a killed warmd keeps it from the sweep
            return self._child(cmd, args, cwd=cwd, env=full_env, timeout=timeout,
                               pass_fds=(*pass_fds, tmp.fd), on_line=on_line, token=token)

    def _child(self, cmd: list[str], args: Sequence[str], *, cwd: Path, env: Mapping[str, str], timeout: float,
               pass_fds: Sequence[int], on_line: Callable[[str], None] | None,
               token: CancelToken | None) -> subprocess.CompletedProcess[str]:
        logger.debug("uv: {}", " ".join(cmd))
        started = time.monotonic()
        try:
            proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE if on_line is None else subprocess.STDOUT, text=True,
                                    pass_fds=tuple(pass_fds))
        except OSError as exc:
            raise UvError(f"cannot run {self.exe}: {exc}") from None
        with proc:
            try:
                with token.watching(proc) if token is not None else contextlib.nullcontext():
                    if on_line is None:
                        out, err = proc.communicate(timeout=timeout)
                    else:
                        out, err = "", _read_lines(proc, timeout, on_line)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                raise UvError(f"`uv {' '.join(args[:2])}` did not finish within {timeout:.0f} s") from None
            except BaseException:
                proc.kill()  # as subprocess.run does: no uv outlives an interrupted warmd call
                raise
        logger.debug("uv {}: exit {} after {:.2f} s", args[0], proc.returncode, time.monotonic() - started)
        if token is not None:
            token.check()  # stopped by warmd's own cancel: not uv's failure, and not an answer
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)

    @cached_property
    def version(self) -> Version:
        """The version of this uv (`uv 0.13.9 (...)`)."""
        out = self._run(["--version"], timeout=60, pin_cache=False)
        m = re.search(r"uv (\d+\.\d+\.\d+)", out.stdout)
        if out.returncode != 0 or m is None:
            raise UvError(f"{self.exe} --version did not print a uv version: {uv_reason(out)}")
        try:
            return Version(m.group(1))
        except InvalidVersion:
            raise UvError(f"{self.exe}: unreadable version {m.group(1)!r}") from None

    @property
    def drops_bad_wheels(self) -> bool:
        """True when this uv keeps nothing of a wheel whose bytes fail the pinned sha256.

        uv 0.13.8 (DESIGN.md fact 11) and the pinned 0.13.9 (tests/warm/test_stream.py) keep nothing;
        0.8.2 keeps the unpacked wrong bytes, so it is never handed a wheel it fetches itself.
        """
        return self.version >= _DROPS_BAD_WHEELS_FROM

    @cached_property
    def cache_dir(self) -> Path:
        """The cache this uv reads and writes (`uv cache dir` as the user's configuration says, outside any project)."""
        if self._cache_dir is not None:
            return self._cache_dir
        out = self._run(["cache", "dir"], timeout=60, pin_cache=False)
        if out.returncode != 0 or not out.stdout.strip():
            raise UvError(f"`uv cache dir` failed: {uv_reason(out)}")
        return Path(out.stdout.strip().splitlines()[-1])

    def interpreter_soon(self, request: str | None) -> None:
        """Start `interpreter(request)` in the background: the next call for that request takes its answer.

        `warmd prefetch` starts it before importing the pipeline: uv inspecting interpreters
        (0.4-0.6 s where a pyenv shim is on PATH) and Python importing warmd (0.2-0.4 s) then run
        side by side on two cores. `request` must be one interpreter() would be given (a parsed
        version or specifier). Lookups nobody took are stopped by forget_soon().
        """
        with self._soon_lock:
            if request in self._soon or self._fresh(request) is not None:
                return
            future: Future[Interpreter | None] = Future()
            token = cancel.CancelToken()
            self._soon[request] = (future, token)

        def look() -> None:
            try:
                with cancel.scope(token):
                    future.set_result(self._find(request))
            except BaseException as exc:  # handed to whoever takes the answer
                future.set_exception(exc)

        threading.Thread(target=look, name="warmd-find-python", daemon=True).start()

    def forget_soon(self) -> None:
        """Stop the lookups interpreter_soon() started that no interpreter() call took."""
        with self._soon_lock:
            left, self._soon = list(self._soon.values()), {}
        for _future, token in left:
            token.cancel("not needed")

    def interpreter(self, request: str | None = None) -> Interpreter | None:
        """The interpreter `uv python find --system [request]` picks (a version "3.12" or a specifier
        ">=3.11"), or None when uv finds none.

        Never in a project: uv runs each interpreter it considers to inspect it, and in a project
        folder it considers the project's `.venv` and a path its `.python-version` names (both
        uv versions, tests/test_untrusted.py); `--system` leaves out virtual environments.

        An answer holds for FOUND_TTL seconds: uv inspects every interpreter on PATH for each lookup
        (0.4-0.6 s where pyenv's shims are), and a daemon planning thousands of projects asks the
        same few requests of each; a Python installed since is seen a minute later at most.
        """
        with self._soon_lock:
            soon = self._soon.pop(request, None)
            found = self._fresh(request)
        if found is not None:
            return found[1]
        answer = soon[0].result() if soon is not None else self._find(request)
        with self._soon_lock:  # only an answer is kept: a lookup called off raised instead
            self._found[request] = (time.monotonic(), answer)
        return answer

    def _fresh(self, request: str | None) -> tuple[float, Interpreter | None] | None:
        found = self._found.get(request)
        return found if found is not None and 0 <= time.monotonic() - found[0] < FOUND_TTL else None

    def _find(self, request: str | None) -> Interpreter | None:
        # --no-cache: a throw-away cache, so planning never writes interpreter facts into the user's.
        args = ["python", "find", "--no-cache", "--system"] + ([request] if request else [])
        out = self._run(args, timeout=120, memory=True)
        if out.returncode < 0:  # stopped by someone else (warmd's own stop raised Cancelled): no answer
            raise UvError(f"`uv python find` did not answer: {uv_reason(out)}")
        if out.returncode != 0 or not out.stdout.strip():
            return None
        path = Path(out.stdout.strip().splitlines()[-1])
        try:
            ran = subprocess.run([str(path), "-I", "-c", _MARKERS_SCRIPT], capture_output=True, text=True,
                                 timeout=60, stdin=subprocess.DEVNULL, cwd=NEUTRAL)
            markers = json.loads(ran.stdout)
        except (OSError, subprocess.TimeoutExpired, ValueError):
            cancel.checkpoint()  # an interpreter that did not answer while the run was called off: no answer
            return None
        if not isinstance(markers, dict) or not isinstance(markers.get("python_version"), str):
            return None
        return Interpreter(path=path, version=markers["python_version"], markers=markers)

    def export(self, project: Path, flags: Sequence[str]) -> str:
        """What a `uv sync` with `flags` could install, for every platform: `uv export` of the lock, offline.

        One `name==version ; marker` line per package (with the lock's hashes), conflicts, extras,
        groups and workspace members already decided by uv. The user's uv configuration is read,
        as their own `uv sync` reads it.
        """
        # --no-cache: the export reads only the lock; uv's cache is neither needed nor to be touched.
        # --no-build: it builds nothing as it is (DESIGN.md fact 14); a later uv must not either.
        out = self._run(["export", "--frozen", "--offline", "--no-cache", "--no-build", "--format",
                         "requirements-txt", "--no-emit-project", "--no-header", "--no-annotate", *flags],
                        cwd=project, timeout=600, memory=True)
        if out.returncode != 0:
            raise LockError(f"{project / 'uv.lock'}: uv cannot plan a sync of it ({' '.join(flags) or 'no flags'}): "
                            f"{uv_reason(out)}")
        return out.stdout

    def prune(self, timeout: float = 300) -> str:
        """`uv cache prune`: uv removes what nothing in its cache points to; returns uv's summary line."""
        out = self._run(["cache", "prune"], timeout=timeout)
        if out.returncode != 0:
            raise UvError(f"`uv cache prune` failed: {uv_reason(out)}")
        lines = [ln.strip() for ln in (out.stdout + "\n" + out.stderr).splitlines() if ln.strip()]
        return next((ln for ln in reversed(lines) if ln.startswith(("Removed", "No unused"))), lines[-1] if lines else "")

    def lock_upgrade(self, folder: Path, packages: Sequence[str], *, python: str, no_venv: Path,
                     pass_fds: Sequence[int] = ()) -> None:
        """Run `uv lock --upgrade-package P ...` in `folder` (a scratch copy), writing its uv.lock there.

        `python`: the interpreter (or version) to lock with, so uv looks for none itself (a path in
        `.python-version` would be run); `no_venv`: a path that does not exist, taken as the
        project's environment, so no `.venv` interpreter is inspected. `--no-build`: uv refuses what
        it would have to build, except workspace members, which it builds anyway (both uv versions:
        the caller must not lock a project that has one with dynamic metadata, upgrade.needs_build).
        Raises NeedsBuild when uv would have to build a package, IndexUnreachable when it could not
        reach an index (or took longer than a slow index would excuse), UvError for anything else.
        """
        # `--opt=value`: a value is never read as another option, whatever a lock calls a package.
        args = ["lock", "--no-build", f"--python={python}", *(f"--upgrade-package={p}" for p in packages)]
        try:
            out = self._run(args, cwd=folder, env={"UV_PROJECT_ENVIRONMENT": str(no_venv)}, timeout=_LOCK_TIMEOUT,
                            pass_fds=pass_fds)
        except UvError as exc:
            if "did not finish within" not in str(exc):  # _run's own words for a timeout
                raise
            raise IndexUnreachable(f"{exc} (is an index that slow?)") from None
        if out.returncode != 0:
            why = uv_reason(out)
            built = _BUILD_DISABLED.search(why)
            if built is not None:
                name = built.group(1) or built.group(2)
                raise NeedsBuild([name] if name else [])
            raise (IndexUnreachable if _UNREACHABLE.search(why) else UvError)(f"`uv lock --upgrade-package` failed: {why}")

    @property
    def env(self) -> Mapping[str, str]:
        """The environment uv runs in."""
        return self._env

    def import_wheels(self, pins: Sequence[Pin], urls: Mapping[str, str], *, python: str, platform: str,
                      patient: bool = False, on_line: Callable[[str], None] | None = None,
                      keep: Sequence[str] = (), interpreter: Path | None = None) -> None:
        """Have uv download `pins` from `urls` (sha256 -> URL) into its cache, checking hashes.

        A pin without an index (a wheel the lock pins by direct URL) is keyed by that URL in uv's
        cache, so uv downloads it from there itself; the lock's sha256 is checked all the same.
        `patient`: the URLs are the feeder's, which may hold an answer back for as long as a
        download takes; `on_line` is handed each line uv prints, as it prints it. `keep`: index
        URLs whose files uv must keep whatever they answer: uv's per-index `cache-control` override,
        in a config file that takes the place of the user's uv.toml (call it only when they have none).
        `interpreter`: the plan's interpreter for `python`, so uv need not look for one.
        """
        env: dict[str, str] = {}
        if patient:
            # uv asks for every wheel at once; the feeder answers each as its download proceeds,
            # so one queued behind others may wait longer than uv's 30 s default. The feeder ends
            # every answer (whole, or cut off when a download fails).
            env["UV_HTTP_TIMEOUT"] = str(_TIMEOUT_FEEDER)
        registry = [p for p in pins if p.index is not None]
        direct = [p for p in pins if p.index is None]
        if registry:
            # PEP 751 wants this exact file name; uv refuses other names for a pylock.
            config = "".join(f"[[index]]\nurl = {_toml_str(i)}\ncache-control = {{ files = {_toml_str(IMMUTABLE_FILES)} }}\n"
                             for i in keep) or None
            self._pip_install("pylock.toml", render_pylock(registry, urls), python=python, platform=platform,
                              what=f"{len(registry)} wheel(s)", env=env, on_line=on_line, config=config,
                              interpreter=interpreter)
        if direct:
            self._pip_install("requirements.txt", render_requirements(direct), python=python, platform=platform,
                              what=f"{len(direct)} direct-URL wheel(s)", on_line=on_line, interpreter=interpreter)

    def import_unverified(self, wheels: Sequence[Skipped], *, python: str, platform: str) -> None:
        """Have uv download wheels the lock pins without a sha256, from where the lock says, unverified.

        Registry wheels are asked for by name and version from their index, declared in a config
        file with uv's cache-control override, so uv keeps them even when the index says no-store.
        """
        registry = [w for w in wheels if w.index is not None]
        direct = [w for w in wheels if w.index is None and w.url is not None]
        for index in dict.fromkeys(w.index for w in registry):
            group = [w for w in registry if w.index == index]
            config = f"[[index]]\nurl = {_toml_str(reveal(index or ''))}\ndefault = true\n" \
                     f"cache-control = {{ files = {_toml_str(IMMUTABLE_FILES)} }}\n"
            self._pip_install("requirements.txt", "".join(requirement_line(w.name, f"=={w.version}") for w in group),
                              python=python, platform=platform, what=f"{len(group)} unhashed wheel(s)", config=config)
        if direct:
            self._pip_install("requirements.txt", "".join(requirement_line(w.name, "@", reveal(w.url or "")) for w in direct),
                              python=python, platform=platform, what=f"{len(direct)} unhashed wheel(s)")

    def _pip_install(self, name: str, text: str, *, python: str, platform: str, what: str,
                     config: str | None = None, env: Mapping[str, str] | None = None,
                     on_line: Callable[[str], None] | None = None, interpreter: Path | None = None) -> None:
        # In memory where there is some: the install is thousands of symlinks (torch alone
        # ~13,000); making and removing them on a disk busy writing back uv's unpacked wheels
        # took 1-3 s, on tmpfs a few ms.
        with scratch.folder("import", memory=True, detach=True) as work:
            tmp = work.path
            req = tmp / name
            req.write_text(text, encoding="utf-8")
            extra: list[str] = ["--python", str(interpreter)] if interpreter is not None else []
            if config is not None:
                (tmp / "uv.toml").write_text(config, encoding="utf-8")
                extra += ["--config-file", str(tmp / "uv.toml")]
            out = self._run(
                # --no-build: an index named by a lock could answer an sdist for a name and version.
                ["pip", "install", "--no-deps", "--no-build", *extra, "--target", str(tmp / "target"),
                 "--python-version", python, "--python-platform", platform,
                 # Symlinks into the cache: the scratch install costs no copy of a 4 GiB wheel.
                 "--link-mode", "symlink", "-r", str(req)],
                env=env,
                pass_fds=(work.fd,),  # uv holds the folder's lock too, for as long as it runs
                on_line=on_line,
            )
            if out.returncode != 0:
                raise UvError(f"uv could not import {what} for Python {python}: {uv_reason(out)}")

    def probe(self, project: Path, *, selected: Iterable[str], others: Iterable[str], python: str,
              flags: Sequence[str] = ()) -> ProbeResult:
        """Ask uv, offline and without touching the project's venv, which selected packages it would download.

        `python` is a version or an interpreter path; `flags` select the extras and groups of the
        plan (`--extra gpu`, `--no-default-groups` ...), so uv plans the same sync.
        """
        selected = sorted(set(selected))
        if not selected:
            return ProbeResult()
        exclude = sorted(set(others) - set(selected))
        first = self._probe_once(project, selected, exclude, python, flags)
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
            one = self._probe_once(project, [name], exclude + [n for n in present if n != name], python, flags)
            if isinstance(one, str):
                unproven[name] = one
            elif one[0] == 0:
                warm.add(name)
            else:
                cold.add(name)
        return ProbeResult(warm=frozenset(warm), cold=frozenset(cold), unproven=unproven)

    def _probe_once(self, project: Path, selected: Sequence[str], exclude: Sequence[str], python: str,
                    flags: Sequence[str]) -> tuple[int, set[str]] | str:
        args = ["sync", "--frozen", "--dry-run", "--offline", "--no-build", "--no-install-workspace", f"--python={python}",
                *flags, *(f"--no-install-package={name}" for name in exclude)]
        interpreter = Path(python) if os.path.isabs(python) else None
        with (self._venvs.slot(interpreter, self._known_version(interpreter))
              if self._venvs is not None and interpreter is not None else contextlib.nullcontext()) as venv:
            if venv is not None:
                # An empty venv of that interpreter: uv plans the sync a fresh venv would get, and
                # only takes the flock on its `.lock`, where it would build a throw-away venv in its cache.
                out = self._run(args, cwd=project, env={"UV_PROJECT_ENVIRONMENT": str(venv)}, timeout=600, memory=True)
            else:
                with scratch.folder("probe", memory=True) as work:
                    # A venv path that does not exist: the dry run plans a fresh venv, as a new checkout would.
                    out = self._run(args, cwd=project, env={"UV_PROJECT_ENVIRONMENT": str(work.path / "venv")},
                                    timeout=600, pass_fds=(work.fd,), memory=True)
        if out.returncode != 0:
            return f"uv could not plan a sync for Python {python}: {uv_reason(out)}"
        text = out.stdout + "\n" + out.stderr
        m = _DOWNLOADS.search(text)
        listed = set()
        for line in text.splitlines():
            lm = _INSTALL_LINE.match(line)
            if lm:
                listed.add(_normalize(lm.group(1)))
        return (int(m.group(1)) if m else 0), listed

    def _known_version(self, interpreter: Path | None) -> str | None:
        # What the plan's lookup of that interpreter found (Uv.interpreter), so it is not run again.
        with self._soon_lock:
            found = [(t, i) for t, i in self._found.values() if i is not None and i.path == interpreter]
        return max(found, key=lambda f: f[0])[1].markers.get("python_full_version") if found else None

    def _make_venv(self, interpreter: Path, dest: Path) -> None:
        """Have uv make an empty venv of `interpreter` at `dest` (for the probe: uv/venvs.py)."""
        # --no-cache: no interpreter entry for a path that is renamed at once; --offline: a user's
        # UV_VENV_SEED never sends it to an index.
        out = self._run(["venv", "--no-cache", "--no-config", "--offline", "--python", str(interpreter), str(dest)],
                        timeout=120, memory=True)
        if out.returncode != 0:
            raise UvError(f"`uv venv` for {interpreter} failed: {uv_reason(out)}")


def _read_lines(proc: subprocess.Popen[str], timeout: float, on_line: Callable[[str], None]) -> str:
    """Hand each line of `proc`'s output to `on_line` as it comes; returns the whole output."""
    lines: list[str] = []
    expired = threading.Event()
    timer = threading.Timer(timeout, lambda: (expired.set(), proc.kill()))
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            with contextlib.suppress(Exception):
                on_line(line.rstrip("\n"))
        proc.wait()
    finally:
        timer.cancel()
    if expired.is_set():
        raise subprocess.TimeoutExpired(proc.args, timeout)
    return "".join(lines)


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()
