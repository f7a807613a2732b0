"""Choose the wheels worth warming: the variant's GPU packages a plain `uv sync` installs, for the
project's Python and this platform."""

from __future__ import annotations

import fnmatch
import platform as _platform
import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from packaging import tags as _tags
from packaging.markers import Marker
from packaging.version import Version

from .lockfile import Dependency, LockedPackage, Lock, wheel_tags
from .model import Pin, WheelFile

# Local version labels that name a GPU build; any other label (`+local`) is not a variant.
_VARIANT_LABEL = re.compile(r"^(cpu|xpu|cu\d{2,3}|rocm\d+(\.\d+){1,2})$")
_MANYLINUX_LEGACY = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
# The glibc minors uv accepts in `--python-platform <arch>-manylinux_2_N` (0.8.2 through 0.13.x).
_UV_GLIBC_TARGETS = (17, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40)


@dataclass(frozen=True)
class Selection:
    """The pins chosen for one project, and what the probe must pass to `uv sync` to match."""

    pins: tuple[Pin, ...]
    extras: tuple[str, ...] = ()  # extras whose builds are the variant's (uv's conflicting-extras pattern)
    installed: frozenset[str] = frozenset()  # every package name a sync installs, GPU or not
    skipped: tuple[str, ...] = field(default=())  # one line per matching package that got no wheel


def variant_label(version: str) -> str | None:
    """The GPU variant named by a version's local label (`2.8.0+rocm6.3` -> `rocm6.3`), if any."""
    local = Version(version).local
    return local if local and _VARIANT_LABEL.match(local) else None


def matches(name: str, patterns: Iterable[str]) -> bool:
    """True when a normalized package name matches one of the configured globs."""
    return any(fnmatch.fnmatchcase(name, p.lower().replace("_", "-")) for p in patterns)


def select_pins(
    lock: Lock,
    *,
    variant: str,
    patterns: Sequence[str],
    pythons: Sequence[str],
    platforms: Sequence[str] | None = None,
    groups: Sequence[str] = ("dev",),
) -> Selection:
    """Walk the lock like `uv sync` would for each Python and pick one wheel per matching package."""
    platforms = list(platforms) if platforms is not None else list(_tags.platform_tags())
    extras = _variant_extras(lock, variant)
    pins: dict[tuple[str, str], Pin] = {}
    skipped: list[str] = []
    installed: set[str] = set()
    for python in pythons:
        env = _marker_env(python, platforms)
        order = _tag_order(python, platforms)
        for pkg in _installed(lock, variant, env, extras, groups):
            installed.add(pkg.name)
            if not matches(pkg.name, patterns) or not pkg.wheels or pkg.registry is None:
                continue
            wheel = _best_wheel(pkg.wheels, order)
            if wheel is None:
                skipped.append(f"{pkg.name} {pkg.version}: no wheel for Python {python} on this platform")
                continue
            pins[(wheel.sha256, python)] = Pin(
                name=pkg.name,
                version=pkg.version,
                index=pkg.registry,
                wheel=wheel,
                python=python,
                platform=uv_platform(wheel.filename),
            )
    return Selection(
        pins=tuple(sorted(pins.values(), key=lambda p: (p.python, p.name, p.version))),
        extras=tuple(sorted(extras)),
        installed=frozenset(installed),
        skipped=tuple(skipped),
    )


def _variant_extras(lock: Lock, variant: str) -> set[str]:
    """Extras of the workspace members that pull in a build of exactly this variant."""
    out = set()
    for root in lock.roots:
        for extra, deps in root.optional.items():
            labels = {
                variant_label(p.version)
                for d in deps
                for p in lock.find(d)
            } - {None}
            if variant in labels:
                out.add(extra)
    return out


