"""A warmd config for tests: isolated store, state and uv cache, the uv under test."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence


def write_warmd_config(tmp: Path, uv: Path | str, cache: Path, *, packages: Sequence[str],
                       variant: str = "cu128", extra: Sequence[str] = ()) -> Path:
    """Write tmp/warmd.toml keeping everything warmd writes under tmp; `extra` lines go last."""
    lines = [
        f"variant = {json.dumps(variant)}",
        f"uv = {json.dumps(str(uv))}",
        f"cache-dir = {json.dumps(str(cache))}",
        f"store-dir = {json.dumps(str(tmp / 'store'))}",
        f"state-dir = {json.dumps(str(tmp / 'state'))}",
        f"packages = {json.dumps(list(packages))}",
        *extra,
    ]
    path = tmp / "warmd.toml"
    path.write_text("\n".join(lines) + "\n")
    return path
