"""Doctor's checks of each project named: its lock's hosts, its plan, its indexes' headers, and the mirrors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from packaging.version import Version

from ..base import Config, InputError, NeedsBuild, Pin, WarmdError, host_of, human_bytes, origin, redact, untrusted
from ..plan import Detection, PlanOptions, must_build, plan_project
from ..state import STATE_FILE, State
from ..transfer import SAMPLE_CAP, MirrorCheck, NetGuard, check_url, compare
from ..uv import (
    CACHE_CONTROL_LINE, Lock, Override, Project, Uv, add_cache_control, dig, immutable_since, index_overrides, norm_url,
    read_lock, uv_keeps,
)
from .findings import Status, _Report, fix_text


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
    project = Project.of(path)
    folder, pyproject, lock_path = project.folder, project.pyproject, project.lock
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
    pins = _plan(rep, config, project, uv, detection, guard)
    _check_builds(rep, config, folder, lock)
    _check_ahead_hosts(rep, config, folder, lock, guard)
    indexes = _indexes(data, lock, pins or [])
    # An override in a uv.toml `[[index]]` keeps the files too; doctor can only report it there.
    overrides = index_overrides(folder, env)
    changed: list[str] = []
    # What any warmd saw of the indexes' files counts too (uv_keeps), and doctor's own checks are
    # recorded for the others; a machine where no warmd has run yet gets no state from doctor.
    state = State.open(config.state_dir) if (config.state_dir / STATE_FILE).is_file() else None
    try:
        for key, idx in indexes.items():
            idx.override = overrides.get(key)
            if idx.sample is not None and origin(idx.sample) in refused:
                rep.add("index", "info", f"{folder.name}: index {redact(idx.url)}: not checked: warmd does not "
                        "connect there for this project (see the `network` finding)")
                continue
            kept = _check_index(rep, folder, idx, uv_version, client, fix and idx.declared and idx.override is None,
                                env, state)
            if kept == "fixable":
                changed.append(idx.url)
    finally:
        if state is not None:
            state.close()
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


def _plan(rep: _Report, config: Config, project: Project, uv: Uv | None, detection: Detection,
          guard: NetGuard) -> list[Pin] | None:
    """The pins warmd would warm for this project: the same plan `prefetch` makes, less what the guard refuses."""
    from ..warm import admit

    folder = project.folder
    if uv is None:
        rep.add("project", "warn", f"{folder}: without uv there is no plan; the planned size is unknown")
        return None
    try:
        pl = admit(guard, plan_project(project, uv=uv, options=PlanOptions.from_config(config), detection=detection))
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
                 may_fix: bool, env: Mapping[str, str], state: State | None) -> str:
    """One finding for one index; returns "kept", "not kept", "unknown" or "fixable" (fix it now)."""
    label = f"{folder.name}: index {idx.name + ' ' if idx.name else ''}{redact(idx.url)}"
    if idx.sample is None:
        rep.add("index", "info", f"{label}: no locked wheel comes from it; nothing to check")
        return "unknown"
    hc = check_url(client, idx.sample)
    if state is not None:
        state.record_headers(hc, warning=compare(state.last_headers(hc.url), hc))
    keep = uv_keeps(folder, idx.url, idx.sample, uv_version=str(uv_version) if uv_version is not None else None,
                    env=env, state=state, seen=[hc])
    if hc.error:
        status: Status = "ok" if keep.verdict == "kept" else "warn"
        rep.add("index", status, f"{label}: could not read the headers of {hc.url}: {hc.error}",
                None if keep.verdict == "kept" else fix_text("headers-unreadable"))
        return "unknown"
    cc = hc.cache_control or "(none)"
    host = host_of(idx.sample)
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
