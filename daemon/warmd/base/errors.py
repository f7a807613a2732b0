"""The errors warmd raises; each message says what is wrong and what to do about it."""

from __future__ import annotations

# The exit codes of every warmd command, here and nowhere else.
EXIT_OK = 0  # nothing failed
EXIT_FAILED = 1  # some work failed (network, hash, disk), or uv is unusable
EXIT_USAGE = 2  # bad usage, config or lock
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT


class WarmdError(Exception):
    """Base of every error warmd reports to a user."""

    exit_code = EXIT_FAILED
    # What the user can do about it, when waiting is not enough (the daemon retries the rest itself).
    fix: str | None = None


class InputError(WarmdError):
    """Bad usage or input: a config, lock or argument that cannot be used (exit 2)."""

    exit_code = EXIT_USAGE


class ConfigError(InputError):
    """The config file is missing, malformed, or has an unknown key or a wrong type."""


class LockError(InputError):
    """A uv.lock is malformed or names a wheel warmd refuses to fetch."""


class FetchError(WarmdError):
    """A wheel could not be downloaded (network, server, or disk)."""


class HashMismatch(FetchError):
    """Downloaded bytes do not match the sha256 pinned in the lock."""

    fix = ("the index serves other bytes than the lock pins; they were kept out of your cache — "
           "re-lock or report upstream")

    def __init__(self, filename: str, expected: str, actual: str) -> None:
        super().__init__(
            f"{filename}: sha256 mismatch (lock pins {expected}, server sent {actual}); "
            "kept out of the uv cache"
        )
        self.filename = filename
        self.expected = expected
        self.actual = actual


class DiskFull(FetchError):
    """No space left where warmd keeps its downloads."""

    fix = "free space there, or move warmd's `store-dir` / uv's cache (`UV_CACHE_DIR`) to a bigger disk"


class NeedsBuild(WarmdError):
    """uv would have to build a package (run a project's code) to answer; warmd never lets it."""

    def __init__(self, packages: list[str]) -> None:
        names = ", ".join(packages) if packages else "a source distribution"
        super().__init__(f"needs to build {names}; warmd never runs a project's code")
        self.packages = packages


class UvError(WarmdError):
    """The configured uv failed, is missing, or answered something warmd does not understand."""


class IndexUnreachable(UvError):
    """uv could not reach an index (down, too slow, no network): waiting mends it."""


class Busy(WarmdError):
    """Another warmd process holds the lock on the state directory."""
