"""Every exception lives in base/errors.py, and one function turns a command's outcomes into its exit code."""

from __future__ import annotations

import importlib
import inspect
import itertools
import pkgutil

import pytest

import warmd
from warmd.base import (
    EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, Cancelled, Changed, ConfigError, FetchCancelled, FetchError,
    FetchSkipped, InputError, LockError, Refused, Retry, TransportError, Untrusted, WarmdError, errors, exit_code,
)


def test_the_exit_codes_are_the_documented_ones() -> None:
    assert (EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED) == (0, 1, 2, 130)


@pytest.mark.parametrize("bad_input,failed,interrupted", list(itertools.product([False, True], repeat=3)))
def test_exit_code_interrupted_beats_bad_input_beats_failed(bad_input: bool, failed: bool, interrupted: bool) -> None:
    expected = 130 if interrupted else 2 if bad_input else 1 if failed else 0
    assert exit_code(bad_input=bad_input, failed=failed, interrupted=interrupted) == expected


def test_nothing_but_a_called_off_run_escapes_except_exception() -> None:
    assert issubclass(Cancelled, BaseException) and not issubclass(Cancelled, Exception)
    assert Cancelled("uv.lock changed").reason == "uv.lock changed"
    for cls in (ConfigError, LockError):
        assert issubclass(cls, InputError) and issubclass(cls, WarmdError)
    # A fetch's failures, skips and stops are all FetchErrors: a wheel's result is one of them or a success.
    for cls in (Untrusted, Refused, FetchSkipped, FetchCancelled):
        assert issubclass(cls, FetchError) and not issubclass(cls, InputError)
    # The engine's own signals are retried or turned into a FetchError, never shown as they are.
    for cls in (TransportError, Retry, Changed):
        assert not issubclass(cls, WarmdError)


def test_the_moved_errors_keep_what_they_carry() -> None:
    t = TransportError("ReadTimeout", "no byte within the timeout")
    assert (str(t), t.kind) == ("ReadTimeout: no byte within the timeout", "ReadTimeout")
    assert str(TransportError("Cancelled")) == "Cancelled"
    assert Retry("HTTP 503", 2.5).delay == 2.5 and Retry("short body").delay is None
    assert FetchSkipped("x.whl: not needed").why == "already in uv's cache"
    assert FetchSkipped("x.whl: not needed", None).why is None


def _exception_classes() -> dict[str, str]:
    """Every exception class defined in warmd's modules: its name -> the module defining it."""
    found = {}
    for mod in pkgutil.walk_packages(warmd.__path__, "warmd."):
        if mod.name == "warmd.__main__":  # it runs the command line when imported
            continue
        module = importlib.import_module(mod.name)
        for name, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == mod.name:
                found[name] = mod.name
    return found


def test_every_exception_is_defined_in_base_errors_and_drawn_in_its_tree() -> None:
    found = _exception_classes()
    assert {"Cancelled", "TransportError", "Refused", "WarmdError"} <= found.keys()  # the walk saw them
    assert {name: where for name, where in found.items() if where != "warmd.base.errors"} == {}
    tree = errors.__doc__ or ""
    assert [name for name in found if f" {name} " not in tree] == []
