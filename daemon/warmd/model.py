"""Typed values passed between the pipeline's steps (lockfile -> select -> fetch -> store -> uvcache)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class WheelFile:
    """One wheel file named in a uv.lock, with the hash the lock pins."""

    url: str
    filename: str
    sha256: str  # lowercase hex, no "sha256:" prefix
    size: int | None  # PyTorch-index wheels often carry no size


@dataclass(frozen=True)
class Pin:
    """A wheel to keep warm: which package and index it belongs to, and the file itself."""

    name: str  # normalized (PEP 503)
    version: str
    index: str  # the registry URL from `source = { registry = ... }`: uv's cache key
    wheel: WheelFile
    python: str  # the Python version ("3.12") this wheel was selected for
    platform: str  # uv's --python-platform name this wheel was selected for


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
class Fetched:
    """A verified file in the store."""

    sha256: str
    path: Path
    size: int
    bytes_downloaded: int  # bytes taken from the network for this file in this run
    bytes_reused: int  # bytes that were already on disk (store hit or resumed partial)


WheelStateName = str  # one of: "cold", "fetching", "warm", "unproven", "failed"


@dataclass(frozen=True)
class WheelReport:
    """What one run did for one pinned wheel of one project."""

    pin: Pin
    state: WheelStateName
    reason: str | None = None  # why failed / unproven, one line
    bytes_downloaded: int = 0
    bytes_reused: int = 0


@dataclass(frozen=True)
class ProjectReport:
    """What one run did for one project: its pins and their outcome, or why it could not start."""

    project: Path  # the project folder (holds uv.lock)
    lock: Path
    variant: str
    python: tuple[str, ...]  # the Python versions wheels were selected for
    wheels: tuple[WheelReport, ...] = ()
    error: str | None = None  # set when the project could not be planned (bad lock, ...)
    error_is_input: bool = False  # True when `error` is bad input (exit 2) rather than a failure

    @property
    def ok(self) -> bool:
        """True when every pinned wheel is warm and nothing failed."""
        return self.error is None and all(w.state == "warm" for w in self.wheels)
