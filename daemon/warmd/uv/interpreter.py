"""The interpreter uv finds, as the plan's markers need it: the PEP 508 values it reports about itself."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

# PEP 508's marker variables, as the interpreter itself reports them (packaging is not installed there).
_MARKERS_SCRIPT = """
import json, os, platform, sys
def fmt(v):
    s = "%d.%d.%d" % (v.major, v.minor, v.micro)
    return s if v.releaselevel == "final" else s + v.releaselevel[0] + str(v.serial)
print(json.dumps({
    "implementation_name": sys.implementation.name,
    "implementation_version": fmt(sys.implementation.version),
    "os_name": os.name,
    "platform_machine": platform.machine(),
    "platform_python_implementation": platform.python_implementation(),
    "platform_release": platform.release(),
    "platform_system": platform.system(),
    "platform_version": platform.version(),
    "python_full_version": platform.python_version(),
    "python_version": "%d.%d" % sys.version_info[:2],
    "sys_platform": sys.platform,
}))
"""


@dataclass(frozen=True)
class Interpreter:
    """A Python interpreter uv found, and the PEP 508 marker values it has."""

    path: Path
    version: str  # "3.12"
    markers: Mapping[str, str]
