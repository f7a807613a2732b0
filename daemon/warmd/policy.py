"""warmd's judgements, in one place: does uv keep an index's files, what a finished run concluded,
when failed work is tried again, and which documented state a project is in.

state.py stores and reads; the answers a user gets (`warmd status`, doctor, the daemon's log)
are composed here from what it read, so every command gives the same one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .headers import HeaderCheck, cache_verdict, is_immutable_host
from .lockfile import file_stamp
from .model import AheadReport, Outcome, ProjectReport, Upgrade
from .owner import Owner
from .progress import human_bytes
from .uvconfig import Override, index_overrides, norm_url

if TYPE_CHECKING:
    from .state import AheadFile, Snapshot, State, StoredProject, StoredSkip

# The states of a project, the contract of `warmd status` (docs/status.schema.json lists the same).
STATES: dict[str, str] = {
    "warm": "every planned wheel is in uv's cache: uv itself said so at the last check of this uv.lock "
            "(but those a limit kept out, which `uv sync` still downloads: then `reason` says how many, "
            "each is `skipped` with its reason, and `flags` names them)",
    "unproven": "nothing failed, but uv could not be asked about some wheels (no interpreter for that Python)",
    "failed": "the last run for this uv.lock failed; `reason` says why, `next_retry` when the daemon tries again",
    "nothing to warm": "what `uv sync` installs holds no wheel warmd warms for this variant, or every one was "
                       "skipped: left out of the plan or past a limit (`reason` says why)",
    "queued": "the daemon will warm this uv.lock; nothing is known about it yet",
    "warming": "a warmd is warming this uv.lock now; nothing is known about it yet",
    "stale": "uv.lock changed since warmd last looked (or warming was interrupted), and no warmd has taken it up yet",
}
OUTCOMES = ("warm", "unproven", "failed", "nothing to warm")
# What a look-ahead concluded (`upgrade.state` of `warmd status --json`).
AHEAD_OUTCOMES: dict[str, str] = {
    "ready": "every wheel the would-be lock adds is warm: upgrading downloads none of them",
    "partial": "some of them are warm; the rest did not fit the look-ahead budget, or uv could not be asked",
    "none": "uv would upgrade nothing warmd warms: the project's constraints allow no newer build",
    "postponed": "not looked ahead now (an index down or slow, a metered connection, on battery); tried again later",
    "failed": "the look-ahead failed in a way waiting does not mend; `reason` says why",
    "skipped": "not looked ahead: uv would have to build a package of the project (run its code) to lock it, "
               "or `uv lock` would connect where warmd may not send it for this project; `reason` says which "
               "package, or where and how to vouch for it",
}
# The packages whose version names an upgrade best, in this order.
_HEADLINE = ("torch", "torchvision", "torchaudio", "jax", "jaxlib")


# -- does uv keep this index's files --------------------------------------------------------------------


@dataclass(frozen=True)
class Keep:
    """Whether uv keeps the wheels it downloads from one index, and why."""

    verdict: str  # "kept", "not kept", or "unknown" (no answer from the index yet)
    why: str  # one clause, e.g. "uv 0.13.9 treats files from download.pytorch.org as immutable"
    by: str  # what decided: "override", "host", "headers" or "unknown"


def uv_keeps(url: str, cache_control: str | None, *, known: bool = True, override: Override | None = None,
             uv_version: str | None = None) -> Keep:
    """Does uv keep the files of this index? The one answer for doctor, `warmd status` and the daemon.

    Weighs, in uv's order, the project's per-index `cache-control` override, uv's own immutable
    hosts (DESIGN.md fact 9), then what the files answer (`cache_control`; `known` False when the
    index has not answered yet). `url` is a wheel file of that index.
    """
    if override is not None and cache_verdict(override.files) == "kept":
        return Keep("kept", f'`cache-control = {{ files = "{override.files}" }}` in {override.where} makes uv keep '
                    "them", "override")
    host = urlsplit(url).hostname or ""
    if uv_version is not None and is_immutable_host(url, uv_version):
        return Keep("kept", f"uv {uv_version} treats files from {host} as immutable and keeps them", "host")
    if not known:
        return Keep("unknown", "its files have not been checked yet", "unknown")
    if cache_verdict(cache_control) == "kept":
        return Keep("kept", "uv keeps them", "headers")
    return Keep("not kept", "uv alone keeps no copy", "headers")


def immutable_since(url: str) -> str | None:
    """The first uv release that treats files from `url`'s host as immutable, if any does."""
    for probe in ("0.8.14", "0.9.20"):
        if is_immutable_host(url, probe):
            return probe
    return None


# -- what a run concluded, and when to try again -----------------------------------------------------------


