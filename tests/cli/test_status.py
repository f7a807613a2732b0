"""`warmd status`: each project in one documented state, `--json` held to docs/status.schema.json,
and the same verdict on an index from doctor, status and the daemon."""

from __future__ import annotations

import hashlib
import json
import signal
import sqlite3
import time
from pathlib import Path

import jsonschema
import pytest

from tests.support.cli import STATUS_SCHEMA, run_warmd, status_by_name
from tests.support.config import write_warmd_config
from tests.support.daemon import WAIT, DaemonProcess, first_header_check
from tests.support.index_server import IndexServer
from tests.support.projects import lock_project, locked_project, pinned_project, torch_like_set, write_project
from warmd.base import EXIT_OK, EXIT_USAGE
from warmd.cli import STATES, project_statuses
from warmd.state import MIGRATIONS, STATE_FILE, State, migrate

REPO = Path(__file__).resolve().parents[2]
KiB = 1024


def test_the_schema_and_the_code_name_the_same_states() -> None:
    assert STATUS_SCHEMA["$defs"]["project"]["properties"]["state"]["enum"] == list(STATES)
    readme = (REPO / "README.md").read_text()
    for state in STATES:  # README's table documents every one
        assert f"| `{state}` |" in readme, state


def test_status_json_holds_its_schema_in_every_state_a_run_leaves(
        tmp_path: Path, index_server: IndexServer, wheel_dir: Path, uv_bin: Path, uv_cache: Path,
        uv_environ: dict[str, str]) -> None:
    old = torch_like_set(index_server, wheel_dir, "cu128", size=64 * KiB, pythons=("cp311",))
    new = torch_like_set(index_server, wheel_dir, "cu128", version="2.9.0", size=64 * KiB, pythons=("cp311",))
    app = locked_project(tmp_path, "app", server=index_server, ws=old, uv=uv_bin, env=uv_environ)
    plain = write_project(tmp_path, "plain", "3.11", [  # no GPU wheel in what it installs
        "[project]", 'name = "plain"', 'version = "0.1.0"', 'requires-python = ">=3.11"', "dependencies = []", ""])
    lock_project(plain, uv_bin, uv_environ)
    cfg = write_warmd_config(tmp_path, uv_bin, uv_cache)
    assert run_warmd(cfg, "prefetch", app, plain, env=uv_environ).returncode == EXIT_OK

    st = status_by_name(cfg, env=uv_environ)
    assert st["app"]["state"] == "warm" and st["app"]["reason"] is None and st["app"]["since"]
    assert st["app"]["lock_sha256"] == hashlib.sha256((app / "uv.lock").read_bytes()).hexdigest()
    assert st["app"]["wheels_warm"] == st["app"]["wheels_planned"] == 3
    assert st["app"]["bytes_saved"] == st["app"]["bytes_planned"] > 0 and st["app"]["activity"] is None
    assert st["plain"]["state"] == "nothing to warm" and "no cu128 GPU wheels" in st["plain"]["reason"]
    text = run_warmd(cfg, "status", env=uv_environ).stdout
    assert "  state: warm since " in text and "— 3 of 3 wheel(s) warm" in text
    assert "  state: nothing to warm since " in text

    # uv.lock moves on while no warmd runs: what was recorded is about another lock.
    pinned_project(tmp_path, "app", server=index_server, ws=new)
    lock_project(app, uv_bin, uv_environ)
    st = status_by_name(cfg, env=uv_environ)
    assert st["app"]["state"] == "stale" and "uv.lock changed since" in st["app"]["reason"], st["app"]

    # A lock the user broke: failed, with the reason, and no retry until it changes.
    (app / "uv.lock").write_text("version = [\n")
    assert run_warmd(cfg, "prefetch", app, env=uv_environ).returncode == EXIT_USAGE
    st = status_by_name(cfg, env=uv_environ)
    assert st["app"]["state"] == "failed" and "not valid TOML" in st["app"]["reason"], st["app"]
    assert st["app"]["failures"] == 1 and st["app"]["next_retry"] is None
    assert "  state: failed since " in run_warmd(cfg, "status", env=uv_environ).stdout

    # The schema bites: an undocumented state or key is refused.
    doc = next(iter(st.values()))
    for bad in ({**doc, "state": "happy"}, {**doc, "mood": "fine"}, {k: v for k, v in doc.items() if k != "state"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate([bad], STATUS_SCHEMA)


def test_a_warm_project_is_warm_the_same_way_for_doctor_status_and_the_daemon(
        tmp_path: Path, index_server: IndexServer, wheel_dir: Path, uv_bin: Path, uv_cache: Path,
        uv_environ: dict[str, str]) -> None:
    """One verdict on "does uv keep this index's files": the per-index override counts everywhere."""
    ws = torch_like_set(index_server, wheel_dir, "cu128", size=64 * KiB, pythons=("cp311",))
    root = tmp_path / "code"
    kept = pinned_project(root, "kept", server=index_server, ws=ws, index_cache_control="max-age=365000000, immutable")
    plain = pinned_project(root, "plain", server=index_server, ws=ws)
    plain2 = pinned_project(root, "plain2", server=index_server, ws=ws)
    for p in (kept, plain, plain2):
        lock_project(p, uv_bin, uv_environ)
    cfg = write_warmd_config(tmp_path, uv_bin, uv_cache,
                             extra=[f"roots = {json.dumps([str(root)])}", 'recheck-interval = "1h"'])
    assert run_warmd(cfg, "prefetch", kept, plain, plain2, env=uv_environ).returncode == EXIT_OK

    # One line for the index, naming the projects it concerns.
    said = [ln for ln in first_header_check(cfg, uv_environ) if "uv alone keeps no copy" in ln]
    assert len(said) == 1 and f"2 project(s): {plain}, {plain2})" in said[0] and str(kept) not in said[0], said

    st = status_by_name(cfg, env=uv_environ)
    [k_index], [p_index] = st["kept"]["indexes"], st["plain"]["indexes"]
    assert k_index["verdict"] == "kept" and "makes uv keep them" in k_index["why"], k_index
    assert p_index["verdict"] == "not kept" and p_index["cache_control"] == "no-cache,no-store,must-revalidate"
    assert not st["kept"]["flags"] and any("uv alone keeps no copy" in f for f in st["plain"]["flags"])

    proc = run_warmd(cfg, "doctor", kept, plain, "--json", env=uv_environ)
    findings = [f for f in json.loads(proc.stdout)["findings"] if f["check"] == "index" and "/whl/" in f["message"]]
    by_project = {f["message"].split(":")[0]: f for f in findings}
    assert by_project["kept"]["status"] == "ok" and "makes uv keep them" in by_project["kept"]["message"]
    assert by_project["plain"]["status"] == "warn"


def test_failed_work_is_retried_with_backoff_and_the_next_retry_shows(
        tmp_path: Path, index_server: IndexServer, wheel_dir: Path, uv_bin: Path, uv_cache: Path,
        uv_environ: dict[str, str]) -> None:
    ws = torch_like_set(index_server, wheel_dir, "cu128", size=64 * KiB, pythons=("cp311",))
    torch = next(f for f in ws.filenames if f.startswith("torch-"))
    root = tmp_path / "code"
    app = locked_project(root, "app", server=index_server, ws=ws, uv=uv_bin, env=uv_environ)
    cfg = write_warmd_config(tmp_path, uv_bin, uv_cache, extra=[
        f"roots = {json.dumps([str(root)])}", 'recheck-interval = "1h"', "retry-delay = 2", "[download]",
        "retries = 0"])
    index_server.faults.agent = "warmd/"  # an index down for warmd's downloads until it is mended
    index_server.faults.status_burst[torch] = [503] * 1000
    daemon = DaemonProcess(cfg, uv_environ)
    try:
        first = daemon.expect(f"{app}: failed")
        assert " WARNING " in first and "503" in first and first.rstrip().endswith("retrying in 2 s"), first
        second = daemon.expect(f"{app}: failed")
        assert second.rstrip().endswith("retrying in 4 s"), second  # doubled: the index is still down

        def waiting() -> dict | None:  # the failure recorded with its retry (the log line comes first)
            st = status_by_name(cfg, env=uv_environ)["app"]
            return st if st["state"] == "failed" and st["next_retry"] is not None and st["failures"] >= 2 else None

        deadline = time.monotonic() + WAIT  # each look is a `warmd status --json` process: no busy loop
        while (st := waiting()) is None and time.monotonic() < deadline:
            pass
        assert st is not None and "HTTP 503" in st["reason"] and st["next_retry"] >= st["last_check"], st
        # Then held still while status prints, so the retry due cannot begin however slow the machine.
        daemon.proc.send_signal(signal.SIGSTOP)
        try:
            assert "; next retry " in run_warmd(cfg, "status", env=uv_environ).stdout
        finally:
            daemon.proc.send_signal(signal.SIGCONT)
        index_server.faults.status_burst[torch] = []  # the index is back
        daemon.expect(f"{app}: warm (uv.lock")
        st = status_by_name(cfg, env=uv_environ)["app"]
        assert (st["state"], st["failures"], st["next_retry"]) == ("warm", 0, None), st
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(timeout=WAIT) == 0
    finally:
        daemon.kill()
    assert not [ln for ln in daemon.all if " ERROR " in ln]  # an index the daemon waits out is no alarm


def test_a_state_database_of_the_first_schema_is_migrated_and_says_what_it_does_not_know(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / STATE_FILE, isolation_level=None)
    db.execute("BEGIN")
    MIGRATIONS[0](db)
    db.execute("PRAGMA user_version = 1")
    db.execute("COMMIT")
    db.execute("INSERT INTO projects(path, lock, variant, python, last_run) VALUES (?, ?, 'cu128', '3.11', 1.0)",
               (str(tmp_path / "app"), str(tmp_path / "app" / "uv.lock")))
    db.close()
    state = State.open(tmp_path)
    try:
        assert state.schema_version == len(MIGRATIONS) >= 2
        [st] = project_statuses(state)
        assert st.state == "stale" and st.reason.startswith("not warmed yet"), st
    finally:
        state.close()
    again = sqlite3.connect(tmp_path / STATE_FILE, isolation_level=None)
    assert migrate(again) == len(MIGRATIONS)  # a second open finds the work done
    again.close()
