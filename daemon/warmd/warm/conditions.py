"""Whether now is a time to spend bandwidth and battery on wheels nobody has asked for yet.

Two readings: is the connection metered (NetworkManager's `Metered` property, read over D-Bus with
`busctl`, else `gdbus`), and is the machine running on battery (`/sys/class/power_supply`). Where a
reading cannot be made (no NetworkManager, no system bus, a desktop without batteries) the answer
is "cannot tell", which never holds the look-ahead back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..plan import Runner, run_command

_NM = ("org.freedesktop.NetworkManager", "/org/freedesktop/NetworkManager", "org.freedesktop.NetworkManager")
# NetworkManager's NMMetered: 0 unknown, 1 yes, 2 no, 3 guessed yes (a phone's hotspot, mobile
# broadband), 4 guessed no. A guess is what NetworkManager itself acts on, so it counts.
_METERED = {0: None, 1: True, 2: False, 3: True, 4: False}
_METERED_WORDS = {0: "unknown", 1: "yes", 2: "no", 3: "guessed yes", 4: "guessed no"}
_BUSCTL = re.compile(r"^\s*u\s+(\d+)\s*$")  # `busctl get-property` prints the type, then the value
_GDBUS = re.compile(r"^\s*\(<(?:uint32\s+)?(\d+)>,\)\s*$")  # `gdbus call` prints a GVariant tuple


@dataclass(frozen=True)
class Reading:
    """One reading of the machine: yes, no, or None when it cannot be told here, and where it came from."""

    value: bool | None
    source: str  # "busctl", "gdbus", "/sys/class/power_supply", or "none"
    detail: str  # one clause for the log and doctor


@dataclass(frozen=True)
class Conditions:
    """What the look-ahead weighs before it downloads: the connection and the power supply."""

    metered: Reading
    battery: Reading


def read_conditions(root: Path = Path("/"), run: Runner = run_command) -> Conditions:
    """Read both now; `root` and `run` let tests stand in for sysfs and the D-Bus tools."""
    return Conditions(metered=metered(run), battery=on_battery(root))


def metered(run: Runner = run_command) -> Reading:
    """Is the connection metered, as NetworkManager says over D-Bus (busctl, else gdbus)?"""
    service, path, interface = _NM
    asks = (
        ("busctl", ["busctl", "--system", "get-property", service, path, interface, "Metered"], _BUSCTL),
        ("gdbus", ["gdbus", "call", "--system", "--dest", service, "--object-path", path, "--method",
                   "org.freedesktop.DBus.Properties.Get", interface, "Metered"], _GDBUS),
    )
    for tool, argv, pattern in asks:
        out = run(argv)
        m = pattern.match(out.strip()) if out else None
        if m is None:
            continue
        code = int(m.group(1))
        return Reading(_METERED.get(code), tool, f"NetworkManager says Metered = {code} "
                       f"({_METERED_WORDS.get(code, 'unknown')}), read with {tool}")
    return Reading(None, "none", "no NetworkManager answered over D-Bus (busctl, gdbus): not known to be metered")


def on_battery(root: Path = Path("/")) -> Reading:
    """Is the machine running on battery: a system battery discharging and no mains or USB supply online?"""
    base = root / "sys/class/power_supply"
    where = "/sys/class/power_supply"
    try:
        supplies = sorted(p for p in base.iterdir() if p.is_dir())
    except OSError:
        return Reading(None, "none", f"no {where}: no battery known")
    batteries: list[tuple[str, str]] = []
    for supply in supplies:
        kind = _read(supply / "type")
        if kind in ("Mains", "USB", "USB_C", "USB_PD") and _read(supply / "online") == "1":
            return Reading(False, where, f"{supply.name} ({kind}) is online")
        # A mouse's or a headset's battery says scope "Device": it does not power the machine.
        if kind == "Battery" and _read(supply / "scope") != "Device":
            batteries.append((supply.name, _read(supply / "status") or "Unknown"))
    discharging = [name for name, status in batteries if status == "Discharging"]
    if discharging:
        return Reading(True, where, f"{', '.join(discharging)} discharging, no mains supply online")
    if batteries:
        return Reading(False, where, ", ".join(f"{n} {s.lower()}" for n, s in batteries))
    return Reading(None, where, "no system battery")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None
