"""`warmd doctor`: check the set-up (uv, cache, index headers, disk, inotify, service, variant) and
say, for each finding, how to fix it; `--fix` adds uv's per-index cache-control override."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from packaging.version import Version

from ..base import (
    EXIT_FAILED, EXIT_OK, EXIT_USAGE, Config, DiskFull, HashMismatch, InputError, NeedsBuild, Pin, WarmdError,
    default_config_path, human_bytes, redact, untrusted,
)
from ..plan import Detection, PlanOptions, must_build, plan_project, project_folder, resolve_variant
from ..service import INOTIFY_WATCHES, inotify_fix, watch_set
from ..state import STATE_FILE, State
from ..transfer import (
    SAMPLE_CAP, MirrorCheck, NetGuard, Store, check_mirror, check_url, guard_for, http_client, origin, recorded,
    sample_for,
)
from ..uv import (
    CACHE_CONTROL_LINE, Lock, Override, Uv, add_cache_control, cache_use, dig, immutable_since, index_overrides,
    norm_url, read_lock, read_settings, uv_keeps, uv_toml_files,
)
from ..warm import disks

Status = Literal["ok", "warn", "problem", "info"]

OLDEST_TESTED_UV = Version("0.8.2")
_SHELL_TIMEOUT = 5.0
_HTTP_TIMEOUT = 10.0


@dataclass(frozen=True)
class Finding:
    """One thing doctor checked: what it found and, when something is wrong, how to fix it."""

    check: str
    status: Status
    message: str
    fix: str | None = None


@dataclass(frozen=True)
class Trouble:
    """One row of README's troubleshooting table: what doctor says, what to do."""

    says: str
    do: str


# The source of truth for README's "Troubleshooting" table: every finding's fix starts with the
# `do` of its row. The first seven rows are README's; the others are doctor findings README lacks.
TROUBLESHOOTING: dict[str, Trouble] = {
    "uv-missing": Trouble(
        "uv not found",
        'set `uv = "/absolute/path/to/uv"` in the config (a service does not see your shell\'s PATH)'),
    "uv-differs": Trouble(
        "the service's uv differs from your shell's",
        "point `uv` at the one `command -v uv` prints; a different uv version reads a different cache layout"),
    "no-store": Trouble(
        "index answers no-store",
        "nothing to do while warmd runs; or `warmd doctor --fix PROJECT` adds uv's own per-index "
        "`cache-control` override"),
    "no-cache": Trouble(
        "`no-cache = true` in uv.toml",
        "uv uses a throw-away cache: warming is pointless until you remove it"),
    "inotify": Trouble(
        "inotify watch limit reached",
        f"`sysctl fs.inotify.max_user_watches={INOTIFY_WATCHES}` (those projects fall back to the "
        "periodic rescan meanwhile)"),
    "unproven": Trouble(
        "wheel `unproven`",
        "uv has no interpreter for that Python here; install it (`uv python install 3.12`) or drop it from `python`"),
    "sha256": Trouble("sha256 mismatch", HashMismatch.fix or ""),
    "uv-old": Trouble(
        "uv older than 0.8.2",
        "upgrade uv (`uv self update`, or your package manager); warmd is tested from 0.8.2 on"),
    "uv-cache-differs": Trouble(
        "warmd's uv cache differs from your shell's",
        "set `cache-dir` in the config to the folder your shell's `uv cache dir` prints, or remove it"),
    "disk": Trouble("not enough free space", DiskFull.fix or ""),
    "prune": Trouble(
        "unpacked wheel(s) no entry points to",
        "`warmd doctor --fix` asks uv to remove them (`uv cache prune`; uv waits for running uv commands)"),
    "service-failed": Trouble(
        "service failed",
        "`journalctl --user -u warmd` says why; then `systemctl --user restart warmd`"),
    "service-inactive": Trouble(
        "service installed but not running",
        "`systemctl --user enable --now warmd`"),
    "service-unit": Trouble(
        "the unit cannot start, or was written by an older warmd",
        "run `warmd install-service` again (with `--no-sandbox` if you used it), then "
        "`systemctl --user daemon-reload && systemctl --user restart warmd`"),
    "mirror-down": Trouble(
        "a mirror is unreachable",
        "check the mirror's host, its cache server (`systemctl status nginx`) and the `url` of its "
        "`[[mirrors]]` entry; meanwhile warmd fetches from the origin"),
    "mirror-bytes": Trouble(
        "a mirror serves other bytes than the lock pins",
        "purge that file from the mirror's cache (docs/MIRROR.md); warmd never keeps those bytes and "
        "takes the wheel from the origin"),
    "private-host": Trouble(
        "a project's uv.lock names a private host nobody vouched for",
        "nothing, if you do not know the project: warmd skips those wheels and never connects there; "
        "if you trust it, `warmd trust PROJECT` (or add the index to `trusted-indexes`)"),
    "headers-unreadable": Trouble(
        "could not read an index's headers",
        "check the network, proxy (`HTTPS_PROXY`) and `.netrc` credentials for that index; "
        "warmd retries on its schedule"),
    "needs-build": Trouble(
        "needs to build X; warmd never runs a project's code",
        "nothing to do: warmd warms the project's current lock, but does not look ahead for it (uv would run "
        "the package's build to lock it); give the package static metadata (no `dynamic` in [project]) to "
        "have it looked ahead for"),
    "project-cache-dir": Trouble(
        "a project sets its own `cache-dir`",
        "warmd fills your uv cache, never one a project names; remove `cache-dir` from the project's uv "
        "settings, or warming does not help that project's `uv sync`"),
}


