"""The plan: which wheels `uv sync` of a project installs on this machine for the variant, asked of uv.

uv decides extras, groups, conflicts and workspace members itself: `uv export` of the lock prints
every package a sync with given flags could install, each with a plain PEP 508 marker. The plan
evaluates those markers for this platform and each Python, keeps the configured package globs if any,
and maps every line back to its `[[package]]` in uv.lock for the wheel files, hashes and sizes.
By default every wheel of the sync is planned (the `packages` globs narrow it); what uv builds
from the project's own folders with a backend from the network is named as skipped, with why.
The variant picks the flags: the extra or group of `[tool.uv] conflicts` that brings that build,
whatever it is called and whatever its GPU stack (stacks.py). Nothing here writes anything or
uses the network.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

from loguru import logger

from ..base import (
    GPU_PACKAGES, Cancelled, Config, FileStamp, InputError, Pin, ProjectReport, ProjectSettings, Skipped, WarmdError,
    read_toml,
)
from ..uv import LOCK, PYPROJECT, Project, Uv, file_stamp, read_lock
from .builds import build_skips, local_builds
from .choice import _choose
from .export import _LockIndex
from .inputs import allowed_pythons, check_inputs, check_names, pinned_python, requires_python
from .target import Target, _entry, _marker_env, _tag_order
from .variant import Detection, resolve_variant

if TYPE_CHECKING:
    from packaging.specifiers import SpecifierSet

    from ..uv import Interpreter

# A plan reads these files (uv export reads pyproject.toml too): one rewritten while it was being
# planned means the plan may mix two versions, so it is made again, this many times at most.
PLAN_INPUTS = (LOCK, PYPROJECT, ".python-version")
PLAN_ATTEMPTS = 3


# -- what the plan is made of ------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanOptions:
    """What planning takes from the config."""

    packages: tuple[str, ...] | None  # name globs worth warming; None: every wheel the sync installs
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


# -- the config's settings for a project ---------------------------------------------------------------


def project_variant(options: PlanOptions, folder: Path, detection: Detection) -> Detection:
    """The variant of one project: its `[[project]]` table's, else the global (detected) one."""
    settings = options.settings(folder)
    if settings is None or settings.variant is None or settings.variant == "auto":
        return detection
    return resolve_variant(settings.variant)


def matches(name: str, patterns: Iterable[str] | None) -> bool:
    """True when a normalized package name matches one of the configured globs (None: every name does)."""
    return patterns is None or any(fnmatch.fnmatchcase(name, p.lower().replace("_", "-")) for p in patterns)


def is_gpu(name: str) -> bool:
    """True for a wheel of a GPU stack (base's GPU_PACKAGES): those are fetched before the rest of a plan."""
    return matches(name, GPU_PACKAGES)


# -- the plan ----------------------------------------------------------------------------------------------


def plan_project(project: Project, *, uv: Uv, options: PlanOptions, detection: Detection,
                 target: Target | None = None) -> ProjectPlan:
    """Plan one project: the variant's flags, its Pythons, and the wheels a `uv sync` with them installs here.

    Reads the project's files and asks the user's uv (offline); writes nothing. Raises InputError
    (LockError) for a lock or project uv or warmd cannot read, or a folder that is not there.
    """
    target = target or Target.here()
    folder = project.checked().folder
    lock = read_lock(project.lock)
    pyproject = read_toml(project.pyproject) or {}  # not TOML: InputError naming it, before uv reads it
    check_inputs(folder, lock, pyproject)  # before uv reads any of them
    settings = options.settings(folder)
    variant = project_variant(options, folder, detection)
    spec = requires_python(lock)  # before uv sees it: uv runs a file an interpreter request names
    check_names(lock, pyproject)
    # uv's export does not depend on the Python: it runs while uv looks up the interpreter (which
    # `warmd prefetch` has started ahead, Uv.interpreter_soon), and the choice waits for the lookup
    # only once it evaluates the export's markers.
    pythons = functools.cache(lambda: _pythons(folder, spec, uv, options.pythons, target))
    index = _LockIndex(lock)
    choice = _choose(uv, folder, lock, index, pyproject, settings, variant, lambda: pythons().first_env)
    versions, interpreters, envs = pythons().versions, pythons().interpreters, pythons().envs
    # The whole sync (the default) also names what uv builds from the project's folders.
    whole = options.packages is None
    builds = local_builds(folder, lock, choice.lines, envs[versions[0]], uv.version) if whole else []
    pins: dict[tuple[str, str], Pin] = {}
    skipped: dict[tuple[str, str, str], Skipped] = {}
    for py in versions:
        order = _tag_order(py, target.platform_tags)
        for line in choice.lines:
            if line.name is None or not matches(line.name, options.packages) or not line.applies(envs[py]):
                continue
            entry = _entry(index.find(line), line, py, order)
            if isinstance(entry, Pin):
                pins.setdefault((entry.wheel.sha256, py), entry)
            else:
                skipped.setdefault((entry.name, entry.version, py), entry)
        for entry in build_skips(builds, py):
            skipped.setdefault((entry.name, entry.version, py), entry)
    return ProjectPlan(
        project=folder,
        lock=project.lock,
        variant=variant.variant,
        chosen_by=choice.chosen_by,
        extras=choice.extras,
        groups=choice.groups,
        flags=choice.flags,
        pythons=versions,
        interpreters={py: (i.path if i else None) for py, i in interpreters.items()},
        pins=tuple(sorted(pins.values(), key=lambda p: (p.python, p.name, p.version))),
        skipped=tuple(sorted(skipped.values(), key=lambda s: (s.python, s.name, s.version))),
        notes=choice.notes,
        lock_packages=frozenset(p.name for p in lock.packages),
        lock_stamp=lock.stamp,
    )


