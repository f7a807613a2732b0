"""Typed values passed between the pipeline's steps (uv.lockfile -> plan -> transfer -> warm -> uv.driver)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .urls import SafeUrl, safe_url


@dataclass(frozen=True)
class FileStamp:
    """What a project file was when warmd read it: its content hash and the inode that held it.

    Content alone says whether two reads saw the same lock; inode and mtime also tell a lock
    rewritten in between, even back to the same text (pins moving back and forth).
    """

    sha256: str | None  # None: there was no such file
    inode: int = 0
    mtime_ns: int = 0
    size: int = 0


@dataclass(frozen=True)
class WheelFile:
    """One wheel file named in a uv.lock, with the hash the lock pins."""

    url: SafeUrl  # a str given is made one: the URL prints without its credentials wherever it goes
    filename: str
    sha256: str  # lowercase hex, no "sha256:" prefix
    size: int | None  # PyTorch-index wheels often carry no size

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", SafeUrl(self.url))


@dataclass(frozen=True)
class Pin:
    """A wheel to keep warm: which package and index it belongs to, and the file itself."""

    name: str  # normalized (PEP 503)
    version: str
    # The registry URL from `source = { registry = ... }`: with the file name, uv's cache key.
    # None for a wheel the lock pins by direct URL (`source = { url = ... }`): uv keys it by that URL.
    index: SafeUrl | None
    wheel: WheelFile
    python: str  # the Python version ("3.12") this wheel was selected for
    platform: str  # uv's --python-platform name this wheel was selected for

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", safe_url(self.index))


@dataclass(frozen=True)
class ProgressEvent:
    """A snapshot of one file's download, handed to the progress callback."""

    filename: str
    sha256: str
    total: int | None
    done: int  # bytes on disk, reused ones included
    downloaded_this_run: int
    state: str  # "start" | "progress" | "retry" | "done" | "failed"
    message: str = ""


@dataclass(frozen=True)
class Link:
    """What a download found a host to be like, and what it said of the file it served."""

    kind: str  # "capped" (per connection), "shared" (one link for all), "fast" (one stream outruns uv)
    cache_control: str | None
    at: float  # time.time() when it was found (the state keeps it for the next process)
    stream_rate: float = 0.0  # one stream's best rate there, bytes/s


@dataclass(frozen=True)
class Fetched:
    """A verified file in the store."""

    sha256: str
    path: Path
    size: int
    bytes_downloaded: int  # bytes taken from the network for this file in this run
    bytes_reused: int  # bytes that were already on disk (store hit or resumed partial)
    via: str | None = None  # the lab mirror the bytes came from (mirrors.py); None: the origin or the store
    mirror_error: str | None = None  # why the wheel's mirror was passed over for the origin, one line


@dataclass(frozen=True)
class Skipped:
    """A package the plan names but warmd does not fetch itself, and why (one line)."""

    name: str
    version: str
    python: str
    reason: str
    filename: str | None = None  # the wheel uv would take, when there is one
    url: SafeUrl | None = None
    size: int | None = None
    index: SafeUrl | None = None  # registry URL, as in Pin
    platform: str | None = None  # uv's --python-platform target for that wheel
    # A wheel the lock pins without a sha256: uv may still be asked to download it unverified.
    unhashed: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", safe_url(self.url))
        object.__setattr__(self, "index", safe_url(self.index))


WheelStateName = str  # one of: "cold", "fetching", "warm", "unproven", "failed", "skipped" (a limit: see reason)


@dataclass(frozen=True)
class Outcome:
    """What one finished run concluded about a project (outcomes.outcome_of), as it is recorded."""

    state: str  # "warm", "unproven", "failed" or "nothing to warm"
    reason: str | None = None  # why, for anything but warm
    retry: bool = False  # failed, and waiting may mend it (not bad input): the daemon retries it


@dataclass(frozen=True)
class WheelReport:
    """What one run did for one pinned wheel of one project."""

    pin: Pin
    state: WheelStateName
    reason: str | None = None  # why failed / unproven, one line
    bytes_downloaded: int = 0
    bytes_reused: int = 0
    fix: str | None = None  # for a failure the user must act on (a hash mismatch, a full disk): what to do
    via: str | None = None  # the lab mirror its bytes came from (Fetched.via)
    mirror_error: str | None = None  # why its mirror was passed over for the origin (Fetched.mirror_error)


@dataclass(frozen=True)
class SkippedReport:
    """What one run did for a package warmd does not fetch itself."""

    skipped: Skipped
    state: WheelStateName = "skipped"  # or, for an unhashed wheel handed to uv on request: warm / failed / unproven
    reason: str | None = None  # defaults to skipped.reason


@dataclass(frozen=True)
class ProjectReport:
    """What one run did for one project: its pins and their outcome, or why it could not start."""

    project: Path  # the project folder (holds uv.lock)
    lock: Path
    variant: str
    python: tuple[str, ...]  # the Python versions wheels were selected for
    wheels: tuple[WheelReport, ...] = ()
    skipped: tuple[SkippedReport, ...] = ()
    chosen_by: str = ""  # how the variant's extras and groups were chosen, one sentence
    flags: tuple[str, ...] = ()  # the `uv sync` flags that select that variant
    notes: tuple[str, ...] = ()  # what the user may want to settle (an ambiguous choice ...)
    error: str | None = None  # set when the project could not be planned (bad lock, ...)
    error_is_input: bool = False  # True when `error` is bad input (exit 2) rather than a failure
    stamp: FileStamp | None = None  # the uv.lock this report is about, as it was read
    # Why the work was called off before it could say anything (the lock changed, warmd is
    # stopping): not an outcome, nothing about the wheels is known from it.
    superseded: str | None = None

    @property
    def ok(self) -> bool:
        """True when every pinned wheel is warm (or kept out by a limit, as it should be) and nothing failed."""
        return (self.error is None and self.superseded is None
                and all(w.state in ("warm", "skipped") for w in self.wheels)
                and all(s.state in ("warm", "skipped") for s in self.skipped))


@dataclass(frozen=True)
class Upgrade:
    """One warmed package a would-be lock moves: from the version the project pins to the one uv would lock."""

    name: str
    old: str | None  # None: the project does not pin it now
    new: str | None  # None: the would-be lock drops it


@dataclass(frozen=True)
class AheadReport:
    """What one look-ahead concluded for one project: the upgrade uv would lock, and how warm it is."""

    project: Path
    lock_sha256: str | None  # the project's uv.lock it started from: it is about that lock only
    outcome: str  # "ready", "partial", "none", "postponed", "failed" or "skipped" (outcomes.AHEAD_OUTCOMES)
    reason: str | None = None  # why, for anything but ready
    upgrades: tuple[Upgrade, ...] = ()
    # The would-be lock's wheels the project does not pin now, each as the look-ahead left it
    # ("cold" with a reason for those the budget had no room for).
    wheels: tuple[WheelReport, ...] = ()
    checked_at: float = 0.0  # unix time


@dataclass(frozen=True)
class HeaderCheck:
    """What one URL answered to a HEAD (or 1-byte GET): the headers that decide uv's caching."""

    url: SafeUrl  # printed (and stored) without credentials
    status: int | None  # None when the request failed before a response
    cache_control: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    content_length: int | None = None  # the full size of the file, also when learnt from Content-Range
    method: str = "HEAD"  # "HEAD", "GET-range", or "GET": the first answer to one of warmd's downloads
    checked_at: float = 0.0  # unix time
    error: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", SafeUrl(self.url))

    @property
    def ok(self) -> bool:
        """True when the server answered with a success status."""
        return self.status is not None and 200 <= self.status < 300