def troubleshooting_markdown() -> str:
    """README's troubleshooting table, rendered from TROUBLESHOOTING."""
    lines = ["| doctor says | what to do |", "| --- | --- |"]
    lines += [f"| {t.says} | {t.do} |" for t in TROUBLESHOOTING.values()]
    return "\n".join(lines)


def fix_text(kind: str, detail: str | None = None) -> str:
    """The table's fix for `kind`, followed by what it means here."""
    do = TROUBLESHOOTING[kind].do
    return f"{do} — {detail}" if detail else do


@dataclass
class _Report:
    findings: list[Finding] = field(default_factory=list)
    bad_input: bool = False

    def add(self, check: str, status: Status, message: str, fix: str | None = None) -> None:
        self.findings.append(Finding(check, status, message, fix))

    @property
    def exit_code(self) -> int:
        if self.bad_input:
            return EXIT_USAGE
        return EXIT_FAILED if any(f.status == "problem" for f in self.findings) else EXIT_OK


def run_doctor(config: Config, *, projects: Sequence[Path] = (), as_json: bool = False, fix: bool = False) -> int:
    """Check the set-up and print the findings; 0 no problem, 1 a problem, 2 bad input."""
    findings, code = diagnose(config, projects=projects, fix=fix)
    if as_json:
        print(json.dumps({"findings": [asdict(f) for f in findings], "exit_code": code}, indent=2))
    else:
        print(render(findings), end="")
    return code


def render(findings: Sequence[Finding]) -> str:
    """The findings as text: `status check: message`, then an indented `fix:` line."""
    out = []
    for f in findings:
        out.append(f"{f.status:<4} {f.check}: {f.message}\n")
        if f.fix:
            out.append("     fix: " + f.fix.replace("\n", "\n          ") + "\n")
    return "".join(out)


