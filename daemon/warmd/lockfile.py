"""Read a uv.lock into typed values, refusing wheel URLs that are not plain, safe wheel files."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from .errors import LockError
from .model import WheelFile

_SHA256 = re.compile(r"^sha256:([0-9a-fA-F]{64})$")
# A uv.lock of a large monorepo is a few MiB; one of 64 MiB or more is not a lock warmd should parse.
MAX_LOCK_BYTES = 64 * 2**20


@dataclass(frozen=True)
class Dependency:
    """An edge in the lock's graph: which package (and which build of it) under which marker."""

    name: str
    version: str | None = None  # set when the lock holds several versions of `name`
    registry: str | None = None
    marker: str | None = None
    extras: tuple[str, ...] = ()


@dataclass(frozen=True)
class LockedPackage:
    """One `[[package]]` of a uv.lock."""

    name: str  # normalized
    version: str
    registry: str | None  # `source = { registry = ... }`; None for virtual/editable/url/git/path
    is_root: bool  # a workspace member or the project itself (virtual/editable/directory source)
    wheels: tuple[WheelFile, ...] = ()
    dependencies: tuple[Dependency, ...] = ()
    optional: dict[str, tuple[Dependency, ...]] = field(default_factory=dict)  # extras
    groups: dict[str, tuple[Dependency, ...]] = field(default_factory=dict)  # dependency groups


@dataclass(frozen=True)
class Lock:
    """A parsed uv.lock."""

    path: Path
    requires_python: str | None
    packages: tuple[LockedPackage, ...]
    conflicts: tuple[tuple[str, ...], ...] = ()  # sets of extras/groups that exclude each other

    def find(self, dep: Dependency) -> list[LockedPackage]:
        """The packages a dependency edge may point at."""
        out = [p for p in self.packages if p.name == dep.name]
        if dep.version is not None:
            out = [p for p in out if p.version == dep.version] or out
        if dep.registry is not None and len(out) > 1:
            out = [p for p in out if p.registry == dep.registry] or out
        return out

    @property
    def roots(self) -> list[LockedPackage]:
        """The workspace members: what `uv sync` starts from."""
        return [p for p in self.packages if p.is_root]


def read_lock(path: Path) -> Lock:
    """Parse the uv.lock at `path`; any problem is a LockError naming the file."""
    try:
        size = path.stat().st_size
        if size >= MAX_LOCK_BYTES:
            raise LockError(f"{path}: {size} bytes is too large for a uv.lock")
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LockError(f"{path}: no such uv.lock (run `uv lock` in the project first)") from None
    except tomllib.TOMLDecodeError as exc:
        raise LockError(f"{path}: not valid TOML ({exc}); is the lock truncated?") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LockError(f"{path}: cannot read: {exc}") from None
    return parse_lock(data, path)


def parse_lock(data: dict[str, Any], path: Path) -> Lock:
    """Build a Lock from already-parsed TOML."""
    if not isinstance(data.get("version"), int):
        raise LockError(f"{path}: not a uv.lock (no integer `version` at the top)")
    raw_packages = data.get("package", [])
    if not isinstance(raw_packages, list):
        raise LockError(f"{path}: `package` must be an array of tables")
    packages = tuple(_package(raw, path, i) for i, raw in enumerate(raw_packages))
    conflicts = []
    for group in _list(data.get("manifest", {}).get("conflicts") if isinstance(data.get("manifest"), dict) else None):
        if isinstance(group, list):
            conflicts.append(tuple(str(item.get("extra") or item.get("group")) for item in group if isinstance(item, dict)))
    rp = data.get("requires-python")
    return Lock(path=path, requires_python=rp if isinstance(rp, str) else None, packages=packages, conflicts=tuple(conflicts))


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _package(raw: Any, path: Path, index: int) -> LockedPackage:
    where = f"{path}: package #{index + 1}"
    if not isinstance(raw, dict):
        raise LockError(f"{where} is not a table")
    name, version = raw.get("name"), raw.get("version", "0")
    if not isinstance(name, str) or not name:
        raise LockError(f"{where} has no name")
    if not isinstance(version, str):
        raise LockError(f"{where} ({name}) has a version that is not a string")
    where = f"{path}: package {name} {version}"
    source = raw.get("source", {})
    if not isinstance(source, dict):
        raise LockError(f"{where}: `source` must be a table")
    registry = source.get("registry")
    if registry is not None and not isinstance(registry, str):
        raise LockError(f"{where}: `source.registry` must be a string")
    is_root = any(k in source for k in ("virtual", "editable")) or source.get("directory") == "."
    wheels: tuple[WheelFile, ...] = ()
    if registry is not None and _is_remote(registry):
        wheels = tuple(_wheel(w, name, version, where) for w in _list(raw.get("wheels")))
    return LockedPackage(
        name=canonicalize_name(name),
        version=version,
        registry=registry,
        is_root=is_root,
        wheels=wheels,
        dependencies=_deps(raw.get("dependencies"), where),
        optional=_dep_tables(raw.get("optional-dependencies"), where),
        groups=_dep_tables(raw.get("dev-dependencies"), where),
    )


