"""The plan: which wheels `uv sync` of a project installs on this machine for the variant, asked of uv.

uv decides extras, groups, conflicts and workspace members itself: `uv export` of the lock prints
every package a sync with given flags could install, each with a plain PEP 508 marker. The plan
evaluates those markers for this platform and each Python, keeps the configured package globs,
and maps every line back to its `[[package]]` in uv.lock for the wheel files, hashes and sizes.
The variant picks the flags: the extra or group of `[tool.uv] conflicts` whose torch is that
build, whatever it is called. Nothing here writes anything or uses the network.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import platform as _platform
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import urlsplit

from packaging import tags as _tags
from packaging.markers import InvalidMarker, Marker
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from loguru import logger

from ..base import (
    Cancelled, Config, FileStamp, InputError, LockError, Pin, ProjectReport, ProjectSettings, Skipped, WarmdError,
    check, read_text, read_toml,
)
from ..uv import ConflictItem, Interpreter, Lock, LockedPackage, LockedWheel, Uv, dig, file_stamp, read_lock, wheel_tags
from .variant import Detection, resolve_variant

UNHASHED = "no sha256 in the lock: not verified, left to uv"
# A plan reads these files (uv export reads pyproject.toml too): one rewritten while it was being
# planned means the plan may mix two versions, so it is made again, this many times at most.
PLAN_INPUTS = ("uv.lock", "pyproject.toml", ".python-version")
PLAN_ATTEMPTS = 3

# A local version label (or the last part of an index URL) that names a GPU build.
_BUILD_LABEL = re.compile(r"^(cpu|xpu|cu\d{2,3}|rocm\d+(?:\.\d+){1,2})(?=$|\.)")
_PY_VERSION = re.compile(r"(\d+\.\d+)")  # "3.12" of a .python-version line ("3.12.4", "cpython@3.12")
# The packages whose build says which variant a choice of extras brings, most telling first.
_TORCH_FAMILY = ("torch", "torchvision", "torchaudio")
_MANYLINUX_LEGACY = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
# The glibc minors uv accepts in `--python-platform <arch>-manylinux_2_N` (0.8.2 through 0.13.x).
_UV_GLIBC_TARGETS = (17, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40)


# -- what the plan is made of ------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanOptions:
    """What planning takes from the config."""

    packages: tuple[str, ...]  # name globs worth warming
    pythons: tuple[str, ...] = ()  # Pythons to plan for besides each project's own
    variant: str = "auto"
    projects: tuple[ProjectSettings, ...] = ()  # the `[[project]]` tables
    warm_unhashed: bool = False

    @classmethod
    def from_config(cls, config: Config) -> PlanOptions:
        """The planning part of a config."""
        return cls(packages=config.packages, pythons=config.python, variant=config.variant,
                   projects=config.projects, warm_unhashed=config.warm_unhashed)

    def settings(self, folder: Path) -> ProjectSettings | None:
        """The `[[project]]` table of a project folder, if the config has one."""
        return next((s for s in self.projects if s.path == folder), None)


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


@dataclass(frozen=True)
class ProjectPlan:
    """What `uv sync` of one project installs here for its variant, and which of it warmd warms."""

    project: Path  # the folder holding uv.lock
    lock: Path
    variant: str  # the build being warmed, in uv's names ("cu128")
    chosen_by: str  # how the extras and groups were chosen, one sentence
    extras: tuple[str, ...]
    groups: tuple[str, ...]
    flags: tuple[str, ...]  # the `uv sync` flags that select them (the probe passes the same)
    pythons: tuple[str, ...]
    interpreters: Mapping[str, Path | None]  # Python -> the interpreter uv finds for it here
    pins: tuple[Pin, ...]  # hashed wheels: fetched, verified, handed to uv
    skipped: tuple[Skipped, ...]  # what the sync installs from the globs but warmd does not fetch
    notes: tuple[str, ...] = ()  # what the user may want to settle (an ambiguous choice ...)
    lock_packages: frozenset[str] = field(default_factory=frozenset)  # every package name in the lock
    lock_stamp: FileStamp | None = None  # the uv.lock as it was read for this plan

    def is_current(self) -> bool:
        """True while uv.lock is still the very file this plan was made from."""
        return self.lock_stamp is not None and file_stamp(self.lock) == self.lock_stamp


# -- paths and settings --------------------------------------------------------------------------------


def project_folder(path: Path) -> Path:
    """The project folder a path names: the folder itself, or the one holding the uv.lock or file given."""
    path = path.expanduser().absolute()
    return path.parent if path.name in ("uv.lock", "pyproject.toml") or path.is_file() else path


def locate(path: Path) -> tuple[Path, Path]:
    """(project folder, its uv.lock) for a path a user gave; InputError when the folder does not exist."""
    folder = project_folder(path)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such project folder")
    return folder, folder / "uv.lock"


def pinned_python(folder: Path) -> str | None:
    """The Python version ("3.12") the project's .python-version pins, if it pins one (read as uv reads it).

    Only the version is taken: a path there names the project's own interpreter, which warmd
    never runs. InputError when the file is there but not a regular file warmd can read.
    """
    try:
        text = read_text(folder / ".python-version")
    except FileNotFoundError:
        return None
    except OSError:
        return None  # gone between the check and the read; uv finds what it finds
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            m = _PY_VERSION.search(line)
            if m:
                return m.group(1)
    return None


# A workspace's members are expanded by uv from these globs; reading a member's pyproject.toml that
# is a FIFO would block uv. Matches past this many are not looked at (uv would not get that far either).
_MAX_MEMBERS = 10_000


def check_inputs(folder: Path, lock: Lock, pyproject: Mapping[str, Any]) -> None:
    """Raise InputError naming the first file uv reads for this project that is not a regular file.

    Run before uv is asked anything about the project: uv reads the project's pyproject.toml,
    uv.toml and .python-version, the uv.toml or pyproject.toml of every folder above it, and the
    members of its workspace: its own (those the lock names and those its globs match now), or the
    one declared above it, whose root's .python-version it reads too. A FIFO among them would keep
    uv waiting until its timeout. Only the pyproject.toml files above are read (never blocking).
    """
    for name in ("pyproject.toml", "uv.toml", ".python-version"):
        check(folder / name)
    for above in folder.parents:
        for name in ("uv.toml", "pyproject.toml"):
            check(above / name)
    members = {Path(os.path.normpath(folder / p.local)) for p in lock.packages
               if p.local is not None and p.source in ("editable", "virtual", "directory")}
    members |= _members(folder, pyproject)
    root = _workspace_above(folder)
    if root is not None:
        where, table = root
        members |= _members(where, table)
        for between in (folder, *folder.parents):
            check(between / ".python-version")
            if between == where:
                break
    for member in sorted(members):
        if member != folder:
            for name in ("pyproject.toml", "uv.toml"):
                check(member / name)


def _members(root: Path, pyproject: Mapping[str, Any]) -> set[Path]:
    """The folders the `[tool.uv.workspace] members` globs of `root`'s pyproject.toml match now."""
    found: set[Path] = set()
    globs = dig(pyproject, "tool", "uv", "workspace", "members")
    for pattern in globs if isinstance(globs, list) else []:
        if not isinstance(pattern, str) or not pattern or os.path.isabs(pattern):
            continue
        try:
            for i, match in enumerate(root.glob(pattern)):
                if i >= _MAX_MEMBERS:
                    break
                found.add(match)
        except (OSError, ValueError, NotImplementedError):
            continue  # a pattern Python's glob cannot follow: uv says what it makes of it
    return found


