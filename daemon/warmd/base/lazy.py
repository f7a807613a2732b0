"""A package's public names, imported from their module when first used (PEP 562).

Importing `warmd.cli` to print `--help` or `warmd status` must not pull in httpx, watchdog and
the download engine; a package that imported all of its modules up front would.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def surface(package: str, modules: Mapping[str, tuple[str, ...]]) -> tuple[
        list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """`__all__`, `__getattr__` and `__dir__` for `package`, whose `modules` define the public names."""
    where = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(where)

    return sorted(where), __getattr__, __dir__