def diagnose(
    config: Config,
    *,
    projects: Sequence[Path] = (),
    fix: bool = False,
    env: Mapping[str, str] | None = None,
) -> tuple[list[Finding], int]:
    """Every finding for this set-up and these projects, and the exit code they add up to."""
    env = dict(os.environ if env is None else env)
    rep = _Report()
    _check_config(rep, config)
    uv, uv_version, cache_dir = _check_uv(rep, config, env)
    _check_no_cache(rep, env, projects)
    detection = resolve_variant(config.variant, env)
    rep.add("variant", "info",
            f"{detection.variant} ({detection.source}: {detection.detail}); "
            f"candidates {', '.join(detection.candidates) or detection.variant}")
    pins: dict[str, Pin] = {}
    sizes_known = True
    guard = guard_for(config, recorded(config.state_dir), env=env)
    with http_client(guard, timeout=_HTTP_TIMEOUT, env=env) as client:
        for path in projects:
            planned = _check_project(rep, config, path, uv, uv_version, detection, client, fix, env, guard)
            if planned is None:
                sizes_known = False
                continue
            for pin in planned:
                pins.setdefault(pin.wheel.sha256, pin)
        for mirror in config.mirrors:
            sample = sample_for(mirror, (p.wheel for p in pins.values()))
            _report_mirror(rep, mirror.origin, check_mirror(client, mirror, sample), sample is not None)
    _check_disk(rep, config.store_dir, cache_dir, list(pins.values()), bool(projects), sizes_known,
                config.limits.min_free)
    _check_footprint(rep, config.store_dir, config.keep_wheels, uv, cache_dir, fix)
    _check_ahead(rep, config)
    _check_inotify(rep, config)
    _check_service(rep, config, cache_dir, env)
    return rep.findings, rep.exit_code


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
        files += [project_folder(project) / "uv.toml"]
    for path in dict.fromkeys(files):
        data = read_settings(path)
        if data is not None and data.get("no-cache") is True:
            flagged = True
            rep.add("uv-cache", "problem", f"`no-cache = true` in uv.toml {path}: uv uses a throw-away cache",
                    fix_text("no-cache", f"delete the `no-cache = true` line from {path}"))
    for project in projects:
        folder = project_folder(project)
        data = read_settings(folder / "pyproject.toml") or {}
        if dig(data, "tool", "uv", "no-cache") is True:
            flagged = True
            rep.add("uv-cache", "problem", f"`no-cache = true` in [tool.uv] of {folder / 'pyproject.toml'}",
                    fix_text("no-cache", f"delete the `no-cache = true` line from {folder / 'pyproject.toml'}"))
        for where, value in ((folder / "uv.toml", dig(read_settings(folder / "uv.toml"), "cache-dir")),
                             (folder / "pyproject.toml", dig(data, "tool", "uv", "cache-dir"))):
            if isinstance(value, str):
                rep.add("uv-cache", "warn", f"`cache-dir = {value!r}` in {where}: the project's own `uv sync` uses "
                        "that cache; warmd ignores it (a project never chooses where uv writes for warmd)",
                        fix_text("project-cache-dir", f"delete the `cache-dir` line from {where}"))
                break
    if not flagged:
        rep.add("uv-cache", "ok", "no `no-cache` in uv.toml or UV_NO_CACHE: uv keeps its cache")


# -- projects and their indexes -------------------------------------------------------------------


@dataclass
class _Index:
    url: str
    name: str | None = None  # the [[tool.uv.index]] name, when the project declares it
    declared: bool = False
    override: Override | None = None  # cache-control.files set for this index, and where
    sample: str | None = None  # one pinned wheel URL from this index


