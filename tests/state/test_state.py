"""The SQLite state: round trips, schema version, live updates, a reader beside a writer."""

from __future__ import annotations

import json
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from warmd.base import HeaderCheck, Pin, ProjectReport, WarmdError, WheelFile, WheelReport
from warmd.warm import outcome_of
from warmd.cli import project_statuses
from warmd.state import SCHEMA_VERSION, STATE_FILE, State

INDEX = "https://download.example.org/whl/cu128"


def _pin(name: str, version: str, sha: str, python: str = "3.11", size: int | None = 1000) -> Pin:
    fn = f"{name}-{version}-cp311-cp311-manylinux_2_28_x86_64.whl"
    return Pin(name=name, version=version, index=INDEX,
               wheel=WheelFile(url=f"{INDEX}/{fn}", filename=fn, sha256=sha, size=size),
               python=python, platform="x86_64-manylinux_2_28")


def _report(project: Path, *wheels: WheelReport, error: str | None = None) -> ProjectReport:
    return ProjectReport(project=project, lock=project / "uv.lock", variant="cu128", python=("3.11",),
                         wheels=tuple(wheels), error=error)


def _record(state: State, report: ProjectReport) -> None:
    state.record_report(report, outcome_of(report))


def test_round_trip_and_status(tmp_path: Path) -> None:
    state = State.open(tmp_path / "state")
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    proj = tmp_path / "app"
    torch = _pin("torch", "2.8.0+cu128", "a" * 64, size=5000)
    triton = _pin("pytorch-triton", "3.4.0", "b" * 64, size=None)
    _record(state, _report(
        proj,
        WheelReport(torch, "warm", None, bytes_downloaded=5000),
        WheelReport(triton, "failed", "HTTP 503 after 8 retries", bytes_downloaded=10),
    ))
    assert state.projects() == [proj]
    assert sorted(state.all_pins(), key=lambda x: x[1].name) == [(proj, triton), (proj, torch)]
    [st] = project_statuses(state)
    assert (st.path, st.variant, st.python, st.error) == (proj, "cu128", ("3.11",), None)
    by_name = {w.name: w for w in st.wheels}
    assert by_name["torch"].state == "warm" and by_name["torch"].bytes_saved == 5000
    assert by_name["pytorch-triton"].state == "failed"
    assert by_name["pytorch-triton"].reason == "HTTP 503 after 8 retries"
    assert by_name["pytorch-triton"].bytes_saved == 0
    assert st.bytes_saved == 5000
    assert st.indexes[0].verdict == "unknown"  # no header check yet
    data = json.loads(json.dumps(st.to_json()))
    assert data["path"] == str(proj) and data["wheels"][0]["name"] in ("torch", "pytorch-triton")

    # live update, then a new lock that drops triton and moves torch: old rows go
    state.set_wheel_state(proj, "a" * 64, "fetching")
    assert state.wheel_state(proj, "a" * 64) == "fetching"
    torch2 = _pin("torch", "2.9.0+cu128", "c" * 64)
    _record(state, _report(proj, WheelReport(torch2, "warm", None, bytes_reused=1000)))
    [st] = project_statuses(state)
    assert [(w.name, w.version, w.state) for w in st.wheels] == [("torch", "2.9.0+cu128", "warm")]
    assert state.wheel_state(proj, "b" * 64) is None

    # a lock that cannot be read records the error and keeps what was known
    _record(state, _report(proj, error="uv.lock: not valid TOML"))
    [st] = project_statuses(state)
    assert st.error == "uv.lock: not valid TOML" and len(st.wheels) == 1
    state.forget_project(proj)
    assert project_statuses(state) == [] and state.all_pins() == []
    state.close()


def test_schema_version_and_reopen(tmp_path: Path) -> None:
    state = State.open(tmp_path)
    assert state.schema_version == SCHEMA_VERSION >= 1
    proj = tmp_path / "p"
    _record(state, _report(proj, WheelReport(_pin("torch", "1", "d" * 64), "warm")))
    state.close()
    again = State.open(tmp_path)  # migrating twice is a no-op, data stays
    assert again.schema_version == SCHEMA_VERSION and again.projects() == [proj]
    again.close()
    db = sqlite3.connect(tmp_path / STATE_FILE)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(WarmdError, match="newer than this warmd"):
        State.open(tmp_path)


def test_verified_sizes_are_kept_while_a_lock_or_the_look_ahead_holds_the_file(tmp_path: Path) -> None:
    """record_sizes keeps what this run verified and what a project pins or a look-ahead warmed; a
    size whose file nobody holds any more goes with the next record."""
    from warmd.base import AheadReport

    state = State.open(tmp_path)
    proj = tmp_path / "app"
    torch, triton, ahead, old = "a" * 64, "b" * 64, "c" * 64, "d" * 64
    _record(state, _report(proj, WheelReport(_pin("torch", "1", torch), "warm"),
                           WheelReport(_pin("pytorch-triton", "3", triton), "warm")))
    state.record_ahead(AheadReport(proj, "0" * 64, "ready", wheels=(WheelReport(_pin("torch", "2", ahead), "warm"),)))
    state.record_sizes({torch: 5000, old: 10})  # `old`: verified this run, though no lock pins it
    assert state.sizes([torch, triton, old]) == {torch: 5000, old: 10}
    state.record_sizes({ahead: 7000, torch: 5001})
    assert state.sizes([torch, triton, ahead, old]) == {torch: 5001, ahead: 7000}  # the newer size; `old` gone
    _record(state, _report(proj, WheelReport(_pin("pytorch-triton", "3", triton), "warm")))  # torch leaves the lock
    state.forget_ahead_files([ahead])  # a lock adopted it, or it was dropped
    state.record_sizes({triton: 1000})
    assert state.sizes([torch, triton, ahead, old]) == {triton: 1000}
    state.close()