def outcome_of(report: ProjectReport) -> Outcome:
    """The outcome a finished (not superseded) run records for its project."""
    if report.error is not None:
        return Outcome("failed", report.error, retry=not report.error_is_input)
    failed = [(w.pin.wheel.filename, w.reason) for w in report.wheels if w.state == "failed"]
    failed += [(s.skipped.filename or s.skipped.name, s.reason) for s in report.skipped if s.state == "failed"]
    if failed:
        name, why = failed[0]
        total = len(report.wheels) + sum(1 for s in report.skipped if s.state != "skipped")
        return Outcome("failed", f"{len(failed)} of {total} wheel(s) failed; {name}: {why}", retry=True)
    warm = [w for w in report.wheels if w.state == "warm"] + [s for s in report.skipped if s.state == "warm"]
    unproven = [w for w in report.wheels if w.state == "unproven"] + \
        [s for s in report.skipped if s.state == "unproven"]
    if unproven:
        first = unproven[0]
        return Outcome("unproven", f"{len(unproven)} wheel(s) unproven: {first.reason}")
    if not warm:
        limited = [w for w in report.wheels if w.state == "skipped"]
        if limited:
            return Outcome("nothing to warm", f"{len(limited)} wheel(s) skipped, past a limit; "
                           f"{limited[0].pin.wheel.filename}: {limited[0].reason}")
        left = [s for s in report.skipped if s.state == "skipped"]
        pythons = ", ".join(report.python) or "?"
        why = f"no {report.variant} GPU wheels in what `uv sync` installs for Python {pythons}"
        if left and all(s.skipped.unhashed for s in left):
            why += f"; {len(left)} without a sha256 left to uv"
        elif left:
            why = f"{len(left)} wheel(s) skipped, none warmed; {_skip_line(left[0])}"
        return Outcome("nothing to warm", why)
    limited = sum(1 for w in report.wheels if w.state == "skipped")
    return Outcome("warm", limited_words(limited) if limited else None)


def limited_words(n: int) -> str:
    """`1 wheel skipped by a limit`: what a project called warm still leaves to `uv sync`."""
    return f"{n} wheel{'s' if n != 1 else ''} skipped by a limit"


def _skip_line(s: Any) -> str:
    """`torch-2.8.0-….whl: <reason>` for a SkippedReport."""
    return f"{s.skipped.filename or s.skipped.name}: {s.reason or s.skipped.reason}"


def retry_delay(failures: int, *, first: float, cap: float) -> float:
    """Seconds before failed work is tried again: `first`, doubling with each failure in a row, at most `cap`."""
    return min(cap, first * 2 ** max(0, failures - 1))


def needs_user(report: ProjectReport) -> str | None:
    """What the user must do for the failed wheels of a run, when waiting and retrying will not do it."""
    return next((w.fix for w in report.wheels if w.state == "failed" and w.fix), None)


# -- the state of a project -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WheelStatus:
    """One pinned wheel of a project as `warmd status` shows it."""

    name: str
    version: str
    filename: str
    sha256: str
    url: str  # credentials stripped
    python: str
    platform: str
    state: str  # cold, fetching, warm, unproven, failed
    reason: str | None
    size: int | None
    bytes_downloaded: int  # from the network, summed over every run
    bytes_reused: int  # taken from the store or a resumed partial in the last run
    bytes_saved: int  # what a fresh `uv sync` no longer downloads: the size of a warm wheel
    updated_at: float | None
    warnings: tuple[str, ...] = ()  # e.g. the ETag of the pinned file changed upstream


@dataclass(frozen=True)
class IndexStatus:
    """Whether uv keeps the files of one index a project pins wheels from (uv_keeps)."""

    url: str
    verdict: str  # "kept", "not kept", or "unknown" (not checked yet)
    why: str
    cache_control: str | None
    checked_at: float | None
    error: str | None


@dataclass(frozen=True)
class UpgradeStatus:
    """The upgrade the look-ahead found for a project's current uv.lock, as `warmd status` shows it."""

    state: str  # AHEAD_OUTCOMES
    reason: str | None
    checked_at: float
    lock_sha256: str | None
    packages: tuple[Upgrade, ...]
    wheels_planned: int  # the would-be lock's wheels the project does not pin now
    wheels_warm: int
    bytes_planned: int  # their known sizes
    bytes_warm: int

    def line(self) -> str:
        """`upgrade ready: torch 2.9.0+cu128, 2.4 GiB warm`, and the like for every other state."""
        return upgrade_line(self.state, self.reason, self.packages, self.bytes_warm, self.bytes_planned)

    def to_json(self) -> dict[str, Any]:
        """The `upgrade` object of `warmd status --json` (docs/status.schema.json)."""
        d = asdict(self)
        d["packages"] = [{"name": u.name, "from": u.old, "to": u.new} for u in self.packages]
        d["line"] = self.line()
        return d