def _check_project(rep: _Report, config: Config, path: Path, uv: Uv | None, uv_version: Version | None,
                   detection: Detection, client: httpx.Client, fix: bool,
                   env: Mapping[str, str], guard: NetGuard) -> list[Pin] | None:
    """Report the project's indexes; return its planned pins (None when they cannot be known)."""
    folder = project_folder(path)
    pyproject, lock_path = folder / "pyproject.toml", folder / "uv.lock"
    try:
        missing = [p.name for p in (pyproject, lock_path) if not untrusted.check(p)]
    except InputError as exc:  # a FIFO, device or symlink loop where a project file should be
        rep.bad_input = True
        rep.add("project", "problem", str(exc))
        return None
    if not folder.is_dir() or missing:
        rep.bad_input = True
        what = "no such folder" if not folder.is_dir() else f"no {' and no '.join(missing)}"
        rep.add("project", "problem", f"{folder}: {what}",
                "give a uv project folder (with pyproject.toml); run `uv lock` there first")
        return None
    try:
        data = untrusted.read_toml(pyproject) or {}
        lock = read_lock(lock_path)
    except InputError as exc:  # each names its file
        rep.bad_input = True
        rep.add("project", "problem", str(exc))
        return None

    refused = _check_hosts(rep, folder, lock, guard)
    pins = _plan(rep, config, folder, uv, detection, guard)
    _check_builds(rep, config, folder, lock)
    _check_ahead_hosts(rep, config, folder, lock, guard)
    indexes = _indexes(data, lock, pins or [])
    # An override in a uv.toml `[[index]]` keeps the files too; doctor can only report it there.
    overrides = index_overrides(folder, env)
    changed: list[str] = []
    for key, idx in indexes.items():
        idx.override = overrides.get(key)
        if idx.sample is not None and origin(idx.sample) in refused:
            rep.add("index", "info", f"{folder.name}: index {redact(idx.url)}: not checked: warmd does not connect "
                    "there for this project (see the `network` finding)")
            continue
        kept = _check_index(rep, folder, idx, uv_version, client, fix and idx.declared and idx.override is None)
        if kept == "fixable":
            changed.append(idx.url)
    if changed:
        try:
            added = add_cache_control(pyproject, changed)
        except (OSError, ValueError, InputError) as exc:  # tomlkit's parse errors are ValueErrors
            rep.add("fix", "problem", f"{pyproject}: could not add the override: {exc}",
                    f"add `{CACHE_CONTROL_LINE}` to its [[tool.uv.index]] entries by hand")
            return pins
        for url in added:
            rep.add("fix", "info", f"{pyproject}: added `{CACHE_CONTROL_LINE}` to the [[tool.uv.index]] of "
                    f"{redact(url)}")
    return pins


def _check_hosts(rep: _Report, folder: Path, lock: Lock, guard: NetGuard) -> set[str]:
    """One finding per origin the lock names that warmd may not connect to for this project (a
    private host nobody vouched for); returns those origins. Nothing is asked of them. Only http(s)
    counts: warmd never connects to a git source (only the look-ahead's uv may: `_check_ahead_hosts`)."""
    refused: dict[str, str] = {}
    for pkg in lock.packages:
        for url in pkg.urls:
            where = origin(url)
            if where is None or where in refused or not where.startswith(("http://", "https://")):
                continue
            verdict = guard.check(url, folder, index=pkg.registry)
            if not verdict.ok:
                refused[where] = verdict.reason or ""
    for where, why in refused.items():
        rep.add("network", "warn", f"{folder}: its uv.lock names {why}", fix_text("private-host"))
    if not refused:
        rep.add("network", "ok", f"{folder}: every host its uv.lock names is public or vouched for")
    return set(refused)


def _check_ahead_hosts(rep: _Report, config: Config, folder: Path, lock: Lock, guard: NetGuard) -> None:
    """Whether the upgrade look-ahead skips the project for a host its `uv lock` would connect to
    (a git source over ssh of a project not trusted, a private index, a direct URL in pyproject.toml)."""
    from ..warm import refusal

    why = refusal(guard, folder, lock)
    if why:
        rep.add("ahead", "warn" if config.ahead.enable else "info",
                f"{folder}: the upgrade look-ahead skips it: {why}"
                + ("" if config.ahead.enable else " (the look-ahead is off now)"))


def _check_builds(rep: _Report, config: Config, folder: Path, lock: Lock) -> None:
    """Whether the upgrade look-ahead would have to build a package of the project (it then skips it):
    a local package's pyproject.toml says so; for a registry sdist, the last look-ahead of this lock did."""
    try:
        why = str(NeedsBuild(built)) if (built := must_build(folder, lock)) else None
    except InputError:
        return  # the plan's finding names the file
    if why is None and lock.stamp is not None and (config.state_dir / STATE_FILE).is_file():
        state = State.open(config.state_dir)
        try:
            last = state.snapshot().ahead.get(folder)
        finally:
            state.close()
        # (a look-ahead skipped for the network is the `network` finding's, above)
        if (last is not None and last.outcome == "skipped" and last.lock_sha256 == lock.stamp.sha256
                and (last.reason or "").startswith("needs to build")):
            why = last.reason
    if why:
        rep.add("ahead", "warn" if config.ahead.enable else "info",
                f"{folder}: the upgrade look-ahead skips it: {why}"
                + ("" if config.ahead.enable else " (the look-ahead is off now)"), fix_text("needs-build"))


