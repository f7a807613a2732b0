"""Which documented state each project is in, as `warmd status` shows it, composed from what the state database read."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..base import HeaderCheck, Owner
from ..uv import file_stamp, uv_keeps
from ..warm import UpgradeStatus, limited_line, upgrade_status

if TYPE_CHECKING:
    from ..state import Snapshot, State, StoredProject, StoredSkip

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
    limited: str | None = None  # what `[limits]` left out of this lock, and which key to raise, in one line

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
    return [project_status(p, snap, env, state) for p in snap.projects]


def project_status(p: StoredProject, snap: Snapshot, env: Mapping[str, str], db: State) -> ProjectStatus:
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
    indexes, flags = _indexes(p, snap, env, db)
    for w in wheels:
        flags += [x for x in w.warnings if x not in flags]
    # What a limit left out, in one line naming the knob to turn (total.limited_line); about this lock only.
    limited = limited_line((w.size, w.reason) for w in wheels if w.state == "skipped") if current else None
    if limited:
        flags.append(limited)
    return ProjectStatus(
        path=p.path, lock=p.lock, state=state, reason=reason, since=since, activity=activity,
        activity_since=p.activity_since if activity else None,
        next_retry=p.retry_at if live and state == "failed" else None, failures=p.failures,
        lock_sha256=p.lock_stamp.sha256 if p.lock_stamp else None, uv=p.uv_version, variant=p.variant,
        python=p.python, last_check=p.last_run, error=p.error, wheels=wheels, indexes=indexes, flags=tuple(flags),
        upgrade=upgrade_status(snap.ahead.get(p.path), now_sha), skipped=skipped, limited=limited,
    )


def _wheel(w: Any, *, warming: bool) -> WheelStatus:
    # "fetching" written by a run no warmd continues is a wheel nobody fetches.
    state = "cold" if w.state == "fetching" and not warming else w.state
    return WheelStatus(name=w.name, version=w.version, filename=w.filename, sha256=w.sha256, url=w.url,
                       python=w.python, platform=w.platform, state=state, reason=w.reason, size=w.size,
                       bytes_downloaded=w.bytes_downloaded, bytes_reused=w.bytes_reused,
                       bytes_saved=(w.size or 0) if state == "warm" else 0, updated_at=w.updated_at,
                       warnings=w.warnings)


def _indexes(p: StoredProject, snap: Snapshot, env: Mapping[str, str],
             state: State) -> tuple[tuple[IndexStatus, ...], list[str]]:
    """The verdict of each index the project pins wheels from (uv_keeps), and when its files were last asked."""
    files: dict[str, list[str]] = {}
    for w in p.wheels:
        if w.index:
            files.setdefault(w.index, []).append(w.url)
    out, flags = [], []
    for index, urls in files.items():
        last = _latest(snap.headers, urls)
        keep = uv_keeps(p.path, index, urls[0], uv_version=p.uv_version, env=env, state=state)
        cache_control = keep.headers.cache_control if keep.headers else None
        out.append(IndexStatus(url=index, verdict=keep.verdict, why=keep.why, cache_control=cache_control,
                               checked_at=last.checked_at if last else None,
                               error=last.error if last and not last.ok else None))
        if keep.verdict == "not kept":
            flags.append(f"index {index} answers Cache-Control {cache_control!r}: {keep.why}, "
                         "warmd's warm copy is the only one")
    return tuple(out), flags


def _latest(checks: Mapping[str, HeaderCheck], urls: list[str]) -> HeaderCheck | None:
    found = [checks[u] for u in urls if u in checks]
    return max(found, key=lambda h: h.checked_at) if found else None
