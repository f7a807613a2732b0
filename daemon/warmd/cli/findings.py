"""What doctor reports and how each fix is worded, one table that README's troubleshooting copies."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from ..base import DiskFull, HashMismatch, exit_code
from ..service import INOTIFY_WATCHES

Status = Literal["ok", "warn", "problem", "info"]


@dataclass(frozen=True)
class Finding:
    """One thing doctor checked: what it found and, when something is wrong, how to fix it."""

    check: str
    status: Status
    message: str
    fix: str | None = None


@dataclass(frozen=True)
class Trouble:
    """One row of README's troubleshooting table: what doctor says, what to do."""

    says: str
    do: str


# The source of truth for README's "Troubleshooting" table: every finding's fix starts with the
# `do` of its row. The first seven rows are README's; the others are doctor findings README lacks.
TROUBLESHOOTING: dict[str, Trouble] = {
    "uv-missing": Trouble(
        "uv not found",
        'set `uv = "/absolute/path/to/uv"` in the config (a service does not see your shell\'s PATH)'),
    "uv-differs": Trouble(
        "the service's uv differs from your shell's",
        "point `uv` at the one `command -v uv` prints; a different uv version reads a different cache layout"),
    "no-store": Trouble(
        "index answers no-store",
        "nothing to do while warmd runs; or `warmd doctor --fix PROJECT` adds uv's own per-index "
        "`cache-control` override"),
    "no-cache": Trouble(
        "`no-cache = true` in uv.toml",
        "uv uses a throw-away cache: warming is pointless until you remove it"),
    "inotify": Trouble(
        "inotify watch limit reached",
        f"`sysctl fs.inotify.max_user_watches={INOTIFY_WATCHES}` (those projects fall back to the "
        "periodic rescan meanwhile)"),
    "unproven": Trouble(
        "wheel `unproven`",
        "uv has no interpreter for that Python here; install it (`uv python install 3.12`) or drop it from `python`"),
    "sha256": Trouble("sha256 mismatch", HashMismatch.fix or ""),
    "uv-old": Trouble(
        "uv older than 0.8.2",
        "upgrade uv (`uv self update`, or your package manager); warmd is tested from 0.8.2 on"),
    "uv-cache-differs": Trouble(
        "warmd's uv cache differs from your shell's",
        "set `cache-dir` in the config to the folder your shell's `uv cache dir` prints, or remove it"),
    "disk": Trouble("not enough free space", DiskFull.fix or ""),
    "prune": Trouble(
        "unpacked wheel(s) no entry points to",
        "`warmd doctor --fix` asks uv to remove them (`uv cache prune`; uv waits for running uv commands)"),
    "service-failed": Trouble(
        "service failed",
        "`journalctl --user -u warmd` says why; then `systemctl --user restart warmd`"),
    "service-inactive": Trouble(
        "service installed but not running",
        "`systemctl --user enable --now warmd`"),
    "service-unit": Trouble(
        "the unit cannot start, or was written by an older warmd",
        "run `warmd install-service` again (with `--no-sandbox` if you used it), then "
        "`systemctl --user daemon-reload && systemctl --user restart warmd`"),
    "mirror-down": Trouble(
        "a mirror is unreachable",
        "check the mirror's host, its cache server (`systemctl status nginx`) and the `url` of its "
        "`[[mirrors]]` entry; meanwhile warmd fetches from the origin"),
    "mirror-bytes": Trouble(
        "a mirror serves other bytes than the lock pins",
        "purge that file from the mirror's cache (docs/MIRROR.md); warmd never keeps those bytes and "
        "takes the wheel from the origin"),
    "private-host": Trouble(
        "a project's uv.lock names a private host nobody vouched for",
        "nothing, if you do not know the project: warmd skips those wheels and never connects there; "
        "if you trust it, `warmd trust PROJECT` (or add the index to `trusted-indexes`)"),
    "headers-unreadable": Trouble(
        "could not read an index's headers",
        "check the network, proxy (`HTTPS_PROXY`) and `.netrc` credentials for that index; "
        "warmd retries on its schedule"),
    "needs-build": Trouble(
        "needs to build X; warmd never runs a project's code",
        "nothing to do: warmd warms the project's current lock, but does not look ahead for it (uv would run "
        "the package's build to lock it); give the package static metadata (no `dynamic` in [project]) to "
        "have it looked ahead for"),
    "project-cache-dir": Trouble(
        "a project sets its own `cache-dir`",
        "warmd fills your uv cache, never one a project names; remove `cache-dir` from the project's uv "
        "settings, or warming does not help that project's `uv sync`"),
}


def fix_text(kind: str, detail: str | None = None) -> str:
    """The table's fix for `kind`, followed by what it means here."""
    do = TROUBLESHOOTING[kind].do
    return f"{do} — {detail}" if detail else do


@dataclass
class _Report:
    findings: list[Finding] = field(default_factory=list)
    bad_input: bool = False

    def add(self, check: str, status: Status, message: str, fix: str | None = None) -> None:
        self.findings.append(Finding(check, status, message, fix))

    @property
    def exit_code(self) -> int:
        return exit_code(bad_input=self.bad_input, failed=any(f.status == "problem" for f in self.findings))


def render(findings: Sequence[Finding]) -> str:
    """The findings as text: `status check: message`, then an indented `fix:` line."""
    out = []
    for f in findings:
        out.append(f"{f.status:<4} {f.check}: {f.message}\n")
        if f.fix:
            out.append("     fix: " + f.fix.replace("\n", "\n          ") + "\n")
    return "".join(out)