def _workspace_above(folder: Path) -> tuple[Path, dict[str, Any]] | None:
    """The workspace root above `folder` and its pyproject.toml, found as uv finds it: the nearest
    pyproject.toml above with a `[tool.uv.workspace]`; one with a `[project]` and none ends the search."""
    for above in folder.parents:
        try:
            data = read_toml(above / "pyproject.toml")
        except InputError:
            return None  # uv stops there too, saying what is wrong with it
        if data is None:
            continue
        if dig(data, "tool", "uv", "workspace") is not None:
            return above, data
        if "project" in data:
            return None
    return None


def project_variant(options: PlanOptions, folder: Path, detection: Detection) -> Detection:
    """The variant of one project: its `[[project]]` table's, else the global (detected) one."""
    settings = options.settings(folder)
    if settings is None or settings.variant is None or settings.variant == "auto":
        return detection
    return resolve_variant(settings.variant)


def matches(name: str, patterns: Iterable[str]) -> bool:
    """True when a normalized package name matches one of the configured globs."""
    return any(fnmatch.fnmatchcase(name, p.lower().replace("_", "-")) for p in patterns)


# -- the plan ----------------------------------------------------------------------------------------------


def plan_project(path: Path, *, uv: Uv, options: PlanOptions, detection: Detection,
                 target: Target | None = None) -> ProjectPlan:
    """Plan one project: the variant's flags, its Pythons, and the wheels a `uv sync` with them installs here.

    Reads the project's files and asks the user's uv (offline); writes nothing. Raises InputError
    (LockError) for a lock or project uv or warmd cannot read.
    """
    target = target or Target.here()
    folder, lock_path = locate(path)
    lock = read_lock(lock_path)
    pyproject = read_toml(folder / "pyproject.toml") or {}  # not TOML: InputError naming it, before uv reads it
    check_inputs(folder, lock, pyproject)  # before uv reads any of them
    settings = options.settings(folder)
    variant = project_variant(options, folder, detection)
    # The Python uv would use for the project: .python-version's, else the interpreter uv finds
    # for its requires-python, which then also serves its version (one lookup, not two: ~0.05 s each).
    spec = requires_python(lock)  # before uv sees it: uv runs a file an interpreter request names
    check_names(lock, pyproject)
    own = pinned_python(folder)
    found = uv.interpreter(str(spec) if spec else None) if own is None else None
    own = own or (found.version if found else None)
    pythons = allowed_pythons([own, *options.pythons] if own else list(options.pythons), spec)
    if not pythons:
        raise InputError(f"{folder}: no Python version to select wheels for (no .python-version, "
                         "no interpreter uv would use, no `python` in the config)")
    interpreters = {py: found if found is not None and found.version == py else uv.interpreter(py)
                    for py in pythons}
    envs = {py: _marker_env(py, interpreters[py], target) for py in pythons}
    index = _LockIndex(lock)
    choice = _choose(uv, folder, lock, index, pyproject, settings, variant, envs[pythons[0]])
    pins: dict[tuple[str, str], Pin] = {}
    skipped: dict[tuple[str, str, str], Skipped] = {}
    for py in pythons:
        order = _tag_order(py, target.platform_tags)
        for line in choice.lines:
            if line.name is None or not matches(line.name, options.packages) or not line.applies(envs[py]):
                continue
            entry = _entry(index.find(line), line, py, order)
            if isinstance(entry, Pin):
                pins.setdefault((entry.wheel.sha256, py), entry)
            else:
                skipped.setdefault((entry.name, entry.version, py), entry)
    return ProjectPlan(
        project=folder,
        lock=lock_path,
        variant=variant.variant,
        chosen_by=choice.chosen_by,
        extras=choice.extras,
        groups=choice.groups,
        flags=choice.flags,
        pythons=tuple(pythons),
        interpreters={py: (i.path if i else None) for py, i in interpreters.items()},
        pins=tuple(sorted(pins.values(), key=lambda p: (p.python, p.name, p.version))),
        skipped=tuple(sorted(skipped.values(), key=lambda s: (s.python, s.name, s.version))),
        notes=choice.notes,
        lock_packages=frozenset(p.name for p in lock.packages),
        lock_stamp=lock.stamp,
    )


