"""Doctor's checks of the uv warmd drives and its settings: warming helps only the uv and cache your shell uses."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from packaging.version import Version

from ..base import Config, WarmdError, default_config_path
from ..uv import Project, Uv, dig, read_settings, uv_toml_files
from .findings import _Report, fix_text

OLDEST_TESTED_UV = Version("0.8.2")
_SHELL_TIMEOUT = 5.0


# -- config, uv, uv.toml ------------------------------------------------------------------------


def _check_config(rep: _Report, config: Config) -> None:
    where = str(config.source) if config.source else f"defaults (no {default_config_path()})"
    rep.add("config", "info", f"{where}; store {config.store_dir}; state {config.state_dir}")


def _config_name(config: Config) -> str:
    return str(config.source or default_config_path())


def _check_uv(rep: _Report, config: Config, env: dict[str, str]) -> tuple[Uv | None, Version | None, Path | None]:
    """The uv warmd drives: found, version, cache; and whether the shell's uv is the same."""
    uv = Uv(config.uv, cache_dir=config.cache_dir, env=env)
    shells = shell_uvs(env)
    try:
        exe, version, cache = uv.exe, uv.version, uv.cache_dir
    except WarmdError as exc:
        known = next((p for _w, p in shells), None)
        detail = (f'your shell runs {known}: set `uv = "{known}"` in {_config_name(config)}' if known
                  else f"install uv, then set its path in {_config_name(config)}")
        rep.add("uv", "problem", str(exc), fix_text("uv-missing", detail))
        return None, None, config.cache_dir
    rep.add("uv", "ok", f"{exe} {version}, cache {cache}")
    if version < OLDEST_TESTED_UV:
        rep.add("uv", "warn", f"uv {version} is older than {OLDEST_TESTED_UV}, the oldest warmd is tested with",
                fix_text("uv-old"))
    _compare_shell_uvs(rep, config, env, exe, version, cache, shells)
    return uv, version, cache


def shell_uvs(env: Mapping[str, str], timeout: float = _SHELL_TIMEOUT) -> list[tuple[str, Path]]:
    """The uv your shell runs: (where it was seen, path), from PATH here and from the login shell."""
    found: list[tuple[str, Path]] = []
    here = shutil.which("uv", path=env.get("PATH"))
    if here:
        found.append(("PATH", Path(here)))
    shell = env.get("SHELL", "")
    if shell and os.path.isabs(shell) and os.access(shell, os.X_OK):
        try:
            # A login shell reads the profile that sets PATH (~/.local/bin, pyenv...); a systemd
            # service and a cron job see neither.
            done = subprocess.run([shell, "-lc", "command -v uv"], env=dict(env), capture_output=True, text=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL)
            lines = [ln.strip() for ln in done.stdout.splitlines() if ln.strip().startswith("/")]
            if done.returncode == 0 and lines:
                found.append((f"{Path(shell).name} -l", Path(lines[-1])))
        except (OSError, subprocess.SubprocessError):
            pass  # no answer from the login shell: PATH here is all there is to compare
    return found


def _compare_shell_uvs(rep: _Report, config: Config, env: dict[str, str], exe: Path, version: Version,
                       cache: Path, shells: list[tuple[str, Path]]) -> None:
    if not shells:
        rep.add("shell-uv", "warn", "your shell finds no uv (not on PATH, not in the login shell's PATH); "
                "cannot tell whether it is the one warmd drives")
        return
    seen: set[Path] = set()
    for where, path in shells:
        real = path.resolve()
        if real in seen:
            continue
        seen.add(real)
        if real == exe:
            rep.add("shell-uv", "ok", f"your shell's uv ({where}) is the same: {path}")
            continue
        # The shell's own environment decides its cache: no cache-dir override from warmd's config.
        other = Uv(str(path), env=env)
        try:
            o_version, o_cache = other.version, other.cache_dir
        except WarmdError as exc:
            rep.add("shell-uv", "warn", f"your shell's uv ({where}) {path} does not answer: {exc}")
            continue
        if o_version != version:
            rep.add("shell-uv", "problem",
                    f"the service's uv differs from your shell's: warmd drives {exe} {version}, your shell "
                    f"({where}) runs {path} {o_version}; the shell's uv may not read what warmd's warms",
                    fix_text("uv-differs", f'set `uv = "{path}"` in {_config_name(config)}'))
        elif o_cache.expanduser().absolute() != cache.expanduser().absolute():
            rep.add("shell-uv", "problem",
                    f"warmd's uv cache differs from your shell's: warmd warms {cache}, your shell's uv "
                    f"({where}) {path} uses {o_cache}",
                    fix_text("uv-cache-differs", f'`cache-dir = "{o_cache}"` in {_config_name(config)}'))
        else:
            rep.add("shell-uv", "ok", f"your shell's uv ({where}) {path} is another copy of uv {o_version} "
                    "with the same cache")


def _check_no_cache(rep: _Report, env: Mapping[str, str], projects: Sequence[Path]) -> None:
    flagged = False
    value = env.get("UV_NO_CACHE")
    if value is not None and value.strip().lower() not in ("", "0", "false", "no", "off"):
        flagged = True
        rep.add("uv-cache", "problem", f"UV_NO_CACHE={value} is set: uv uses a throw-away cache",
                fix_text("no-cache", "unset UV_NO_CACHE (and remove it from your shell profile)"))
    files = uv_toml_files(env)
    for project in projects:
        files += [Project.of(project).folder / "uv.toml"]
    for path in dict.fromkeys(files):
        data = read_settings(path)
        if data is not None and data.get("no-cache") is True:
            flagged = True
            rep.add("uv-cache", "problem", f"`no-cache = true` in uv.toml {path}: uv uses a throw-away cache",
                    fix_text("no-cache", f"delete the `no-cache = true` line from {path}"))
    for path in projects:
        project = Project.of(path)
        folder, pyproject = project.folder, project.pyproject
        data = read_settings(pyproject) or {}
        if dig(data, "tool", "uv", "no-cache") is True:
            flagged = True
            rep.add("uv-cache", "problem", f"`no-cache = true` in [tool.uv] of {pyproject}",
                    fix_text("no-cache", f"delete the `no-cache = true` line from {pyproject}"))
        for where, value in ((folder / "uv.toml", dig(read_settings(folder / "uv.toml"), "cache-dir")),
                             (pyproject, dig(data, "tool", "uv", "cache-dir"))):
            if isinstance(value, str):
                rep.add("uv-cache", "warn", f"`cache-dir = {value!r}` in {where}: the project's own `uv sync` uses "
                        "that cache; warmd ignores it (a project never chooses where uv writes for warmd)",
                        fix_text("project-cache-dir", f"delete the `cache-dir` line from {where}"))
                break
    if not flagged:
        rep.add("uv-cache", "ok", "no `no-cache` in uv.toml or UV_NO_CACHE: uv keeps its cache")
