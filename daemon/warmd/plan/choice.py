"""Which extras and groups bring the variant's build, whatever a project calls them and whatever its GPU stack."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from packaging.utils import canonicalize_name

from ..base import ProjectSettings
from ..uv import ConflictItem, Lock, LockedPackage, Uv
from .export import _Line, _LockIndex, parse_export
from .stacks import Build, build_of, build_score
from .variant import Detection


@dataclass(frozen=True)
class _Choice:
    extras: tuple[str, ...]
    groups: tuple[str, ...]
    flags: tuple[str, ...]
    chosen_by: str
    notes: tuple[str, ...]
    lines: list[_Line]


def _choose(uv: Uv, folder: Path, lock: Lock, index: _LockIndex, pyproject: Mapping[str, Any],
            settings: ProjectSettings | None, detection: Detection, env: Callable[[], Mapping[str, str]]) -> _Choice:
    """The extras and groups a user of this variant syncs with, uv's export for them, and why.

    `env` gives the marker environment of the project's Python when first called, after the first
    export (the interpreter lookup it may wait for runs meanwhile).
    """
    root = _root_name(pyproject)
    defaults = _default_groups(pyproject)
    no_defaults = bool(settings and settings.no_default_groups)
    tail = (["--no-default-groups"] if no_defaults else []) + (["--all-packages"] if settings and settings.all_packages else [])
    conflicts = [tuple(i for i in group if i.package in (None, root)) for group in lock.conflicts]

    def flags_for(extras: Sequence[str], groups: Sequence[str]) -> tuple[str, ...]:
        out = [f for e in extras for f in ("--extra", e)]
        out += [f for g in groups if no_defaults or g not in defaults for f in ("--group", g)]
        chosen = {("extra", e) for e in extras} | {("group", g) for g in groups}
        for d in ([] if no_defaults else defaults):
            # A default group that conflicts with the choice must be left out, or uv refuses the sync.
            if d not in groups and any(("group", d) in _keys(c) and chosen & _keys(c) for c in conflicts):
                out += ["--no-group", d]
        return tuple(out + tail)

    def installs(flags: Sequence[str]) -> tuple[list[_Line], list[LockedPackage]]:
        lines = parse_export(uv.export(folder, flags))
        here = env()
        found = [index.find(ln) for ln in lines if ln.name is not None and ln.applies(here)]
        return lines, [p for p in found if p is not None]

    if settings is not None and (settings.extras is not None or settings.groups is not None):
        extras, groups = tuple(settings.extras or ()), tuple(settings.groups or ())
        flags = flags_for(extras, groups)
        lines, pkgs = installs(flags)
        return _Choice(extras, groups, flags, f"set by the [[project]] table for {folder} "
                       f"({' '.join(flags) or 'no flags'}){_brings(build_of(pkgs))}", (), lines)

    items = list(dict.fromkeys(i for group in conflicts for i in group if i.extra or i.group))
    if not items:
        flags = flags_for((), ())
        lines, pkgs = installs(flags)
        return _Choice((), (), flags, f"{_plain(flags)}: the lock has no conflicting extras or groups to "
                       f"choose from{_brings(build_of(pkgs))}",
                       _mismatch(build_of(pkgs), detection), lines)

    tried: list[tuple[ConflictItem, tuple[str, ...], Build | None, list[_Line]]] = []
    for item in items:
        flags = flags_for([item.extra] if item.extra else [], [item.group] if item.group else [])
        lines, pkgs = installs(flags)
        tried.append((item, flags, build_of(pkgs), lines))
    offered = ", ".join(f"{_name(i)} ({b.variant if b else 'no torch'})" for i, _f, b, _l in tried)
    for want in detection.candidates or (detection.variant,):
        scored = [(build_score(b, want), i, f, b, ln) for i, f, b, ln in tried]
        best = max(s for s, *_ in scored)
        if best == 0:
            continue
        winners = [w for w in scored if w[0] == best]
        _s, item, flags, build, lines = winners[0]
        assert build is not None
        how = f"{_name(item)} of [tool.uv] conflicts brings {want} ({build.evidence})"
        if want != detection.variant:
            how += f"; none brings {detection.variant}, {want} is the next build this machine takes"
        notes: tuple[str, ...] = ()
        if len(winners) > 1:
            others = " and ".join(_name(w[1]) for w in winners[1:])
            notes = (f"ambiguous: {others} also bring{'s' if len(winners) == 2 else ''} {want}; taking "
                     f"{_name(item)} — settle it with a [[project]] table (path, extras, groups) in the config",)
        return _Choice(tuple(filter(None, [item.extra])), tuple(filter(None, [item.group])), flags,
                       how + f"; offered: {offered}", notes, lines)
    flags = flags_for((), ())
    lines, pkgs = installs(flags)
    return _Choice((), (), flags, f"{_plain(flags)}: no extra or group of [tool.uv] conflicts brings "
                   f"{detection.variant} (offered: {offered}){_brings(build_of(pkgs))}",
                   _mismatch(build_of(pkgs), detection), lines)


def _plain(flags: Sequence[str]) -> str:
    return f"a plain `uv sync{''.join(' ' + f for f in flags)}`" + (" (flags from the [[project]] table)" if flags else "")


def _keys(group: Sequence[ConflictItem]) -> set[tuple[str, str]]:
    return {("extra", i.extra) if i.extra else ("group", i.group or "") for i in group}


def _name(item: ConflictItem) -> str:
    return f"extra `{item.extra}`" if item.extra else f"group `{item.group}`"


def _brings(build: Build | None) -> str:
    return f"; it brings {build.variant} ({build.evidence})" if build else ""


def _mismatch(build: Build | None, detection: Detection) -> tuple[str, ...]:
    if build is None or any(build_score(build, v) for v in detection.candidates or (detection.variant,)):
        return ()
    return (f"the lock offers no {detection.variant} build: warming the {build.variant} build a plain "
            "`uv sync` installs",)


def _root_name(pyproject: Mapping[str, Any]) -> str | None:
    name = pyproject.get("project", {}).get("name") if isinstance(pyproject.get("project"), dict) else None
    return canonicalize_name(name) if isinstance(name, str) else None


def _default_groups(pyproject: Mapping[str, Any]) -> list[str]:
    """The groups a plain `uv sync` installs: `[tool.uv] default-groups`, else `dev`."""
    tool = pyproject.get("tool", {})
    uv = tool.get("uv", {}) if isinstance(tool, dict) else {}
    value = uv.get("default-groups", ["dev"]) if isinstance(uv, dict) else ["dev"]
    if value == "all":
        groups = pyproject.get("dependency-groups", {})
        return list(groups) if isinstance(groups, dict) else []
    return [g for g in value if isinstance(g, str)] if isinstance(value, list) else ["dev"]