def _is_remote(registry: str) -> bool:
    # A registry may be a local folder (find-links); only http(s) indexes serve wheels to fetch.
    return urlsplit(registry).scheme in ("http", "https")


def _deps(value: Any, where: str) -> tuple[Dependency, ...]:
    out = []
    for d in _list(value):
        if not isinstance(d, dict) or not isinstance(d.get("name"), str):
            raise LockError(f"{where}: a dependency has no name")
        src = d.get("source") if isinstance(d.get("source"), dict) else {}
        extras = d.get("extra", [])
        out.append(
            Dependency(
                name=canonicalize_name(d["name"]),
                version=d.get("version") if isinstance(d.get("version"), str) else None,
                registry=src.get("registry") if isinstance(src.get("registry"), str) else None,
                marker=d.get("marker") if isinstance(d.get("marker"), str) else None,
                extras=tuple(e for e in extras if isinstance(e, str)) if isinstance(extras, list) else (),
            )
        )
    return tuple(out)


def _dep_tables(value: Any, where: str) -> dict[str, tuple[Dependency, ...]]:
    if not isinstance(value, dict):
        return {}
    return {str(k): _deps(v, f"{where} [{k}]") for k, v in value.items()}


def _wheel(raw: Any, name: str, version: str, where: str) -> WheelFile:
    if not isinstance(raw, dict):
        raise LockError(f"{where}: a wheel entry is not a table")
    url, hash_ = raw.get("url"), raw.get("hash")
    if not isinstance(url, str):
        raise LockError(f"{where}: a wheel has no url")
    filename = check_wheel_url(url, name, version, where)
    declared = raw.get("filename")
    if declared is not None and declared != filename:
        raise LockError(f"{where}: wheel filename {declared!r} does not match its url")
    m = _SHA256.match(hash_) if isinstance(hash_, str) else None
    if m is None:
        raise LockError(f"{where}: wheel {filename} has no sha256 hash; warmd only fetches verifiable files")
    size = raw.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise LockError(f"{where}: wheel {filename} has an invalid size {size!r}")
    return WheelFile(url=url, filename=filename, sha256=m.group(1).lower(), size=size)


def check_wheel_url(url: str, name: str, version: str, where: str) -> str:
    """Return the wheel filename of `url`, or raise LockError if it is not a plain http(s) wheel of `name`."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LockError(f"{where}: refusing wheel url with scheme {parts.scheme or 'none'!r} (only http and https)")
    raw_last = parts.path.rsplit("/", 1)[-1]
    filename = unquote(raw_last)
    if (
        not filename
        or "/" in filename
        or "\\" in filename
        or "\x00" in filename
        or filename.startswith(".")
        or ".." in PurePosixPath(parts.path).parts
        or not filename.endswith(".whl")
    ):
        raise LockError(f"{where}: refusing wheel url whose file name {raw_last!r} is not a plain wheel file name")
    try:
        wname, wversion = parse_wheel_name(filename)
    except (InvalidWheelFilename, InvalidVersion):
        raise LockError(f"{where}: {filename!r} is not a valid wheel file name") from None
    if wname != canonicalize_name(name):
        raise LockError(f"{where}: wheel {filename!r} belongs to {wname!r}, not {name!r}")
    try:
        if Version(version) != wversion:
            raise LockError(f"{where}: wheel {filename!r} is version {wversion}, the lock says {version}")
    except InvalidVersion:
        raise LockError(f"{where}: {version!r} is not a valid version") from None
    return filename


def parse_wheel_name(filename: str) -> tuple[str, Version]:
    """Name and version of a wheel file name; tolerates a trailing variant label (PEP 817 draft)."""
    try:
        name, version, _build, _tags = parse_wheel_filename(filename)
    except InvalidWheelFilename:
        stem = filename[: -len(".whl")]
        if stem.count("-") not in (5, 6):
            raise
        # A wheel variant adds a label as the last dash-separated part; parse without it.
        name, version, _build, _tags = parse_wheel_filename(stem.rsplit("-", 1)[0] + ".whl")
    return str(name), version


def wheel_tags(filename: str) -> frozenset[str]:
    """The compatibility tags ("cp312-cp312-manylinux_2_28_x86_64") a wheel file name declares."""
    try:
        _n, _v, _b, tags = parse_wheel_filename(filename)
    except InvalidWheelFilename:
        _n, _v, _b, tags = parse_wheel_filename(filename[: -len(".whl")].rsplit("-", 1)[0] + ".whl")
    return frozenset(str(t) for t in tags)
