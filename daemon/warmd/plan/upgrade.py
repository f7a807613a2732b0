"""The would-be lock of an upgrade: what `uv lock --upgrade-package P` would write for a project,
computed by the user's uv in a scratch copy. The project itself is only read, and none of its code
runs (docs/SECURITY.md).

What `uv lock` reads, and so what is copied, each at its place relative to the others (a path
dependency `../lib` is beside the copy as it is beside the project):
- the project's pyproject.toml, uv.lock, uv.toml and .python-version;
- the pyproject.toml, uv.toml and .python-version of every local package the lock names (workspace
  members, path and editable dependencies: their `source` in uv.lock); a local archive
  (`source = { path = "x.whl" }`) is linked;
- the nearest uv.toml (or pyproject.toml with `[tool.uv]`) above the project, which uv reads as
  project configuration. User and system uv.toml files and UV_* variables uv finds by itself.
A path dependency given by an absolute path stays where it is; uv reads it there, as it would.

No build: uv builds a package whose metadata is dynamic to learn it, and `--no-build` does not stop
it for a workspace member (uv 0.13.9 and 0.8.2 ran a member's build backend with it; only other
sources are refused). So a project with such a local package is not locked at all (NeedsBuild,
`needs to build X`), and `--no-build` refuses the rest (sdists). Only files are copied, never a
package's code: nothing in the copy could be built.

The project's uv settings are untrusted: the copy's pyproject.toml and uv.toml keep only what
decides the resolution (RESOLUTION_SETTINGS: indexes, sources, workspace, conflicts, constraints
...), so a project's `cache-dir`, `http-proxy`, `allow-insecure-host`, `keyring-provider`, build
settings or Python download settings never reach the lock. An empty workspace root above the copy
keeps uv from walking up into TMPDIR for a workspace or a configuration someone else put there.

The copy also gets uv's per-index `cache-control` files override for the indexes of the packages
looked ahead for (in its pyproject.toml and uv.toml files; an index only the user's own uv.toml
declares keeps uv's default, and its metadata is fetched again by the user's lock), so that the wheel metadata uv reads while locking (Range requests to a no-store
index) stays in the user's uv cache: the user's own `uv lock --upgrade-package` later reads it
from there and sends no wheel request at all. It changes what uv keeps, never what it resolves.

Exact pins move together: a project that pins the packages looked ahead for with `==` (the GPU
family: `torch==2.8.0+rocm6.3` with its torchvision, torchaudio, triton and flash-attn builds)
allows no upgrade, so `--upgrade-package` alone would find none. In the copy (never the project)
each such pin becomes `>=` its public version (`torch>=2.8.0`), so uv locks the newest release the
same index offers that the family resolves to together; the look-ahead keeps it only when the
local label (the variant's build: `+rocm6.3`) is the pin's (warm.ahead). The user's own bump of the
pins to those versions then locks the same wheels.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Sequence

import tomlkit
from loguru import logger
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from ..base import InputError, NeedsBuild, WarmdError, untrusted, write_atomic
from ..uv import MAX_LOCK_BYTES, Lock, Uv, add_cache_control, dig, read_settings, requirement_urls, settings_urls
from .planner import matches

_READS = ("pyproject.toml", "uv.toml", ".python-version")  # what uv reads of a local package
# The uv settings (in [tool.uv] or a uv.toml) that decide what `uv lock` resolves; the copy keeps
# these only. Everything else a project may set (uv 0.13.9 accepts some 90 keys there) changes
# where uv writes (cache-dir), what it runs or downloads (build and python-* settings), where its
# requests and credentials go (http-proxy, https-proxy, no-proxy, allow-insecure-host,
# keyring-provider, native-tls) or nothing a lock depends on; a key uv adds later is left out too.
RESOLUTION_SETTINGS = frozenset({
    "index", "index-url", "extra-index-url", "no-index", "find-links", "index-strategy", "resolution",
    "prerelease", "fork-strategy", "dependency-metadata", "exclude-newer", "exclude-newer-package", "no-sources",
    "no-build", "no-build-package", "no-binary", "no-binary-package", "override-dependencies",
    "exclude-dependencies", "constraint-dependencies", "environments", "required-environments",
    "minimum-libc-version", "conflicts", "workspace", "sources", "managed", "package", "default-groups",
    "dependency-groups", "dev-dependencies",
})


def would_be_lock(uv: Uv, folder: Path, lock: Lock, packages: Sequence[str], dest: Path, *, python: str,
                  pass_fds: Sequence[int] = ()) -> Path | None:
    """Copy the project into `dest` and have uv lock it with `--upgrade-package` for the lock's packages
    matching `packages`; the copy's folder, holding the would-be uv.lock, or None when none matches.
    `python`: the interpreter (or version) uv locks with.

    Raises NeedsBuild when uv would have to build a package to lock it (nothing was run),
    IndexUnreachable when an index is down or slow, UvError when uv refuses, WarmdError when the
    project cannot be copied.
    """
    names = _looked_ahead(lock, packages)
    if not names:
        return None
    built = must_build(folder, lock)
    if built:
        raise NeedsBuild(built)
    moving = _moving(untrusted.read_toml(Path(os.path.abspath(folder)) / "pyproject.toml"), lock, names)
    names = sorted(set(names) | moving)
    try:
        copy = copy_for_lock(folder, lock, dest)
    except OSError as exc:  # a full TMPDIR, a file that vanished mid-copy: the project itself is fine
        raise WarmdError(f"{folder}: cannot copy what `uv lock` reads into {dest}: "
                         f"{exc.strerror or exc}{f' ({exc.filename})' if exc.filename else ''}") from None
    registries = {p.registry for p in lock.packages if p.registry and p.name in names}
    for config in _uv_configs(dest):
        dropped = _resolution_only(config)
        if dropped:
            logger.debug("{}: left out of the look-ahead's copy (untrusted uv settings): {}", config, ", ".join(dropped))
        if config.name == "pyproject.toml":
            moved = _move_pins(config, moving)
            if moved:
                logger.debug("{}: exact pins moved in the look-ahead's copy: {}", config, ", ".join(moved))
        try:
            add_cache_control(config, sorted(registries))
        except ValueError as exc:  # tomlkit refuses a file uv reads: the lock comes out the same, uv keeps less
            logger.debug("{}: no cache-control override in the look-ahead's copy: {}", config, exc)
    uv.lock_upgrade(copy, names, python=python, no_venv=dest / ".no-venv", pass_fds=pass_fds)
    return copy


def must_build(folder: Path, lock: Lock) -> list[str]:
    """The local packages of the lock that uv would have to build (run their code) to lock the project.

    A workspace member, the project itself, a path or editable dependency whose pyproject.toml
    gives no static metadata (needs_build), and a local source archive (an sdist). Each is read as
    uv would read it; one that cannot be read is an InputError naming it.
    """
    folder = Path(os.path.abspath(folder))
    out: list[str] = []
    places = [(folder, None)] + [(Path(os.path.normpath(folder / p.local)), p) for p in lock.packages
                                  if p.local is not None and p.source in ("editable", "virtual", "directory", "path")]
    seen: set[Path] = set()
    for where, pkg in places:
        if where in seen:
            continue
        seen.add(where)
        if pkg is not None and pkg.source == "path":
            if not where.name.endswith(".whl"):
                out.append(pkg.name)  # an sdist: only a build tells its metadata
            continue
        pyproject = untrusted.read_toml(where / "pyproject.toml")
        if needs_build(pyproject):
            name = dig(pyproject, "project", "name")
            out.append(str(name) if isinstance(name, str) else pkg.name if pkg is not None else where.name)
    return sorted(dict.fromkeys(out))


def exact_pins(folder: Path, lock: Lock, packages: Sequence[str]) -> list[str]:
    """The `==` pins of the project's pyproject.toml that the look-ahead's copy moves, as written
    (`torch==2.8.0+rocm6.3`); an unreadable file: none."""
    try:
        pyproject = untrusted.read_toml(Path(os.path.abspath(folder)) / "pyproject.toml")
    except InputError:
        return []
    moving = _moving(pyproject, lock, _looked_ahead(lock, packages))
    return [req for _items, req in _requirements(pyproject) if _moved(req, moving) is not None]


def _looked_ahead(lock: Lock, packages: Sequence[str]) -> list[str]:
    """The lock's registry packages matching `[ahead] packages`: those `--upgrade-package` names."""
    return sorted({p.name for p in lock.packages if not p.is_root and p.local is None and matches(p.name, packages)})


