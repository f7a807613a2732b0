"""The errors warmd raises; each message says what is wrong and what to do about it."""

from __future__ import annotations


class WarmdError(Exception):
    """Base of every error warmd reports to a user."""

    exit_code = 1


class InputError(WarmdError):
    """Bad usage or input: a config, lock or argument that cannot be used (exit 2)."""

    exit_code = 2


class ConfigError(InputError):
    """The config file is missing, malformed, or has an unknown key or a wrong type."""


class LockError(InputError):
    """A uv.lock is malformed or names a wheel warmd refuses to fetch."""


class FetchError(WarmdError):
    """A wheel could not be downloaded (network, server, or disk)."""


class HashMismatch(FetchError):
    """Downloaded bytes do not match the sha256 pinned in the lock."""

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


class UvError(WarmdError):
    """The configured uv failed, is missing, or answered something warmd does not understand."""


class Busy(WarmdError):
    """Another warmd process holds the lock on the state directory."""