class Planner:
    """Plans projects for one config: the variant is detected once, each project planned the same way."""

    def __init__(self, config: Config, uv: Uv) -> None:
        self.options = PlanOptions.from_config(config)
        self.uv = uv
        self._detection: Detection | None = None

    @property
    def detection(self) -> Detection:
        """The global variant, detected on first use when the config says `auto`."""
        if self._detection is None:
            self._detection = resolve_variant(self.options.variant)
            d = self._detection
            logger.info("variant {} ({}: {})", d.variant, d.source, d.detail)
        return self._detection

    def plan(self, project: Path) -> ProjectPlan:
        """One project's plan, made while its files stood still (raises InputError on a bad lock or project).

        A uv.lock (or pyproject.toml, .python-version) rewritten while it was planned is planned
        again, also when the plan failed on it; one that keeps changing raises Cancelled.
        """
        folder = project_folder(project)
        for _attempt in range(PLAN_ATTEMPTS):
            before = _inputs(folder)
            try:
                pl = plan_project(project, uv=self.uv, options=self.options, detection=self.detection)
            except WarmdError:
                if _inputs(folder) == before:
                    raise
                logger.info("{}: changed while it was read; reading it again", folder)
                continue
            if _inputs(folder) == before:
                return pl
            logger.info("{}: changed while it was planned; planning it again", folder)
        raise Cancelled(f"uv.lock kept changing while it was read ({PLAN_ATTEMPTS} tries)")

    def plan_as(self, folder: Path, like: ProjectPlan) -> ProjectPlan:
        """Plan another folder holding a copy of `like`'s project (a would-be lock) with `like`'s build.

        The variant, extras and groups are `like`'s, and so are the `[[project]]` table's other
        knobs: the copy is planned as the user's `uv sync` would sync it, not chosen afresh.
        """
        own = self.options.settings(like.project)
        settings = ProjectSettings(path=project_folder(folder), variant=like.variant, extras=like.extras,
                                   groups=like.groups, no_default_groups=bool(own and own.no_default_groups),
                                   all_packages=bool(own and own.all_packages))
        options = dataclasses.replace(self.options, projects=(settings,))
        return plan_project(folder, uv=self.uv, options=options, detection=self.detection)

    def plan_all(self, projects: Sequence[Path]) -> tuple[list[ProjectPlan], list[ProjectReport]]:
        """Plans of the projects that could be planned, and a report naming why for the others."""
        plans: list[ProjectPlan] = []
        failed: list[ProjectReport] = []
        for p in projects:
            try:
                plans.append(self.plan(p))
            except Cancelled as exc:
                failed.append(self.superseded(p, exc.reason))
            except WarmdError as exc:
                # Bad input waits for the user; anything else the daemon retries on its own.
                (logger.error if isinstance(exc, InputError) else logger.warning)("{}", exc)
                failed.append(self.failure(p, exc))
        return plans, failed

    def failure(self, project: Path, exc: Exception) -> ProjectReport:
        """The report of a project that could not be planned or run."""
        folder = project_folder(project)
        return ProjectReport(project=folder, lock=folder / "uv.lock",
                             variant=project_variant(self.options, folder, self.detection).variant, python=(),
                             error=str(exc), error_is_input=isinstance(exc, InputError),
                             stamp=file_stamp(folder / "uv.lock"))

    def superseded(self, project: Path, reason: str) -> ProjectReport:
        """The report of a project whose work was called off before it said anything (not a failure)."""
        folder = project_folder(project)
        return ProjectReport(project=folder, lock=folder / "uv.lock",
                             variant=project_variant(self.options, folder, self.detection).variant, python=(),
                             superseded=reason)


