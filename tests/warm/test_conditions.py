"""Metered and battery readings from recorded tool outputs and sysfs trees (NetworkManager, a system
bus and a laptop's power supply cannot run here; the logic that reads them is the real one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.fakes import FakeTools, fake_root
from warmd.warm import Conditions, Reading, metered, on_battery, postpone_reason, read_conditions
from warmd.base import AheadSettings

FIXTURES = Path(__file__).parents[1] / "fixtures" / "power"
SUPPLY = "sys/class/power_supply"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


@pytest.mark.parametrize("tool, name, value", [
    ("busctl", "busctl-metered-yes.txt", True),
    ("busctl", "busctl-metered-guess-yes.txt", True),  # a phone's hotspot: NetworkManager guesses
    ("busctl", "busctl-metered-guess-no.txt", False),
    ("busctl", "busctl-metered-unknown.txt", None),
    ("gdbus", "gdbus-metered-yes.txt", True),
    ("gdbus", "gdbus-metered-no.txt", False),
])
def test_networkmanagers_metered_property_is_read_over_dbus(tool: str, name: str, value: bool | None) -> None:
    tools = FakeTools(**{tool: fixture(name)})
    reading = metered(tools)
    assert reading.value is value and reading.source == tool
    asked = tools.calls[-1]  # busctl first; gdbus only when busctl gave no answer
    assert asked[0] == tool and asked[-1] == "Metered" and "/org/freedesktop/NetworkManager" in asked
    assert [c[0] for c in tools.calls] == (["busctl"] if tool == "busctl" else ["busctl", "gdbus"])


def test_without_networkmanager_the_connection_is_not_known_to_be_metered() -> None:
    tools = FakeTools(busctl="Failed to connect to bus: No such file or directory\n")  # not its answer
    reading = metered(tools)
    assert reading == Reading(None, "none", reading.detail) and [c[0] for c in tools.calls] == ["busctl", "gdbus"]


def _supply(name: str, **files: str) -> dict[str, str]:
    return {f"{SUPPLY}/{name}/{k}": v + "\n" for k, v in files.items()}


@pytest.mark.parametrize("files, value, words", [
    # a laptop unplugged
    ({**_supply("AC", type="Mains", online="0"), **_supply("BAT0", type="Battery", status="Discharging")},
     True, "BAT0 discharging"),
    # the same laptop plugged in: the battery charges
    ({**_supply("AC", type="Mains", online="1"), **_supply("BAT0", type="Battery", status="Charging")},
     False, "AC (Mains) is online"),
    # powered over USB-C while the firmware still says discharging for a moment
    ({**_supply("ucsi-source-psy-USBC000:001", type="USB", online="1"),
      **_supply("BAT0", type="Battery", status="Discharging")}, False, "USB"),
    # full and not charging, no mains supply listed
    (_supply("BAT1", type="Battery", status="Not charging"), False, "BAT1 not charging"),
    # a desktop with a wireless mouse: the mouse's battery powers no machine
    (_supply("hidpp_battery_0", type="Battery", scope="Device", status="Discharging"), None, "no system battery"),
])
def test_battery_is_read_from_sysfs(tmp_path: Path, files: dict[str, str], value: bool | None, words: str) -> None:
    reading = on_battery(fake_root(tmp_path, files))
    assert reading.value is value and words in reading.detail, reading


def test_a_machine_without_power_supplies_is_not_on_battery(tmp_path: Path) -> None:
    assert on_battery(tmp_path).value is None
    c = read_conditions(tmp_path, run=FakeTools())
    assert c.metered.value is None and c.battery.value is None


def test_metered_and_battery_postpone_unless_the_config_allows_them(tmp_path: Path) -> None:
    unplugged = fake_root(tmp_path, _supply("BAT0", type="Battery", status="Discharging"))
    hotspot = FakeTools(busctl=fixture("busctl-metered-guess-yes.txt"))
    both = read_conditions(unplugged, run=hotspot)
    off = AheadSettings()
    assert "metered" in (postpone_reason(off, both) or "") and "on-metered = true" in (postpone_reason(off, both) or "")
    metered_ok = AheadSettings(on_metered=True)
    assert "on battery (BAT0 discharging" in (postpone_reason(metered_ok, both) or "")
    assert postpone_reason(AheadSettings(on_metered=True, on_battery=True), both) is None
    calm = Conditions(Reading(False, "busctl", ""), Reading(None, "none", ""))
    assert postpone_reason(off, calm) is None