@dataclass(frozen=True)
class _Pythons:
    versions: tuple[str, ...]  # the project's own first
    interpreters: Mapping[str, Interpreter | None]
    envs: Mapping[str, Mapping[str, str]]  # marker environment of each version

    @property
    def first_env(self) -> Mapping[str, str]:
        return self.envs[self.versions[0]]


def _pythons(folder: Path, spec: SpecifierSet | None, uv: Uv, configured: Sequence[str], target: Target) -> _Pythons:
    """The Pythons to plan for: the one uv would use for the project (.python-version's, else the
    interpreter uv finds for its requires-python, which then also serves its version: one lookup,
    not two), then the configured ones its requires-python allows."""
    own = pinned_python(folder)
    found = uv.interpreter(str(spec) if spec else None) if own is None else None
    own = own or (found.version if found else None)
    versions = allowed_pythons([own, *configured] if own else list(configured), spec)
    if not versions:
        raise InputError(f"{folder}: no Python version to select wheels for (no .python-version, "
                         "no interpreter uv would use, no `python` in the config)")
    interpreters = {py: found if found is not None and found.version == py else uv.interpreter(py) for py in versions}
    return _Pythons(tuple(versions), interpreters,
                    {py: _marker_env(py, interpreters[py], target) for py in versions})


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

    def plan(self, project: Project) -> ProjectPlan:
        """One project's plan, made while its files stood still (raises InputError on a bad lock or project).

        A uv.lock (or pyproject.toml, .python-version) rewritten while it was planned is planned
        again, also when the plan failed on it; one that keeps changing raises Cancelled.
        """
        folder = project.folder
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
        copy = Project.of(folder)
        settings = ProjectSettings(path=copy.folder, variant=like.variant, extras=like.extras,
                                   groups=like.groups, no_default_groups=bool(own and own.no_default_groups),
                                   all_packages=bool(own and own.all_packages))
        options = dataclasses.replace(self.options, projects=(settings,))
        return plan_project(copy, uv=self.uv, options=options, detection=self.detection)

    def plan_all(self, projects: Sequence[Project]) -> tuple[list[ProjectPlan], list[ProjectReport]]:
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

    def failure(self, project: Project, exc: Exception) -> ProjectReport:
        """The report of a project that could not be planned or run."""
        return ProjectReport(project=project.folder, lock=project.lock,
                             variant=project_variant(self.options, project.folder, self.detection).variant,
                             python=(), error=str(exc), error_is_input=isinstance(exc, InputError),
                             stamp=project.lock_stamp())

    def superseded(self, project: Project, reason: str) -> ProjectReport:
        """The report of a project whose work was called off before it said anything (not a failure)."""
        return ProjectReport(project=project.folder, lock=project.lock,
                             variant=project_variant(self.options, project.folder, self.detection).variant,
                             python=(), superseded=reason)


def _inputs(folder: Path) -> tuple[FileStamp, ...]:
    return tuple(file_stamp(folder / name) for name in PLAN_INPUTS)