def _plan(rep: _Report, config: Config, folder: Path, uv: Uv | None, detection: Detection,
          guard: NetGuard) -> list[Pin] | None:
    """The pins warmd would warm for this project: the same plan `prefetch` makes, less what the guard refuses."""
    from ..warm import admit

    if uv is None:
        rep.add("project", "warn", f"{folder}: without uv there is no plan; the planned size is unknown")
        return None
    try:
        pl = admit(guard, plan_project(folder, uv=uv, options=PlanOptions.from_config(config), detection=detection))
    except WarmdError as exc:
        rep.bad_input = rep.bad_input or isinstance(exc, InputError)
        rep.add("project", "warn" if not isinstance(exc, InputError) else "problem",
                f"{exc}; the planned size is unknown")
        return None
    pins = {p.wheel.sha256: p for p in pl.pins}
    size = sum(p.wheel.size or 0 for p in pins.values())
    unknown = sum(1 for p in pins.values() if p.wheel.size is None)
    skipped = sum(1 for s in pl.skipped if s.unhashed)
    refused = len(pl.skipped) - skipped
    rep.add("project", "info", f"{folder}: {len(pl.pins)} {pl.variant} wheel(s) planned for Python "
            f"{', '.join(pl.pythons)}, {human_bytes(size)}" + (f" + {unknown} of unknown size" if unknown else "")
            + f"; {pl.chosen_by}" + (f"; {skipped} without a sha256 left to uv" if skipped else "")
            + (f"; {refused} skipped: on a host warmd does not connect to for it" if refused else ""))
    for note in pl.notes:
        rep.add("project", "warn", f"{folder}: {note}")
    return list(pl.pins)


def _indexes(pyproject: dict[str, Any], lock: Lock, pins: list[Pin]) -> dict[str, _Index]:
    """The project's indexes: its [[tool.uv.index]] entries and the registries its lock uses."""
    out: dict[str, _Index] = {}
    entries = dig(pyproject, "tool", "uv", "index")
    for e in entries if isinstance(entries, list) else []:
        if isinstance(e, dict) and isinstance(e.get("url"), str):
            out.setdefault(norm_url(e["url"]), _Index(e["url"], e.get("name"), True))
    # A wheel warmd would warm is the best sample; any locked wheel of that index will do.
    for pin in pins:
        if pin.index is None:
            continue  # a wheel pinned by direct URL belongs to no index
        idx = out.setdefault(norm_url(pin.index), _Index(pin.index))
        idx.sample = idx.sample or pin.wheel.url
    for pkg in lock.packages:
        if pkg.registry and pkg.wheels:
            idx = out.setdefault(norm_url(pkg.registry), _Index(pkg.registry))
            idx.sample = idx.sample or pkg.wheels[0].url
    return out


def _check_index(rep: _Report, folder: Path, idx: _Index, uv_version: Version | None, client: httpx.Client,
                 may_fix: bool) -> str:
    """One finding for one index; returns "kept", "not kept", "unknown" or "fixable" (fix it now)."""
    label = f"{folder.name}: index {idx.name + ' ' if idx.name else ''}{redact(idx.url)}"
    if idx.sample is None:
        rep.add("index", "info", f"{label}: no locked wheel comes from it; nothing to check")
        return "unknown"
    hc = check_url(client, idx.sample)
    keep = uv_keeps(idx.sample, hc.cache_control, known=hc.error is None, override=idx.override,
                    uv_version=str(uv_version) if uv_version is not None else None)
    if hc.error:
        status: Status = "ok" if keep.verdict == "kept" else "warn"
        rep.add("index", status, f"{label}: could not read the headers of {hc.url}: {hc.error}",
                None if keep.verdict == "kept" else fix_text("headers-unreadable"))
        return "unknown"
    cc = hc.cache_control or "(none)"
    host = urlsplit(idx.sample).hostname or ""
    served = f"{label}: files answer Cache-Control: {cc}"
    if keep.verdict == "kept":
        rep.add("index", "ok", f"{served}; {keep.why}")
        return "kept"
    if idx.override is not None:
        where = f"in place of the `files = \"{idx.override.files}\"` set for this index in {idx.override.where}"
    elif idx.declared:
        where = f"to the [[tool.uv.index]] named {idx.name!r} in {folder / 'pyproject.toml'}"
    else:
        where = (f"to the `[[index]]` of {redact(idx.url)} where it is defined (uv.toml), or declare it in "
                 f"{folder / 'pyproject.toml'} as a [[tool.uv.index]] with that line")
    newer = immutable_since(idx.sample)
    note = f" (uv {newer} and newer keep files from {host} by host name)" if newer else ""
    if may_fix:
        rep.add("index", "ok", f"{served}; uv alone keeps no copy, so the override was added (see `fix`){note}")
        return "fixable"
    rep.add("index", "warn",
            f"{served}; uv alone keeps no copy: every fresh venv downloads them again unless warmd "
            f"keeps them warm{note}",
            fix_text("no-store", f"add this line {where}:\n{CACHE_CONTROL_LINE}"))
    return "not kept"