def test_v7_drops_the_hosts_verdicts_an_earlier_warmd_kept(tmp_path: Path) -> None:
    from warmd.state import MIGRATIONS

    db = sqlite3.connect(tmp_path / STATE_FILE)
    for step in MIGRATIONS[:6]:
        step(db)
    db.execute("PRAGMA user_version = 6")
    db.execute("INSERT INTO links(host, kind, cache_control, stream_rate, found_at) VALUES ('h', 'fast', NULL, 1, 0)")
    db.commit()
    db.close()
    State.open(tmp_path).close()
    db = sqlite3.connect(tmp_path / STATE_FILE)
    assert db.execute("SELECT name FROM sqlite_master WHERE name='links'").fetchall() == []
    db.close()


@pytest.mark.parametrize("ending", ["close(wait=False) then exit", "os._exit before any close"])
def test_a_prefetch_that_ends_before_sqlites_last_checkpoint_loses_nothing(ending: str, tmp_path: Path) -> None:
    """`prefetch` does not wait for the checkpoint (and its fsync) of the last close: what it
    recorded is in the WAL, and the next open has it, however the process ended."""
    code = textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).parents[2])!r})
        from tests.state.test_state import _pin, _record, _report
        from warmd.base import WheelReport
        from warmd.state import State
        state = State.open(Path({str(tmp_path)!r}))
        _record(state, _report(Path({str(tmp_path / "p")!r}), WheelReport(_pin("torch", "1", "d" * 64), "warm")))
        if {ending.startswith("close")!r}:
            state.close(wait=False)
        else:
            os._exit(0)
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    again = State.open(tmp_path)
    assert again.projects() == [tmp_path / "p"]
    assert again.wheel_state(tmp_path / "p", "d" * 64) == "warm"
    again.close()
    assert not (tmp_path / f"{STATE_FILE}-wal").exists() or (tmp_path / f"{STATE_FILE}-wal").stat().st_size == 0


def test_headers_history_and_moved_file_flag(tmp_path: Path) -> None:
    state = State.open(tmp_path)
    proj = tmp_path / "p"
    pin = _pin("torch", "2.8.0+cu128", "e" * 64)
    _record(state, _report(proj, WheelReport(pin, "warm")))
    secret = pin.wheel.url.replace("https://", "https://user:s3cret@")
    first = HeaderCheck(url=secret, status=200, cache_control="no-store", etag='"v1"', content_length=1000,
                        checked_at=2e9)
    state.record_headers(first)
    got = state.last_headers(pin.wheel.url)
    assert got is not None and got.etag == '"v1"' and "s3cret" not in got.url
    state.record_headers(HeaderCheck(url=INDEX + "/", status=200, cache_control="no-cache,no-store",
                                     checked_at=2e9))
    state.record_headers(HeaderCheck(url=pin.wheel.url, status=503, checked_at=2e9 + 1, error="HTTP 503"))
    assert state.last_headers(pin.wheel.url).etag == '"v1"'  # the last *good* answer
    [st] = project_statuses(state)
    assert st.indexes[0].verdict == "not kept"
    assert not any("moved" in f for f in st.flags)

    state.record_headers(HeaderCheck(url=pin.wheel.url, status=200, etag='"v2"', checked_at=2e9 + 2),
                         warning="torch...whl: ETag \"v1\" -> \"v2\" upstream: the bytes behind a locked hash moved")
    state.record_headers(HeaderCheck(url=pin.wheel.url, status=200, etag='"v2"', checked_at=2e9 + 3))
    [st] = project_statuses(state)
    # still flagged after a calm re-check: a moved file is never silently re-trusted
    assert st.wheels[0].warnings and "moved" in st.wheels[0].warnings[0]
    assert any("moved" in f for f in st.flags)
    assert "s3cret" not in json.dumps(st.to_json())
    state.close()


def test_reader_in_another_connection_while_writing(tmp_path: Path) -> None:
    writer = State.open(tmp_path)
    reader = State.open(tmp_path)  # what `warmd status` does while the daemon runs
    n = 150
    errors: list[BaseException] = []
    done = threading.Event()

    def write() -> None:
        try:
            for i in range(n):
                proj = tmp_path / f"p{i % 5}"
                pin = _pin("torch", f"{i}", f"{i:064x}")
                writer.set_wheel_state(proj, pin.wheel.sha256, "fetching")
                _record(writer, _report(proj, WheelReport(pin, "warm", None, bytes_downloaded=i)))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            done.set()

    t = threading.Thread(target=write)
    t.start()
    reads = 0
    while not done.is_set():
        for st in project_statuses(reader):  # one snapshot: a reported project has exactly its one pin
            assert len(st.wheels) == (1 if st.last_check else 0)
        reads += 1
    t.join()
    assert errors == []
    assert reads > 0
    final = {st.path.name: st.wheels[0].version for st in project_statuses(reader)}
    assert final == {f"p{k}": str(n - 5 + k) for k in range(5)}
    writer.close()
    reader.close()