def upgrade_line(state: str, reason: str | None, packages: tuple[Upgrade, ...], bytes_warm: int,
                 bytes_planned: int) -> str:
    """One line saying what a look-ahead found: what uv would upgrade to and how much of it is warm."""
    what = headline(packages)
    if state == "ready":
        return f"upgrade ready: {what}, {human_bytes(bytes_warm)} warm"
    if state == "partial":
        return (f"upgrade partly ready: {what}, {human_bytes(bytes_warm)} of {human_bytes(bytes_planned)} warm"
                + (f" ({reason})" if reason else ""))
    if state == "none":
        return f"no upgrade: {reason}" if reason else "no upgrade"
    return f"upgrade look-ahead {state}: {reason}" if reason else f"upgrade look-ahead {state}"


def headline(packages: tuple[Upgrade, ...]) -> str:
    """`torch 2.9.0+cu128` (and how many other packages move with it)."""
    moved = [u for u in packages if u.new is not None]
    if not moved:
        return "nothing new"
    ranked = sorted(moved, key=lambda u: (_HEADLINE.index(u.name) if u.name in _HEADLINE else len(_HEADLINE), u.name))
    first = ranked[0]
    more = len(ranked) - 1
    return f"{first.name} {first.new}" + (f" (+{more} more)" if more else "")


def upgrade_status(report: AheadReport | None, current_sha: str | None) -> UpgradeStatus | None:
    """The project's last look-ahead, when it is about the uv.lock there is now (None otherwise)."""
    if report is None or current_sha is None or report.lock_sha256 != current_sha:
        return None
    return upgrade_of(report)


def upgrade_of(report: AheadReport) -> UpgradeStatus:
    """What one look-ahead found, as `warmd status` and `prefetch --ahead` show it."""
    warm = [w for w in report.wheels if w.state == "warm"]
    return UpgradeStatus(
        state=report.outcome, reason=report.reason, checked_at=report.checked_at, lock_sha256=report.lock_sha256,
        packages=report.upgrades, wheels_planned=len(report.wheels), wheels_warm=len(warm),
        bytes_planned=sum(w.pin.wheel.size or 0 for w in report.wheels),
        bytes_warm=sum(w.pin.wheel.size or 0 for w in warm),
    )


def ahead_held(files: list[AheadFile], pinned: set[str]) -> list[AheadFile]:
    """The warmed-ahead wheels that count against the budget: those no project's lock pins yet."""
    return [f for f in files if f.sha256 not in pinned]


@dataclass(frozen=True)
class ProjectStatus:
    """One project as `warmd status` shows it: its state (STATES) and what it rests on."""

    path: Path
    lock: Path | None
    state: str
    reason: str | None
    since: float | None  # when the project entered this state
    activity: str | None  # what a running warmd does for it now ("queued", "warming"), even when warm
    activity_since: float | None
    next_retry: float | None  # when the daemon tries failed work again
    failures: int  # failed runs in a row
    lock_sha256: str | None  # the uv.lock the state is about
    uv: str | None  # the version of the uv that gave the outcome
    variant: str | None
    python: tuple[str, ...]
    last_check: float | None
    error: str | None
    wheels: tuple[WheelStatus, ...]
    indexes: tuple[IndexStatus, ...]
    flags: tuple[str, ...]  # one-line warnings worth the user's attention
    upgrade: UpgradeStatus | None = None  # the look-ahead's word on this uv.lock, if any
    skipped: tuple[StoredSkip, ...] = ()  # what the last run left out (no sha256, an address nobody vouched for)

    @property
    def bytes_saved(self) -> int:
        """Bytes of warm wheels a fresh `uv sync` will not download."""
        return sum(w.bytes_saved for w in self.wheels)

    def to_json(self) -> dict[str, Any]:
        """The object `warmd status --json` prints for this project (docs/status.schema.json)."""
        d = asdict(self)
        d["path"] = str(self.path)
        d["project"] = d["path"]  # the key `warmd status` prints
        d["headers"] = [f"{i.url}: {i.verdict}" + (f" (Cache-Control: {i.cache_control})" if i.cache_control else "")
                        for i in self.indexes]
        d["lock"] = str(self.lock) if self.lock else None
        d["python"] = list(self.python)
        d["flags"] = list(self.flags)
        d["bytes_saved"] = self.bytes_saved
        d["wheels_planned"] = len(self.wheels)
        d["wheels_warm"] = sum(1 for w in self.wheels if w.state == "warm")
        d["bytes_planned"] = sum(w.size or 0 for w in self.wheels)
        d["bytes_downloaded"] = sum(w.bytes_downloaded for w in self.wheels)
        for w in d["wheels"]:
            w["warnings"] = list(w["warnings"])
        d["upgrade"] = self.upgrade.to_json() if self.upgrade else None
        return d