def _report_mirror(rep: _Report, origin: str, mc: MirrorCheck, sampled: bool) -> None:
    """Findings for one mirror: reachable, Range, the sample's bytes, the engine's hit or miss."""
    label = f"{mc.url} (for {redact(origin)})"
    if mc.unreachable is not None:
        rep.add("mirror", "warn", f"{label}: {mc.unreachable}", fix_text("mirror-down"))
        return
    cache = f"; cache {mc.cache_status}" if mc.cache_status else "; no X-Cache-Status header (hit or miss unknown)"
    if not sampled:
        rep.add("mirror", "info", f"{label}: answers (HTTP {mc.status}){cache}; no wheel of the projects given lies "
                "under its origin, so its bytes were not checked (name a project: `warmd doctor PROJECT`)")
        return
    if mc.status not in (200, 206):
        rep.add("mirror", "warn", f"{label}: answers HTTP {mc.status} for a wheel the lock pins{cache}",
                fix_text("mirror-down", "a mirror answering 4xx/5xx for a pinned wheel cannot serve it"))
        return
    ranges = "answers Range" if mc.ranges else "ignores Range (one stream per file: no segments, no resume)"
    size = human_bytes(mc.size) if mc.size is not None else "size unknown"
    if mc.matches is None:
        rep.add("mirror", "warn" if not mc.ranges else "ok",
                f"{label}: {ranges}{cache}; sample {size}, above doctor's {human_bytes(SAMPLE_CAP)} cap or of "
                "unknown size, so its bytes were not checked (every download's sha256 still is)")
    elif mc.matches:
        rep.add("mirror", "ok" if mc.ranges else "warn", f"{label}: {ranges}{cache}; the sample ({size}) matches "
                "the lock's sha256")
    else:
        rep.add("mirror", "problem", f"{label}: {ranges}{cache}; the sample ({size}) sent sha256 {mc.actual}, "
                "not the lock's", fix_text("mirror-bytes"))


# -- disk, inotify, service ------------------------------------------------------------------------


def _check_disk(rep: _Report, store: Path, cache: Path | None, pins: list[Pin], have_projects: bool,
                sizes_known: bool, floor: int | None = None) -> None:
    known = sum(p.wheel.size for p in pins if p.wheel.size is not None)
    unknown = sum(1 for p in pins if p.wheel.size is None)
    if not have_projects:
        need_text = "no PROJECT given, so no planned size"
    else:
        need_text = f"planned wheels {human_bytes(known)}"
        if unknown or not sizes_known:
            need_text += " + size unknown" + (f" for {unknown} wheel(s)" if unknown else " for some projects")
    found, problems = disks(store, cache)
    for problem in problems:
        rep.add("disk", "warn", problem)
    for disk in found:
        need = disk.cost(known)  # as a run weighs it against `[limits] min-free` (limits.Room)
        msg = f"{disk.where}: {human_bytes(disk.free)} free; {need_text}"
        if need > disk.free:
            rep.add("disk", "problem", f"{msg}, about {human_bytes(need)} needed there",
                    fix_text("disk", f"about {human_bytes(need - disk.free)} more is needed"))
        elif floor is not None and disk.free - need < floor:
            rep.add("disk", "warn", f"{msg}, about {human_bytes(need)} needed there: warming it all would leave less "
                    f"than `[limits] min-free` ({human_bytes(floor)}); the wheels past it are skipped",
                    fix_text("disk", f"about {human_bytes(need + floor - disk.free)} more keeps the floor"))
        else:
            rep.add("disk", "ok", msg)


