"""Every exception warmd raises, and the exit code of every command; each message says what is wrong
and what to do about it.

The hierarchy, and what each branch means for the user and for the exit code:

    BaseException
    └── Cancelled            a run called off (its uv.lock changed, warmd is stopping): not an error;
                             nothing is recorded, the project is warmed again for the lock it has now
    Exception
    ├── WarmdError           told to the user in one line; the command exits 1 (some work failed),
    │   │                    unless it is an InputError; `fix` says what to do when waiting is not enough
    │   ├── InputError       bad usage or input (exit 2); the daemon waits for the file to change
    │   │   ├── ConfigError  the config file
    │   │   └── LockError    a uv.lock
    │   ├── FetchError       a wheel could not be downloaded: that wheel `failed` (exit 1), retried later
    │   │   ├── HashMismatch     the bytes are not the ones the lock pins; kept out of the cache
    │   │   ├── DiskFull         no room where the downloads go
    │   │   ├── Untrusted        the server's TLS certificate is not trusted: no retry mends it
    │   │   ├── Refused          the network guard refused the address: no retry mends it
    │   │   ├── FetchSkipped     not a failure: the file is not needed after all (uv has it)
    │   │   └── FetchCancelled   not a failure: the download was stopped, its partial kept for resume
    │   ├── NeedsBuild       uv would have to build a package (run a project's code): refused
    │   └── UvError          the configured uv failed, is missing, or answered something unknown
    │       └── IndexUnreachable  uv could not reach an index: waiting mends it
    └── (inside the download engine, never shown to a user: each ends as a FetchError or a retry)
        ├── TransportError   the connection failed (refused, reset, timed out, short body): retried
        ├── Retry            a server's answer worth another attempt (5xx, 429): retried
        └── Changed          the file changed upstream mid-download: the download starts over

KeyboardInterrupt (Ctrl-C) exits 130. `exit_code` turns what came of a command into its exit code.
"""

from __future__ import annotations

# The exit codes of every warmd command, here and nowhere else.
EXIT_OK = 0  # nothing failed
EXIT_FAILED = 1  # some work failed (network, hash, disk), or uv is unusable
EXIT_USAGE = 2  # bad usage, config or lock
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT


def exit_code(*, bad_input: bool = False, failed: bool = False, interrupted: bool = False) -> int:
    """A command's exit code from what came of it: 130 when it was interrupted, else 2 when any usage
    or input was bad, else 1 when any work failed, else 0."""
    if interrupted:
        return EXIT_INTERRUPTED
    if bad_input:
        return EXIT_USAGE
    if failed:
        return EXIT_FAILED
    return EXIT_OK


class Cancelled(BaseException):
    """The run was called off (its uv.lock changed, warmd is stopping): not an error.

    A BaseException, as asyncio's CancelledError is, so that the `except Exception` that keeps one
    bad wheel from stopping the others does not swallow it.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class WarmdError(Exception):
    """Base of every error warmd reports to a user."""

    # What the user can do about it, when waiting is not enough (the daemon retries the rest itself).
    fix: str | None = None


class InputError(WarmdError):
    """Bad usage or input: a config, lock or argument that cannot be used (exit 2)."""


class ConfigError(InputError):
    """The config file is missing, malformed, or has an unknown key or a wrong type."""


class LockError(InputError):
    """A uv.lock is malformed or names a wheel warmd refuses to fetch."""


class FetchError(WarmdError):
    """A wheel could not be downloaded (network, server, or disk)."""

    bytes_downloaded = 0  # what crossed the network for it before it failed or was called off


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


class Untrusted(FetchError):
    """The server's TLS certificate is not vouched for by any trusted CA: no retry will change that."""


class Refused(FetchError):
    """warmd will not connect there: an address nobody vouched for (never retried)."""


class FetchSkipped(FetchError):
    """The caller said this file is not needed after all (uv's cache has it, or uv fetches it itself).

    `why` is what its progress line says (None: nothing; another step reports the file).
    """

    def __init__(self, message: str, why: str | None = "already in uv's cache") -> None:
        super().__init__(message)
        self.why = why


class FetchCancelled(FetchError):
    """Fetcher.cancel() stopped this download; the partial and its sidecar are kept for resume."""


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


class TransportError(Exception):
    """The connection failed: refused, reset, timed out, or the body ended early (worth a retry)."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


class Retry(Exception):
    """A failure worth another attempt (5xx, 429, a short body); `delay` is the server's hint, if any."""

    def __init__(self, message: str, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class Changed(Exception):
    """The file changed upstream (or stopped honouring Range) under a download in progress."""