def copy_for_lock(folder: Path, lock: Lock, dest: Path) -> Path:
    """Copy what `uv lock` in `folder` reads into `dest`, keeping relative places; returns the copy of `folder`.

    Files only (regular ones, read without ever blocking), never a package's code; above them, an
    empty workspace root at `dest`, where uv's walk up from the copy ends.
    """
    folder = Path(os.path.abspath(folder))
    packages: set[Path] = {folder}
    archives: set[Path] = set()
    for pkg in lock.packages:
        if pkg.local is None or os.path.isabs(pkg.local):
            continue  # an absolute path is read where it is, by the copy as by the project
        where = Path(os.path.normpath(folder / pkg.local))
        (archives if pkg.source == "path" else packages).add(where)
    config = _config_above(folder)
    anchor = Path(os.path.commonpath([str(p) for p in (*packages, *archives, *([config.parent] if config else []))]))

    def mirror(path: Path) -> Path:
        # Named after the common folder, so the copy of `folder` ends in the project's own name.
        return dest / (anchor.name or "root") / path.relative_to(anchor)

    for pkg_folder in sorted(packages):
        _copy_package(pkg_folder, mirror(pkg_folder))
    for archive in sorted(archives):
        mirror(archive).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(archive, mirror(archive))  # uv only reads a local wheel or sdist
    if config is not None:
        _copy_file(config, mirror(config))
    copy = mirror(folder)
    _copy_file(folder / "uv.lock", copy / "uv.lock", limit=MAX_LOCK_BYTES)
    # uv looks for a workspace root and for configuration in every folder above the project: this
    # one ends both walks inside warmd's scratch folder (TMPDIR is shared with other users).
    (dest / "pyproject.toml").write_text("[tool.uv.workspace]\nmembers = []\n", encoding="utf-8")
    return copy