def project_statuses(state: State, *, env: Mapping[str, str] | None = None) -> list[ProjectStatus]:
    """Every recorded project in its documented state, as `warmd status` shows them."""
    snap = state.snapshot()
    env = os.environ if env is None else env
    return [project_status(p, snap, env) for p in snap.projects]


def project_status(p: StoredProject, snap: Snapshot, env: Mapping[str, str]) -> ProjectStatus:
    """One project's state from what was recorded, the uv.lock there is now, and who is still at work."""
    now_sha = file_stamp(p.lock).sha256 if p.lock else None
    # Content decides: an outcome is about a lock's text, whatever rewrote the file since.
    current = p.lock_stamp is not None and now_sha == p.lock_stamp.sha256
    owner = Owner.from_tag(p.activity_owner) if p.activity_owner else None
    live = owner is not None and owner.alive()  # a killed warmd's "warming" is not believed
    activity = p.activity if live else None
    if current and p.outcome is not None:
        state, reason, since = p.outcome, p.reason, p.since
    elif activity is not None:
        state, reason, since = activity, None, p.activity_since
    else:
        state, since = "stale", None
        if p.lock_stamp is None:
            reason = "not warmed yet"
        elif not current:
            reason = "uv.lock is gone" if now_sha is None else "uv.lock changed since warmd last looked at it"
        else:
            reason = "warming was interrupted before it finished"
        reason += "; `warmd prefetch` or the daemon warms it"
    wheels = tuple(_wheel(w, warming=activity == "warming") for w in p.wheels)
    # What was left out is about the lock it was recorded for: not shown for another lock.
    skipped = p.skipped if current else ()
    indexes, flags = _indexes(p, snap, env)
    for w in wheels:
        flags += [x for x in w.warnings if x not in flags]
    limited = [w for w in wheels if w.state == "skipped"]
    if limited and current:
        flags.append(f"{len(limited)} wheel(s) skipped, not downloaded: {limited[0].filename} — {limited[0].reason}"
                     + (f" (and {len(limited) - 1} more)" if len(limited) > 1 else ""))
    return ProjectStatus(
        path=p.path, lock=p.lock, state=state, reason=reason, since=since, activity=activity,
        activity_since=p.activity_since if activity else None,
        next_retry=p.retry_at if live and state == "failed" else None, failures=p.failures,
        lock_sha256=p.lock_stamp.sha256 if p.lock_stamp else None, uv=p.uv_version, variant=p.variant,
        python=p.python, last_check=p.last_run, error=p.error, wheels=wheels, indexes=indexes, flags=tuple(flags),
        upgrade=upgrade_status(snap.ahead.get(p.path), now_sha), skipped=skipped,
    )


def _wheel(w: Any, *, warming: bool) -> WheelStatus:
    # "fetching" written by a run no warmd continues is a wheel nobody fetches.
    state = "cold" if w.state == "fetching" and not warming else w.state
    return WheelStatus(name=w.name, version=w.version, filename=w.filename, sha256=w.sha256, url=w.url,
                       python=w.python, platform=w.platform, state=state, reason=w.reason, size=w.size,
                       bytes_downloaded=w.bytes_downloaded, bytes_reused=w.bytes_reused,
                       bytes_saved=(w.size or 0) if state == "warm" else 0, updated_at=w.updated_at,
                       warnings=w.warnings)


def _indexes(p: StoredProject, snap: Snapshot, env: Mapping[str, str]) -> tuple[tuple[IndexStatus, ...], list[str]]:
    """The verdict of each index the project pins wheels from, from its files' latest answers."""
    files: dict[str, list[str]] = {}
    for w in p.wheels:
        if w.index:
            files.setdefault(w.index, []).append(w.url)
    overrides = index_overrides(p.path, env) if files else {}
    out, flags = [], []
    for index, urls in files.items():
        good = _latest(snap.good_headers, urls)
        last = _latest(snap.headers, urls)
        keep = uv_keeps(urls[0], good.cache_control if good else None, known=good is not None,
                        override=overrides.get(norm_url(index)), uv_version=p.uv_version)
        out.append(IndexStatus(url=index, verdict=keep.verdict, why=keep.why,
                               cache_control=good.cache_control if good else None,
                               checked_at=last.checked_at if last else None,
                               error=last.error if last and not last.ok else None))
        if keep.verdict == "not kept":
            flags.append(f"index {index} answers Cache-Control {good.cache_control!r}: {keep.why}, "  # type: ignore[union-attr]
                         "warmd's warm copy is the only one")
    return tuple(out), flags


def _latest(checks: Mapping[str, HeaderCheck], urls: list[str]) -> HeaderCheck | None:
    found = [checks[u] for u in urls if u in checks]
    return max(found, key=lambda h: h.checked_at) if found else None