def _check_footprint(rep: _Report, store_dir: Path, keep_wheels: bool, uv: Uv | None, cache: Path | None,
                     fix: bool) -> None:
    """What warmd's store and uv's cache take, and what `uv cache prune` would give back."""
    why = "keeps a copy of each warm wheel (keep-wheels)" if keep_wheels else "holds only downloads in progress"
    if store_dir.is_dir():
        rep.add("store", "info", f"{store_dir}: {human_bytes(Store(store_dir).total_bytes())}; it {why}")
    if cache is None:
        return
    use = cache_use(cache)
    msg = f"{cache}: {human_bytes(use.total_bytes)}"
    if not use.orphans:
        rep.add("uv-cache-use", "ok", msg + "; no unpacked wheel is left without an entry")
        return
    msg += (f"; {use.orphans} unpacked wheel(s) no entry points to (left by syncs from a no-store index), "
            f"about {human_bytes(use.orphan_bytes)} to reclaim")
    if not fix or uv is None:
        rep.add("uv-cache-use", "warn" if use.orphan_bytes else "info", msg,
                fix_text("prune") if use.orphan_bytes else None)
        return
    try:
        said = uv.prune()
    except WarmdError as exc:
        rep.add("uv-cache-use", "problem", f"{msg}; {exc}", fix_text("prune"))
        return
    rep.add("fix", "info", f"{cache}: `uv cache prune`: {said}")
def _check_ahead(rep: _Report, config: Config) -> None:
    """The upgrade look-ahead: on or off, how much of its budget is used, and whether it would wait now."""
    from ..warm import postpone_reason
    from ..warm import read_conditions
    from ..warm import ahead_held

    settings = config.ahead
    held = []
    if (config.state_dir / STATE_FILE).is_file():  # nothing recorded yet: nothing warmed ahead either
        state = State.open(config.state_dir)
        try:
            held = ahead_held(state.ahead_files(), {pin.wheel.sha256 for _p, pin in state.all_pins()})
        finally:
            state.close()
    used = sum(f.size or 0 for f in held)
    cap = human_bytes(settings.budget) if settings.budget is not None else "no cap"
    state_of = "on" if settings.enable else "off (`[ahead] enable = false`; `warmd prefetch --ahead` looks ahead on request)"
    msg = (f"upgrade look-ahead {state_of}; budget: {human_bytes(used)} of {cap} used by {len(held)} warmed-ahead "
           "wheel(s) no lock has adopted yet")
    if held:
        oldest = (time.time() - held[0].warmed_at) / 86400
        msg += f" (the oldest {oldest:.1f} d old; dropped from warmd's store at {settings.max_age / 86400:.0f} d)"
    if settings.budget is not None and used > settings.budget:
        rep.add("ahead", "warn", msg, "raise `[ahead] budget`, or wait: warmed-ahead wheels no lock adopts leave "
                "warmd's store after `[ahead] max-age`; nothing new is warmed ahead meanwhile")
    else:
        rep.add("ahead", "info", msg)
    conditions = read_conditions()
    why = postpone_reason(settings, conditions)
    readings = f"connection: {conditions.metered.detail}; power: {conditions.battery.detail}"
    if why is not None and settings.enable:
        rep.add("ahead", "info", f"the look-ahead waits now: {why}")
    else:
        rep.add("ahead", "info", readings)


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _check_inotify(rep: _Report, config: Config, proc: Path = Path("/proc/sys/fs/inotify")) -> None:
    if not config.roots:
        rep.add("inotify", "info", "no `roots` in the config: the daemon watches nothing")
        return
    # The very set the daemon's watcher watches: each project and the folders above them.
    ws = watch_set(config.roots, config.watch.max_depth, config.watch.ignore)
    projects, folders = ws.projects, ws.folders
    watches, instances = _read_int(proc / "max_user_watches"), _read_int(proc / "max_user_instances")
    if watches is None:
        rep.add("inotify", "info", f"{len(projects)} project(s) under the roots; no inotify limits readable here")
        return
    msg = (f"{len(projects)} project(s) under the roots need about {len(folders)} watches; "
           f"max_user_watches = {watches}, max_user_instances = {instances}")
    # Editors, file sync and IDEs draw from the same per-user limit.
    if len(folders) > watches:
        rep.add("inotify", "problem", f"inotify watch limit reached: {msg}", fix_text(
            "inotify", inotify_fix(len(folders))))
    elif len(folders) > watches // 2 or (instances is not None and instances < 8):
        rep.add("inotify", "warn", f"close to the inotify limits: {msg}", fix_text("inotify", inotify_fix()))
    else:
        rep.add("inotify", "ok", msg)


