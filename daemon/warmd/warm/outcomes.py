"""What a finished run concluded for its project, when failed work is tried again, and what a look-ahead found."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ..base import AheadReport, Outcome, ProjectReport, Upgrade, human_bytes

if TYPE_CHECKING:
    from ..state import AheadFile

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
