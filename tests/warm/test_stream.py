"""What warmd relies on when uv reads a wheel from the feeder while it still downloads, per uv version.

The real uv imports through the real feeder a file that grows as the test writes it, as the
download engine would. A wheel with the pinned file name but other bytes (what a lying index
sends; the zip is sound, so only the sha256 can tell) shows the difference the holdback makes:
uv 0.8.2 keeps the unpacked wrong bytes when it gets the whole file (DESIGN.md fact 11), and
neither version keeps anything when warmd holds the last bytes back and cuts the file off.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.cache import traces
from tests.support.projects import uv_env
from tests.support.wheels import make_wheel, sha256_file
from warmd.base import Pin, UvError, WheelFile
from warmd.warm import Feeder, Shelf
from warmd.transfer import HOLDBACK, GrowingFile, Ledger, Sidecar, Store
from warmd.uv import Uv

WAIT = 120.0
INDEX = "http://127.0.0.1:9/whl/cu128"  # the registry the lock names: uv's cache key, never contacted
TAG = "cp311-cp311-manylinux_2_28_x86_64"


@pytest.fixture(params=["pinned", "0.8.2"])
def uv_exe(request: pytest.FixtureRequest) -> Path:
    """The uv the tests drive (0.13.9), then the oldest one warmd supports."""
    return request.getfixturevalue("uv_bin" if request.param == "pinned" else "uv_old_bin")


@dataclass
class Import:
    """One `uv pip install` of one pin through the feeder, on a thread, while the test writes the file."""

    uv: Uv
    pin: Pin
    growing: GrowingFile
    feeder: Feeder
    ledger: Ledger
    thread: threading.Thread
    error: list[BaseException]

    def write(self, data: bytes) -> None:
        """Write `data` as the download engine does: pwrite, record, hand to the in-order hash."""
        slot = self.ledger.begin(0)
        pos = 0
        for i in range(0, len(data), 256 * 1024):
            view = memoryview(data)[i : i + 256 * 1024]
            os.pwrite(self.growing.fd, view, pos)
            pos += len(view)
            self.ledger.advance(slot, pos)
            self.growing.wrote(pos - len(view), view)
        self.ledger.end(slot)

    def wait(self) -> BaseException | None:
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "uv did not finish"
        return self.error[0] if self.error else None


@pytest.fixture
def start(tmp_path: Path, uv_exe: Path, uv_cache: Path) -> Iterator:
    feeders: list[Feeder] = []

    def begin(pinned: Path, holdback: int) -> Import:
        sha, size = sha256_file(pinned), pinned.stat().st_size
        pin = Pin("torch", "2.8.0+cu128", INDEX, WheelFile(f"{INDEX}/{pinned.name}", pinned.name, sha, size),
                  "3.11", "x86_64-manylinux_2_28")
        store = Store(tmp_path / "store")
        ledger = Ledger(Sidecar("u", size), lambda _: None)
        growing = GrowingFile(store.open_part(sha, size, fresh=True), ledger, holdback)
        shelf = Shelf()
        shelf.expect([sha])
        shelf.offer(sha, growing)
        feeder = Feeder(shelf).__enter__()
        feeders.append(feeder)
        uv = Uv(str(uv_exe), cache_dir=uv_cache, env=uv_env(uv_cache))
        error: list[BaseException] = []
        urls = {sha: feeder.url(sha, pin.wheel.filename)}

        def run() -> None:
            try:
                uv.import_wheels([pin], urls, python="3.11", platform=pin.platform)
            except BaseException as exc:  # noqa: BLE001
                error.append(exc)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        return Import(uv, pin, growing, feeder, ledger, t, error)

    yield begin
    for f in feeders:
        f.__exit__()


def _wheels(tmp_path: Path) -> tuple[Path, bytes]:
    pinned = make_wheel(tmp_path / "pinned", "torch", "2.8.0+cu128", TAG, 1024 * 1024, seed=0)
    other = make_wheel(tmp_path / "other", "torch", "2.8.0+cu128", TAG, 1024 * 1024, seed=1).read_bytes()
    assert len(other) == pinned.stat().st_size and other != pinned.read_bytes()
    return pinned, other


def _leftovers(cache: Path) -> list[Path]:
    return traces(cache, "torch") + list(cache.glob(".tmp*")) + list((cache / "archive-v0").glob("*"))


def test_uv_keeps_nothing_of_a_wheel_cut_off_before_its_last_bytes(tmp_path: Path, start, uv_cache: Path) -> None:
    pinned, other = _wheels(tmp_path)
    imp = start(pinned, HOLDBACK)
    imp.write(other)  # every byte of the wrong file is on disk and hashed
    # uv got all but the held-back tail, and is still waiting for it: it cannot finish the wheel
    assert imp.feeder.wait_sent(imp.pin.wheel.sha256, len(other) - HOLDBACK, WAIT)
    assert imp.feeder.sent(imp.pin.wheel.sha256) == len(other) - HOLDBACK
    assert imp.growing.digest() != imp.pin.wheel.sha256
    assert imp.thread.is_alive()
    imp.growing.settle(False)  # what the engine does when the sha256 fails: the feeder cuts the file off
    assert isinstance(imp.wait(), UvError)
    assert _leftovers(uv_cache) == []


def test_without_the_holdback_old_uv_keeps_the_wrong_bytes(tmp_path: Path, start, uv_cache: Path,
                                                           uv_exe: Path, uv_bin: Path) -> None:
    pinned, other = _wheels(tmp_path)
    imp = start(pinned, 0)  # what streaming the whole file before it verified would do
    imp.write(other)
    assert isinstance(imp.wait(), UvError)  # both versions refuse it: "Hash mismatch"
    if uv_exe == uv_bin:
        assert _leftovers(uv_cache) == []
    else:  # DESIGN.md fact 11: uv 0.8.2 leaves them unpacked; so warmd never sends the last bytes early
        assert [p for p in traces(uv_cache, "torch") if "archive-v0" in p.parts]


def test_a_verified_wheel_finishes_only_once_released(tmp_path: Path, start, uv_cache: Path) -> None:
    pinned, _other = _wheels(tmp_path)
    imp = start(pinned, HOLDBACK)
    imp.write(pinned.read_bytes())
    assert imp.feeder.wait_sent(imp.pin.wheel.sha256, pinned.stat().st_size - HOLDBACK, WAIT)
    assert imp.thread.is_alive() and not list(uv_cache.glob("wheels-v*/index/*/torch/*.http"))
    assert imp.growing.digest() == imp.pin.wheel.sha256
    imp.growing.settle(True)
    assert imp.wait() is None
    assert imp.feeder.sent(imp.pin.wheel.sha256) == pinned.stat().st_size
    assert len(list(uv_cache.glob("wheels-v*/index/*/torch/*.http"))) == 1
