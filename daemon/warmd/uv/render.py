"""The files warmd hands `uv pip install`, written so no value from a lock can end a line or a string."""

from __future__ import annotations

from typing import Mapping, Sequence

from ..base import LockError, Pin, SafeUrl, reveal
from .lockfile import one_line


def render_pylock(pins: Sequence[Pin], urls: Mapping[str, str]) -> str:
    """A PEP 751 lock naming each pin's registry as `index` and its loopback URL as the wheel `url`."""
    lines = ['lock-version = "1.0"', 'created-by = "warmd"', ""]
    for pin in pins:
        lines += [
            "[[packages]]",
            f"name = {_toml_str(pin.name)}",
            f"version = {_toml_str(pin.version)}",
            f"index = {_toml_str(reveal(pin.index or ''))}",  # only registry pins come here
            "",
            "[[packages.wheels]]",
            f"name = {_toml_str(pin.wheel.filename)}",
            f"url = {_toml_str(reveal(urls[pin.wheel.sha256]))}",
            f"hashes = {{ sha256 = {_toml_str(pin.wheel.sha256)} }}",
            "",
        ]
    return "\n".join(lines)


def render_requirements(pins: Sequence[Pin]) -> str:
    """A requirements file naming each pin by its direct URL and sha256: uv keys such a wheel by that URL."""
    return "".join(requirement_line(pin.name, "@", pin.wheel.url.reveal(), f"--hash=sha256:{pin.wheel.sha256}") for pin in pins)


def requirement_line(*fields: str) -> str:
    """One line of a requirements file from these fields; LockError when a field (lock data) holds
    whitespace or a control character, which could end the line and start another requirement or
    option (`--extra-index-url ...`). lockfile refuses such URLs already: this is the last word."""
    bad = next((f for f in fields if not f or not one_line(f)), None)
    if bad is not None:
        raise LockError(f"refusing to write {str(SafeUrl(bad))!r} into a requirements file for uv: it holds whitespace "
                        "or a control character")
    return " ".join(fields) + "\n"


def _toml_str(s: str) -> str:
    """A TOML basic string: every character that could end it, or the line, escaped."""
    out = []
    for c in s:
        if c in ('"', "\\"):
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04X}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'