def _check_service(rep: _Report, config: Config, cache_dir: Path | None, env: Mapping[str, str]) -> None:
    from ..service import service_state

    st = service_state(env)
    where = f" ({st.unit_path})" if st.unit_path else ""
    if st.installed is False:
        rep.add("service", "info", "the warmd user service is not installed (fine when you run `warmd prefetch` "
                "by hand); `warmd install-service` writes it")
    elif st.active == "active":
        rep.add("service", "ok", f"installed and running{where}")
    elif st.active == "failed":
        rep.add("service", "problem", f"service failed{where}: {st.detail}", fix_text("service-failed"))
    elif st.active == "unknown":
        rep.add("service", "info", f"installed: {'yes' if st.installed else 'cannot tell'}{where}; state unknown "
                f"({st.detail})")
    else:
        rep.add("service", "warn", f"service installed but not running{where}: {st.detail}",
                fix_text("service-inactive"))
    if st.unit_path is not None:
        _check_unit(rep, st.unit_path, config, cache_dir, env)


def _check_unit(rep: _Report, unit: Path, config: Config, cache_dir: Path | None, env: Mapping[str, str]) -> None:
    """Whether the unit can start on this account and lets warmd write where this shell's warmd does."""
    from ..service import review_unit, systemd_version, user_unit_dir, xdg_homes

    try:
        text = unit.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        rep.add("service-unit", "warn", f"cannot read {unit}: {exc}")
        return
    writes = {"the uv cache": cache_dir, "warmd's store": config.store_dir, "warmd's state": config.state_dir}
    writes_abs = {name: p.expanduser().absolute() for name, p in writes.items() if p is not None}
    runtime = env.get("XDG_RUNTIME_DIR")
    review = review_unit(text, writes=list(writes_abs.values()), xdg=xdg_homes(env), home=Path.home(),
                         runtime_dir=Path(runtime) if runtime else None, systemd_version=systemd_version())
    if not (review.missing or review.unwritable or review.outdated):
        rep.add("service-unit", "ok", f"{unit} makes and allows the folders warmd writes")
        return
    detail = None if review.sandboxed else "this unit has no mount sandbox: `warmd install-service --no-sandbox`"
    if unit.parent != user_unit_dir(env):
        detail = (f"{unit} is not in your unit folder ({user_unit_dir(env)}): change it where it comes from, or "
                  "install your own")
    if not (review.missing or review.unwritable):
        rep.add("service-unit", "warn", f"the unit was written by an older warmd, or for other folders ({unit}): "
                + "; ".join(review.outdated), fix_text("service-unit", detail))
        return
    said = []
    if review.missing:
        said.append(f"ReadWritePaths= names {', '.join(map(str, review.missing))}, which does not exist and which "
                    "the unit does not make (systemd refuses the start: 226/NAMESPACE)")
    if review.unwritable:
        names = [f"{name} {p}" for name, p in writes_abs.items() if p in review.unwritable]
        said.append(f"its sandbox leaves {', '.join(names)} read-only (for the state: `unable to open database "
                    "file`)")
    if review.outdated:
        said.append("written by an older warmd: " + "; ".join(review.outdated))
    rep.add("service-unit", "problem", f"the unit cannot start ({unit}): " + "; ".join(said),
            fix_text("service-unit", detail))