def contacts(folder: Path, lock: Lock) -> list[tuple[str, str, str | None]]:
    """What `uv lock` in `folder` may connect to: (URL, the file naming it, the registry it belongs
    to). Every URL of the lock; the indexes, find-links, url/git sources and direct-URL requirements
    (`name @ url`: uv.settings.requirement_urls) of the project's, its local packages' and the
    configuration above's pyproject.toml and uv.toml: a lock that is not up to date with them is
    resolved anew from them. The user's own uv configuration is not listed: the guard vouches for it."""
    folder = Path(os.path.abspath(folder))
    out: list[tuple[str, str, str | None]] = [(u, str(lock.path), p.registry) for p in lock.packages for u in p.urls]
    places = [folder] + [Path(os.path.normpath(folder / p.local)) for p in lock.packages
                         if p.local is not None and p.source != "path"]
    files = [f for d in dict.fromkeys(places) for f in (d / "pyproject.toml", d / "uv.toml")]
    above = _config_above(folder)
    if above is not None:
        files.append(above)
    for f in files:
        data = read_settings(f)
        settings = data if f.name == "uv.toml" else dig(data, "tool", "uv")
        pyproject = data if f.name == "pyproject.toml" else None
        urls = settings_urls(settings) + requirement_urls(pyproject, settings)
        # a file: URL is read from this machine's disk, as a path source is: no host to ask about
        out += [(u, str(f), None) for u in urls if "://" in u and not u.lower().removeprefix("git+").startswith("file:")]
    return out


def _uv_configs(dest: Path) -> list[Path]:
    """The pyproject.toml and uv.toml files of a copy, where uv finds the indexes it locks against."""
    found = []
    for where, dirs, files in os.walk(dest):  # never into a symlinked folder: that is not the copy's
        found += [Path(where) / f for f in sorted(files) if f in ("pyproject.toml", "uv.toml")
                  and Path(where) != dest]  # dest's own is warmd's empty workspace root
    return found


def _resolution_only(config: Path) -> list[str]:
    """Rewrite a copied pyproject.toml or uv.toml to keep of its uv settings only RESOLUTION_SETTINGS
    (and of a pyproject.toml its [project], [dependency-groups] and [build-system]); the keys left out.

    The copy is warmd's own scratch file: it is written anew, comments and layout are not kept.
    """
    try:
        data = tomllib.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return []  # uv refuses it as it is: nothing in it is applied
    if config.name == "uv.toml":
        settings, kept = data, {}
    else:
        settings = dig(data, "tool", "uv") or {}
        kept = {k: v for k, v in data.items() if k in ("project", "dependency-groups", "build-system")}
    if not isinstance(settings, dict):
        settings = {}
    dropped = sorted(k for k in settings if k not in RESOLUTION_SETTINGS)
    resolution = {k: v for k, v in settings.items() if k in RESOLUTION_SETTINGS}
    if config.name == "uv.toml":
        kept = resolution
    elif resolution:
        kept["tool"] = {"uv": resolution}
    write_atomic(config, tomlkit.dumps(kept))
    return dropped


# Where a pyproject.toml lists requirements uv locks: (table path, key); each value a list of strings.
_REQUIREMENT_LISTS = (("project", "dependencies"), ("tool", "uv", "constraint-dependencies"),
                      ("tool", "uv", "override-dependencies"), ("tool", "uv", "dev-dependencies"))


