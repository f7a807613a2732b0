"""This machine as uv installs for it: its markers and tag order pick each package's wheel and uv platform."""

from __future__ import annotations

import platform as _platform
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

from packaging import tags as _tags

from ..base import Pin, Skipped
from ..uv import Interpreter, LockedPackage, LockedWheel, wheel_tags
from .export import _Line

UNHASHED = "no sha256 in the lock: not verified, left to uv"
_MANYLINUX_LEGACY = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
# The glibc minors uv accepts in `--python-platform <arch>-manylinux_2_N` (0.8.2 through 0.13.x).
_UV_GLIBC_TARGETS = (17, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40)


@dataclass(frozen=True)
class Target:
    """The machine wheels are planned for: its platform tags, best first, and its platform markers."""

    platform_tags: tuple[str, ...]
    markers: Mapping[str, str]  # the PEP 508 values that do not depend on the Python

    @classmethod
    def here(cls) -> Target:
        """This machine, as the running Python sees it."""
        return cls(
            platform_tags=tuple(_tags.platform_tags()),
            markers={
                "os_name": "posix",
                "sys_platform": "linux",
                "platform_system": _platform.system() or "Linux",
                "platform_machine": _platform.machine() or "x86_64",
                "platform_release": _platform.release(),
                "platform_version": _platform.version(),
            },
        )


def _entry(pkg: LockedPackage | None, line: _Line, python: str, order: Mapping[str, int]) -> Pin | Skipped:
    """The wheel warmd fetches for one installed package, or why there is none."""
    name, version = line.name or "?", line.version or "?"
    if pkg is None:
        return Skipped(name, version, python, "not found in uv.lock as uv exported it: left to uv")
    if pkg.registry is None and pkg.url is None:
        return Skipped(pkg.name, pkg.version, python,
                       f"a {pkg.source} source (no http(s) wheel): uv builds or reads it itself")
    wheel = _best_wheel(pkg.wheels, order)
    if wheel is None:
        why = f"no wheel for Python {python} on this platform"
        if pkg.has_sdist:  # warmd never builds: the sdist's build runs its code
            why += "; uv builds it from the sdist at sync (warmd never builds), so an offline sync needs the network for it"
        return Skipped(pkg.name, pkg.version, python, why)
    file = wheel.file()
    if file is None:
        return Skipped(pkg.name, pkg.version, python, UNHASHED, filename=wheel.filename, url=wheel.url,
                       size=wheel.size, index=pkg.registry, platform=uv_platform(wheel.filename), unhashed=True)
    return Pin(name=pkg.name, version=pkg.version, index=pkg.registry, wheel=file, python=python,
               platform=uv_platform(wheel.filename))


def _marker_env(python: str, interpreter: Interpreter | None, target: Target) -> dict[str, str]:
    if interpreter is not None:
        return {**interpreter.markers, "extra": ""}
    # No interpreter for this Python here: its patch level is unknown, take the first release.
    full = f"{python}.0"
    return {**target.markers, "python_version": python, "python_full_version": full,
            "implementation_name": "cpython", "implementation_version": full,
            "platform_python_implementation": "CPython", "extra": ""}


def _tag_order(python: str, platforms: Sequence[str]) -> dict[str, int]:
    major, minor = (int(x) for x in python.split(".")[:2])
    ordered = list(_tags.cpython_tags((major, minor), platforms=platforms))
    ordered += list(_tags.compatible_tags((major, minor), f"cp{major}{minor}", platforms=platforms))
    return {str(t): i for i, t in reversed(list(enumerate(ordered)))}


def _best_wheel(wheels: Sequence[LockedWheel], order: Mapping[str, int]) -> LockedWheel | None:
    best: tuple[int, LockedWheel] | None = None
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
