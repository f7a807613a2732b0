"""What the state database gives back: its rows as records, one read of them whole for `warmd status`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..base import AheadReport, FileStamp, HeaderCheck


@dataclass(frozen=True)
class StoredWheel:
    """One pin of a project and what was last recorded of its wheel."""

    name: str
    version: str
    filename: str
    sha256: str
    index: str | None
    url: str  # credentials stripped
    python: str
    platform: str
    state: str  # as recorded: cold, fetching, warm, unproven, failed, skipped
    reason: str | None
    size: int | None
    bytes_downloaded: int
    bytes_reused: int
    updated_at: float | None
    since: float  # when the lock started pinning it
    warnings: tuple[str, ...] = ()  # header warnings about its file since then


@dataclass(frozen=True)
class StoredProject:
    """One project's row as recorded: the last outcome, the lock it is about, what is being done now."""

    path: Path
    lock: Path | None
    variant: str | None
    python: tuple[str, ...]
    last_run: float | None  # when the last outcome was recorded
    error: str | None
    outcome: str | None  # None: no outcome for the recorded lock (yet)
    reason: str | None
    retry: bool  # a failed outcome that waiting may mend
    failures: int  # failed outcomes in a row
    since: float | None  # when the outcome became what it is (the history)
    lock_stamp: FileStamp | None  # the uv.lock the outcome and pins are about
    uv_version: str | None  # the uv that gave the outcome
    activity: str | None  # "queued" / "warming", by activity_owner
    activity_since: float | None
    activity_owner: str | None  # owner.Owner tag of the process doing it
    retry_at: float | None  # when activity_owner retries failed work
    wheels: tuple[StoredWheel, ...]
    skipped: tuple[StoredSkip, ...] = ()  # what the last run left out, and why


@dataclass(frozen=True)
class StoredSkip:
    """A package of a project's plan that the last run did not warm, and why (model.SkippedReport),
    as it is recorded and as `warmd status` lists it."""

    name: str
    version: str
    python: str
    filename: str | None
    url: str | None  # credentials stripped
    index: str | None
    state: str  # "skipped", or for an unhashed wheel handed to uv on request: warm / failed / unproven
    reason: str


@dataclass(frozen=True)
class AheadFile:
    """A wheel the look-ahead warmed for a would-be lock: it counts against the budget until a lock adopts it."""

    sha256: str
    filename: str
    size: int | None
    project: Path  # the project whose would-be lock first wanted it
    warmed_at: float


@dataclass(frozen=True)
class Snapshot:
    """Everything `warmd status` is made from, read in one transaction."""

    projects: tuple[StoredProject, ...]
    headers: Mapping[str, HeaderCheck]  # URL -> its latest check
    ahead: Mapping[Path, AheadReport] = field(default_factory=dict)  # project -> its last look-ahead