def _inputs(folder: Path) -> tuple[FileStamp, ...]:
    return tuple(file_stamp(folder / name) for name in PLAN_INPUTS)


def requires_python(lock: Lock) -> SpecifierSet | None:
    """The lock's `requires-python` as a specifier set (None when it gives none); LockError when it is not one.

    Only this parsed form reaches uv: given a path as an interpreter request, uv runs that file.
    Arbitrary equality (`===`) compares any string, a path included, so it is refused too.
    """
    raw = lock.requires_python
    if not raw:
        return None
    try:
        spec = SpecifierSet(raw)
    except InvalidSpecifier:
        raise LockError(f"{lock.path}: requires-python {raw!r} is not a valid specifier") from None
    if any(s.operator == "===" for s in spec):
        raise LockError(f"{lock.path}: requires-python {raw!r} uses `===`, which warmd does not read")
    return spec


# A package, extra or group name as PEP 508 and uv spell them: what a lock or pyproject.toml may hand
# to a uv option (`--extra`, `--no-install-package`, `--upgrade-package`); anything else could be
# read by uv as another option.
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")


def check_names(lock: Lock, pyproject: Mapping[str, Any]) -> None:
    """LockError naming the first package, extra or group name of the lock (or default group of the
    project) that is not a valid name; uv writes none such, and each may become a uv argument."""
    names = [("package", p.name) for p in lock.packages]
    names += [(kind, name) for group in lock.conflicts for item in group
              for kind, name in (("extra", item.extra), ("group", item.group)) if name is not None]
    for kind, name in names:
        if not _NAME.fullmatch(name):
            raise LockError(f"{lock.path}: {kind} name {name!r} is not a valid name")
    for group in _default_groups(pyproject):
        if not _NAME.fullmatch(group):
            raise InputError(f"{lock.path.parent / 'pyproject.toml'}: default group {group!r} is not a valid name")


