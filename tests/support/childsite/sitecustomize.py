"""Run at the start of every Python child of the test run (this folder is on their PYTHONPATH):
install the loopback guard of tests/support/netguard.py, then the sitecustomize this one shadows."""

import importlib.util
import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("_warmd_netguard", os.path.join(os.path.dirname(_here), "netguard.py"))
if _spec is not None and _spec.loader is not None:
    _guard = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_guard)
    _guard.install_from_env()

# A Python that ships its own sitecustomize (Debian's does) still gets it.
for _dir in sys.path:
    _other = os.path.join(_dir or ".", "sitecustomize.py")
    if os.path.abspath(_dir or ".") != _here and os.path.isfile(_other):
        _spec = importlib.util.spec_from_file_location("_shadowed_sitecustomize", _other)
        if _spec is not None and _spec.loader is not None:
            _spec.loader.exec_module(importlib.util.module_from_spec(_spec))
        break