def _installed(
    lock: Lock, variant: str, env: dict[str, str], extras: set[str], groups: Sequence[str]
) -> list[LockedPackage]:
    """The packages a sync with `extras` installs for the marker environment `env`."""
    seen: dict[tuple[str, str, str | None], LockedPackage] = {}
    todo: list[tuple[Dependency, frozenset[str]]] = []
    active = frozenset(extras)
    for root in lock.roots:
        key = (root.name, root.version, root.registry)
        seen[key] = root
        todo += [(d, active) for d in root.dependencies]
        for extra in extras:
            todo += [(d, active) for d in root.optional.get(extra, ())]
        for group in groups:
            todo += [(d, active) for d in root.groups.get(group, ())]
    while todo:
        dep, act = todo.pop()
        if not _marker_true(dep.marker, env, act):
            continue
        for pkg in lock.find(dep):
            label = variant_label(pkg.version)
            if label is not None and label != variant:
                continue  # another build of the same package (`+cpu` beside `+cu128`)
            key = (pkg.name, pkg.version, pkg.registry)
            if key in seen:
                continue
            seen[key] = pkg
            todo += [(d, act) for d in pkg.dependencies]
            for extra in dep.extras:
                todo += [(d, act) for d in pkg.optional.get(extra, ())]
    return [p for p in seen.values() if not p.is_root]


def _marker_true(marker: str | None, env: dict[str, str], extras: frozenset[str]) -> bool:
    if not marker:
        return True
    try:
        m = Marker(marker)
        if m.evaluate({**env, "extra": ""}):
            return True
        # uv encodes conflicting extras as `extra == 'extra-N-<project>-<name>'`: try the active ones.
        return any(m.evaluate({**env, "extra": n}) for n in _encoded_extras(marker, extras))
    except Exception:
        return True  # a marker this `packaging` cannot read: keep the edge rather than miss a wheel


def _encoded_extras(marker: str, extras: frozenset[str]) -> list[str]:
    """The extra names in `marker` that stand for one of the active extras (plain or uv-encoded)."""
    names = re.findall(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
    return [n for n in names if n in extras or any(n.endswith(f"-{x}") for x in extras)]


def _marker_env(python: str, platforms: Sequence[str]) -> dict[str, str]:
    machine = _platform.machine() or "x86_64"
    for p in platforms:
        if p.endswith(("_x86_64", "_aarch64", "_ppc64le", "_s390x", "_armv7l", "_i686")):
            machine = p.rsplit("_", 1)[-1] if not p.endswith("x86_64") else "x86_64"
            break
    full = python if python.count(".") == 2 else f"{python}.0"
    return {
        "python_version": ".".join(python.split(".")[:2]),
        "python_full_version": full,
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "implementation_version": full,
        "os_name": "posix",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": machine,
        "platform_release": "",
        "platform_version": "",
    }


def _tag_order(python: str, platforms: Sequence[str]) -> dict[str, int]:
    major, minor = (int(x) for x in python.split(".")[:2])
    ordered = list(_tags.cpython_tags((major, minor), platforms=platforms))
    ordered += list(_tags.compatible_tags((major, minor), f"cp{major}{minor}", platforms=platforms))
    return {str(t): i for i, t in reversed(list(enumerate(ordered)))}


def _best_wheel(wheels: Sequence[WheelFile], order: dict[str, int]) -> WheelFile | None:
    best: tuple[int, WheelFile] | None = None
    for w in wheels:
        ranks = [order[t] for t in wheel_tags(w.filename) if t in order]
        if ranks and (best is None or min(ranks) < best[0]):
            best = (min(ranks), w)
    return best[1] if best else None


def uv_platform(filename: str) -> str:
    """The `--python-platform` target under which uv accepts this wheel's platform tag."""
    plats = {t.rsplit("-", 1)[-1] for t in wheel_tags(filename)}
    best: tuple[tuple[int, int], str] | None = None
    for plat in plats:
        m = re.match(r"^manylinux_(\d+)_(\d+)_(\w+)$", plat)
        if m:
            glibc, arch = (int(m.group(1)), int(m.group(2))), m.group(3)
        else:
            legacy = next((v for k, v in _MANYLINUX_LEGACY.items() if plat.startswith(k + "_")), None)
            if legacy is None:
                continue
            glibc, arch = legacy, plat.split("_", 1)[1]
        # The lowest glibc a wheel declares is the one every newer target accepts; uv knows only
        # some targets, so take the first of those at or above it.
        target = next((n for n in _UV_GLIBC_TARGETS if n >= glibc[1]), _UV_GLIBC_TARGETS[-1])
        if best is None or glibc < best[0]:
            best = (glibc, f"{arch}-manylinux_2_{target}")
    if best is not None:
        return best[1]
    arch = next((p.split("_", 1)[1] for p in plats if p.startswith("linux_")), None)
    return f"{arch or _platform.machine() or 'x86_64'}-unknown-linux-gnu"