def allowed_pythons(pythons: Sequence[str], spec: SpecifierSet | None) -> list[str]:
    """Keep the Python versions the lock's requires-python (`spec`) admits, in order, without repeats."""
    out: list[str] = []
    for py in pythons:
        if py in out:
            continue
        if spec is None or spec.contains(f"{py}.0", prereleases=True) or spec.contains(f"{py}.99", prereleases=True):
            out.append(py)
    return out


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
        return Skipped(pkg.name, pkg.version, python, why + ("; uv builds it from the sdist" if pkg.has_sdist else ""))
    file = wheel.file()
    if file is None:
        return Skipped(pkg.name, pkg.version, python, UNHASHED, filename=wheel.filename, url=wheel.url,
                       size=wheel.size, index=pkg.registry, platform=uv_platform(wheel.filename), unhashed=True)
    return Pin(name=pkg.name, version=pkg.version, index=pkg.registry, wheel=file, python=python,
               platform=uv_platform(wheel.filename))


# -- uv's answer: `uv export` lines ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Line:
    """One package of `uv export`: `name==version ; marker`, `name @ url ; marker`, or a local path."""

    name: str | None  # normalized; None for a local path (`-e ./member`)
    version: str | None
    url: str | None
    marker: Marker | None
    hashes: frozenset[str]  # sha256 hex of the package's files, as the lock has them

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
            out.append(_Line(None, None, None, marker, hashes))  # a local path or workspace member
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


# -- choosing the extras and groups of the variant -------------------------------------------------------


@dataclass(frozen=True)
class Build:
    """The GPU build a set of installed packages is, and what shows it."""

    variant: str  # "cu128", "rocm6.3", "cpu", or "cu12x"/"cu13x" when only the CUDA major is known
    exact: bool  # named by a local version label or an index URL, rather than inferred
    evidence: str  # "torch 2.9.1+cu128"


@dataclass(frozen=True)
class _Choice:
    extras: tuple[str, ...]
    groups: tuple[str, ...]
    flags: tuple[str, ...]
    chosen_by: str
    notes: tuple[str, ...]
    lines: list[_Line]


def build_of(packages: Sequence[LockedPackage]) -> Build | None:
    """Which build the torch of these packages is: its local label, its index, or the CUDA packages with it."""
    by_name = {p.name: p for p in packages}
    torch = next((by_name[n] for n in _TORCH_FAMILY if n in by_name), None)
    if torch is None:
        return None
    what = f"{torch.name} {torch.version}"
    label = _build_label(Version(torch.version).local or "") if _valid(torch.version) else None
    if label:
        return Build(label, True, what)
    where = torch.registry or torch.url or ""
    last = urlsplit(where).path.rstrip("/").rsplit("/", 1)[-1]
    if _BUILD_LABEL.fullmatch(last):
        return Build(last, True, f"{what} from {where}")
    # PyPI's torch: CUDA comes with it as nvidia-* packages, -cu12 suffixed up to CUDA 12, unsuffixed from 13.
    for runtime in ("nvidia-cuda-runtime-cu12", "nvidia-cuda-runtime", "nvidia-cuda-runtime-cu11"):
        if runtime in by_name and _valid(by_name[runtime].version):
            v = Version(by_name[runtime].version)
            return Build(f"cu{v.major}{v.minor}", False, f"{what} with {runtime} {by_name[runtime].version}")
    if any(n.startswith("nvidia-") and n.endswith("-cu12") for n in by_name):
        return Build("cu12x", False, f"{what} with nvidia-*-cu12")
    if any(n.startswith(("nvidia-", "cuda-")) and _valid(p.version) and Version(p.version).major >= 13
           for n, p in by_name.items()):
        return Build("cu13x", False, f"{what} with CUDA 13 nvidia-*/cuda-* packages")
    return Build("cpu", False, f"{what} without CUDA packages")


def _valid(version: str) -> bool:
    try:
        Version(version)
    except InvalidVersion:
        return False
    return True


def _build_label(local: str) -> str | None:
    m = _BUILD_LABEL.match(local)
    return m.group(1) if m else None


def build_score(build: Build | None, variant: str) -> int:
    """How well a build is that variant: 3 named exactly, 2 inferred, 1 same CUDA major, 0 not it."""
    if build is None:
        return 0
    if build.variant == variant:
        return 3 if build.exact else 2
    if build.variant in ("cu12x", "cu13x") and variant.startswith(build.variant[:4]):
        return 1
    return 0


def _choose(uv: Uv, folder: Path, lock: Lock, index: _LockIndex, pyproject: Mapping[str, Any],
            settings: ProjectSettings | None, detection: Detection, env: Mapping[str, str]) -> _Choice:
    """The extras and groups a user of this variant syncs with, uv's export for them, and why."""
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
        found = [index.find(ln) for ln in lines if ln.name is not None and ln.applies(env)]
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


# -- this platform: markers and wheel tags -----------------------------------------------------------------


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