def _requirements(data: dict[str, Any] | None) -> list[tuple[list[Any], str]]:
    """Every requirement string of a pyproject.toml's dependency lists, with the list holding it."""
    lists: list[Any] = [dig(data, *where) for where in _REQUIREMENT_LISTS]
    for table in (dig(data, "project", "optional-dependencies"), dig(data, "dependency-groups")):
        if isinstance(table, dict):
            lists += list(table.values())
    return [(items, req) for items in lists if isinstance(items, list) for req in items if isinstance(req, str)]


# What moves with torch when it is pinned: its companions are built for one torch release and pin it.
FAMILY = ("torch", "torchvision", "torchaudio", "triton", "pytorch-triton*", "flash-attn*")


def _exact(text: str) -> tuple[str, str] | None:
    """(name, local label) of an exact pin `name==V+label`, else None."""
    try:
        req = Requirement(text)
    except InvalidRequirement:
        return None
    specs = list(req.specifier)
    if req.url or len(specs) != 1 or specs[0].operator not in ("==", "===") or specs[0].version.endswith(".*"):
        return None
    return canonicalize_name(req.name), specs[0].version.partition("+")[2]


def _moving(pyproject: dict[str, Any] | None, lock: Lock, names: Sequence[str]) -> set[str]:
    """The packages whose exact pins move together in the copy: those looked ahead for, the rest of
    torch's FAMILY once one of it is, and any other pin of the same build (its local label)."""
    locked = {p.name for p in lock.packages if not p.is_root and p.local is None}
    pins = [e for _items, req in _requirements(pyproject) if (e := _exact(req)) is not None and e[0] in locked]
    family = any(matches(n, FAMILY) for n in names)
    moving = {n for n, _label in pins if n in names or (family and matches(n, FAMILY))}
    labels = {label for n, label in pins if n in moving and label}
    return moving | {n for n, label in pins if label in labels}


def _moved(text: str, names: set[str]) -> str | None:
    """`torch>=2.8.0 ; marker` for an exact pin `torch==2.8.0+rocm6.3 ; marker` of one of `names`, else None."""
    exact = _exact(text)  # one that does not parse: uv says what is wrong with it, as in the project
    if exact is None or exact[0] not in names:
        return None
    req = Requirement(text)
    public = next(iter(req.specifier)).version.split("+", 1)[0]
    extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
    return f"{req.name}{extras}>={public}" + (f" ; {req.marker}" if req.marker else "")


def _move_pins(config: Path, names: set[str]) -> list[str]:
    """Rewrite the copy's exact pins of `names` to `>=` their public version (module docstring); the pins moved."""
    try:
        data = tomllib.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return []
    moved = []
    for items, req in _requirements(data):
        new = _moved(req, names)
        if new is not None:
            items[items.index(req)] = new
            moved.append(req)
    if moved:
        write_atomic(config, tomlkit.dumps(data))
    return moved


def needs_build(pyproject: dict[str, Any] | None) -> bool:
    """True when uv must build a local package to know its metadata (it cannot read it from pyproject.toml).

    No pyproject.toml (a setup.py), no [project] table (unless it is a virtual workspace root: a
    [tool.uv.workspace] and no build system), or `dynamic` fields; never with `[tool.uv] package = false`.
    """
    if pyproject is None:
        return True
    if dig(pyproject, "tool", "uv", "package") is False:
        return False
    project = dig(pyproject, "project")
    if not isinstance(project, dict):
        return not (dig(pyproject, "tool", "uv", "workspace") is not None and "build-system" not in pyproject)
    return bool(project.get("dynamic"))


def _copy_package(src: Path, dst: Path) -> None:
    if not src.is_dir():
        return  # uv says what is missing, as it would in the project
    dst.mkdir(parents=True, exist_ok=True)
    for name in _READS:
        _copy_file(src / name, dst / name)


def _copy_file(src: Path, dst: Path, *, limit: int | None = None) -> None:
    """Copy a regular file of the project (read as untrusted.read_bytes reads it); nothing when there is none."""
    try:
        data, st = untrusted.read_bytes(src, limit) if limit is not None else untrusted.read_bytes(src)
    except FileNotFoundError:
        return
    except InputError as exc:
        raise WarmdError(f"the look-ahead's copy: {exc}") from None
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(data)
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))


def _config_above(folder: Path) -> Path | None:
    """The project configuration uv reads from a folder above `folder` (the nearest uv.toml, or
    pyproject.toml with `[tool.uv]`), when `folder` has none of its own."""
    for where in (folder, *folder.parents):
        if (where / "uv.toml").is_file():
            found = where / "uv.toml"
        elif dig(read_settings(where / "pyproject.toml"), "tool", "uv") is not None:
            found = where / "pyproject.toml"
        else:
            continue
        return None if where == folder else found
    return None
