"""Read a uv.lock into typed values, refusing wheel URLs that are not plain, safe wheel files."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from ..base import FileStamp, LockError, WheelFile, read_bytes, scrub

_SHA256 = re.compile(r"^sha256:([0-9a-fA-F]{64})$")
# A uv.lock of a large monorepo is a few MiB; one of 64 MiB or more is not a lock warmd should parse.
MAX_LOCK_BYTES = 64 * 2**20


@dataclass(frozen=True)
class LockedWheel:
    """One wheel entry of a `[[package]]`: the file, and the sha256 the lock pins (None: no sha256)."""

    url: str
    filename: str
    sha256: str | None  # lowercase hex; None when the lock has no hash or only another algorithm's
    size: int | None  # PyTorch-index wheels often carry no size

    def file(self) -> WheelFile | None:
        """The verifiable file, or None when the lock pins no sha256 for it."""
        return None if self.sha256 is None else WheelFile(self.url, self.filename, self.sha256, self.size)


@dataclass(frozen=True)
class ConflictItem:
    """One member of a `conflicts` set: an extra or a dependency group of a package."""

    package: str | None  # normalized; None when the lock does not say (then: the project itself)
    extra: str | None = None
    group: str | None = None


@dataclass(frozen=True)
class LockedPackage:
    """One `[[package]]` of a uv.lock."""

    name: str  # normalized
    version: str
    registry: str | None  # `source = { registry = ... }` when that is an http(s) index
    is_root: bool  # a workspace member or the project itself (virtual/editable/directory source)
    wheels: tuple[LockedWheel, ...] = ()
    url: str | None = None  # `source = { url = ... }`: a wheel or sdist pinned by its URL
    source: str = "registry"  # the kind of source: registry, url, git, path, directory, editable, virtual
    has_sdist: bool = False
    # For a path, directory, editable or virtual source: where it is, as the lock says it (relative
    # to the lock's folder, or absolute).
    local: str | None = None
    # Every network URL the entry names (its source, sdist and wheels): what `warmd trust` binds to.
    urls: tuple[str, ...] = ()


@dataclass(frozen=True)
class Lock:
    """A parsed uv.lock."""

    path: Path
    requires_python: str | None
    packages: tuple[LockedPackage, ...]
    conflicts: tuple[tuple[ConflictItem, ...], ...] = ()  # sets of extras/groups that exclude each other
    stamp: FileStamp | None = None  # the bytes this was parsed from

    @property
    def roots(self) -> list[LockedPackage]:
        """The workspace members: what `uv sync` starts from."""
        return [p for p in self.packages if p.is_root]


def _read(path: Path, limit: int) -> tuple[bytes, FileStamp]:
    """The file's bytes and the stamp of exactly those bytes (one open: a rename onto it cannot mix two).

    A FIFO, device, folder or symlink loop is a LockError at once, never an open that blocks.
    """
    data, st = read_bytes(path, limit, error=LockError)
    return data, FileStamp(hashlib.sha256(data).hexdigest(), st.st_ino, st.st_mtime_ns, st.st_size)


def file_stamp(path: Path) -> FileStamp:
    """The stamp of the file at `path` now (sha256 None when there is none or it cannot be read)."""
    try:
        return _read(path, MAX_LOCK_BYTES)[1]
    except (OSError, LockError):
        return FileStamp(None)


def read_lock(path: Path) -> Lock:
    """Parse the uv.lock at `path`; any problem is a LockError naming the file."""
    try:
        raw, stamp = _read(path, MAX_LOCK_BYTES)
        data = tomllib.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise LockError(f"{path}: no such uv.lock (run `uv lock` in the project first)") from None
    except tomllib.TOMLDecodeError as exc:
        raise LockError(f"{path}: not valid TOML ({exc}); is the lock truncated? `uv lock` writes it anew") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LockError(f"{path}: cannot read: {exc}") from None
    return dataclasses.replace(parse_lock(data, path), stamp=stamp)


def parse_lock(data: dict[str, Any], path: Path) -> Lock:
    """Build a Lock from already-parsed TOML."""
    if not isinstance(data.get("version"), int):
        raise LockError(f"{path}: not a uv.lock (no integer `version` at the top)")
    raw_packages = data.get("package", [])
    if not isinstance(raw_packages, list):
        raise LockError(f"{path}: `package` must be an array of tables")
    packages = tuple(_package(raw, path, i) for i, raw in enumerate(raw_packages))
    rp = data.get("requires-python")
    return Lock(path=path, requires_python=rp if isinstance(rp, str) else None, packages=packages,
                conflicts=_conflicts(data.get("conflicts")))


def _conflicts(value: Any) -> tuple[tuple[ConflictItem, ...], ...]:
    # uv writes `[tool.uv] conflicts` at the top of the lock, each item naming its package.
    out = []
    for group in _list(value):
        items = []
        for item in _list(group):
            if not isinstance(item, dict):
                continue
            pkg, extra, grp = item.get("package"), item.get("extra"), item.get("group")
            items.append(ConflictItem(
                package=canonicalize_name(pkg) if isinstance(pkg, str) else None,
                extra=extra if isinstance(extra, str) else None,
                group=grp if isinstance(grp, str) else None,
            ))
        if items:
            out.append(tuple(items))
    return tuple(out)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


_SOURCE_KINDS = ("registry", "url", "git", "path", "directory", "editable", "virtual")


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
    kind = next((k for k in _SOURCE_KINDS if k in source), "registry")
    registry, url = source.get("registry"), source.get("url")
    for key, value in (("registry", registry), ("url", url)):
        if value is not None and not isinstance(value, str):
            raise LockError(f"{where}: `source.{key}` must be a string")
        if value is not None and _is_remote(value) and not one_line(value):
            raise LockError(f"{where}: refusing `source.{key}` {scrub(repr(value))}: it holds whitespace or a control character")
    is_root = kind in ("virtual", "editable") or source.get("directory") == "."
    local = source.get(kind) if kind in ("path", "directory", "editable", "virtual") else None
    wheels: tuple[LockedWheel, ...] = ()
    # Only wheels served over http(s) are fetched; a registry may also be a local folder (find-links).
    remote = registry if registry is not None and _is_remote(registry) else None
    if remote is not None or (url is not None and _is_remote(url)):
        wheels = tuple(_wheel(w, name, version, where) for w in _list(raw.get("wheels")))
    return LockedPackage(
        name=canonicalize_name(name),
        version=version,
        registry=remote,
        is_root=is_root,
        wheels=wheels,
        url=url if url is not None and _is_remote(url) else None,
        source=kind,
        has_sdist=isinstance(raw.get("sdist"), dict),
        local=local if isinstance(local, str) else None,
        urls=_urls(source, raw),
    )


def _urls(source: dict[str, Any], raw: dict[str, Any]) -> tuple[str, ...]:
    """The network URLs of one `[[package]]`: registry, url or git source, sdist, wheels."""
    found = [source.get(k) for k in ("registry", "url", "git")]
    sdist = raw.get("sdist")
    found.append(sdist.get("url") if isinstance(sdist, dict) else None)
    found += [w.get("url") for w in _list(raw.get("wheels")) if isinstance(w, dict)]
    return tuple(dict.fromkeys(u for u in found if isinstance(u, str) and "://" in u and not u.startswith("file:")))


def _is_remote(location: str) -> bool:
    return urlsplit(location).scheme in ("http", "https")


def _wheel(raw: Any, name: str, version: str, where: str) -> LockedWheel:
    if not isinstance(raw, dict):
        raise LockError(f"{where}: a wheel entry is not a table")
    url, hash_ = raw.get("url"), raw.get("hash")
    if not isinstance(url, str):
        raise LockError(f"{where}: a wheel has no url")
    filename = check_wheel_url(url, name, version, where)
    declared = raw.get("filename")
    if declared is not None and declared != filename:
        raise LockError(f"{where}: wheel {filename!r} does not match its url")
    size = raw.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise LockError(f"{where}: wheel {filename} has an invalid size {size!r}")
    return LockedWheel(url=url, filename=filename, sha256=_sha256(hash_, filename, where), size=size)


def _sha256(hash_: Any, filename: str, where: str) -> str | None:
    """The sha256 hex of a lock's `hash`; None when there is none (nightly indexes, some mirrors)."""
    if hash_ is None:
        return None
    algorithm = hash_.partition(":")[0] if isinstance(hash_, str) else ""
    if algorithm in ("md5", "sha384", "sha512"):
        return None  # a hash warmd does not check: the wheel is left to uv like an unhashed one
    m = _SHA256.match(hash_) if isinstance(hash_, str) else None
    if m is None:
        raise LockError(f"{where}: wheel {filename} has a malformed hash {hash_!r}")
    return m.group(1).lower()


def one_line(text: str) -> bool:
    """True when `text` holds no whitespace and no control character: it cannot end a line of a
    requirements file or a TOML string, nor start an option there (urlsplit drops tabs and line
    breaks silently, so a URL must be checked before it is parsed)."""
    return not any(c.isspace() or ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in text)


def check_wheel_url(url: str, name: str, version: str, where: str) -> str:
    """Return the wheel filename of `url`, or raise LockError if it is not a plain http(s) wheel of `name`."""
    if not one_line(url):
        raise LockError(f"{where}: refusing wheel url {scrub(repr(url))}: it holds whitespace or a control character")
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
