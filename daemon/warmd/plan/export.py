"""uv's answer, read back: `uv export` says what a sync installs; uv.lock says which files that is."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Mapping

from packaging.markers import InvalidMarker, Marker
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from ..base import LockError
from ..uv import Lock, LockedPackage


@dataclass(frozen=True)
class _Line:
    """One package of `uv export`: `name==version ; marker`, `name @ url ; marker`, or a local path."""

    name: str | None  # normalized; None for a local path (`-e ./member`)
    version: str | None
    url: str | None
    marker: Marker | None
    hashes: frozenset[str]  # sha256 hex of the package's files, as the lock has them
    path: str | None = None  # a local path's, as uv printed it (`./libs/helper`)

    def applies(self, env: Mapping[str, str]) -> bool:
        """True when this platform and Python install it."""
        return self.marker is None or self.marker.evaluate(dict(env))


def parse_export(text: str) -> list[_Line]:
    """The packages of a `uv export --format requirements-txt` (hashes included, annotations left out)."""
    logical: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append((buf + line).strip())
        buf = ""
    if buf.strip():
        logical.append(buf.strip())
    out = []
    for entry in logical:
        if not entry or entry.startswith("#"):
            continue
        hashes = frozenset(h.lower() for h in re.findall(r"--hash=sha256:([0-9a-fA-F]{64})", entry))
        entry = re.sub(r"\s--hash=\S+", "", " " + entry).strip()
        req, _sep, marker_text = entry.partition(" ; ")
        req = req.strip()
        try:
            marker = Marker(marker_text.strip()) if marker_text.strip() else None
        except InvalidMarker:
            raise LockError(f"uv exported a marker warmd cannot read: {marker_text.strip()!r}") from None
        if req.startswith(("-", ".", "/")) or "://" in req.split(" @ ")[0]:
            path = req.removeprefix("-e").strip()  # a local path or workspace member
            out.append(_Line(None, None, None, marker, hashes, path=None if path.startswith("-") else path))
        elif " @ " in req:
            name, url = req.split(" @ ", 1)
            out.append(_Line(canonicalize_name(name.strip()), None, url.strip(), marker, hashes))
        elif "==" in req:
            name, version = req.split("==", 1)
            out.append(_Line(canonicalize_name(name.strip()), version.strip(), None, marker, hashes))
    return out


class _LockIndex:
    """Finds the `[[package]]` an export line stands for."""

    def __init__(self, lock: Lock) -> None:
        self._by_version: dict[tuple[str, str], list[LockedPackage]] = defaultdict(list)
        self._by_name: dict[str, list[LockedPackage]] = defaultdict(list)
        self._by_url: dict[str, LockedPackage] = {}
        for pkg in lock.packages:
            self._by_version[(pkg.name, _norm_version(pkg.version))].append(pkg)
            self._by_name[pkg.name].append(pkg)
            if pkg.url is not None:
                self._by_url[pkg.url] = pkg

    def find(self, line: _Line) -> LockedPackage | None:
        """The lock's package for `line`; a (name, version) held twice is told apart by its hashes."""
        if line.url is not None:
            # A wheel URL is the lock's `source.url`; a git or path source is known by its name alone.
            named = self._by_name.get(line.name or "", [])
            return self._by_url.get(line.url) or (named[0] if len(named) == 1 else None)
        found = self._by_version.get((line.name or "", _norm_version(line.version or "")), [])
        if len(found) > 1 and line.hashes:
            # One (name, version) from two indexes (nanochat's torch 2.9.1 from PyPI and /whl/cpu):
            # the files' hashes uv printed belong to one of them.
            found = [p for p in found if line.hashes & {w.sha256 for w in p.wheels if w.sha256}] or found
        return found[0] if found else None


def _norm_version(version: str) -> str:
    try:
        return str(Version(version))
    except InvalidVersion:
        return version
