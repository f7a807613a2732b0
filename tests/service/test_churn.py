"""The daemon under churn, as a user lives it: locks rewritten back and forth by the real `uv lock`,
a `uv cache clean` while it warms, an index dropping connections and answering 503, a SIGHUP with a
broken config, a malformed lock, a SIGKILL and a restart. What it says along the way must be true."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.cli import status_json
from tests.support.config import write_warmd_config
from tests.support.daemon import WAIT, DaemonProcess, NotifySocket, scratch_made
from tests.support.index_server import IndexServer
from tests.support.projects import WheelSet, lock_project, pinned_project, run_uv, torch_like_set
from warmd.state import STATE_FILE, State

KiB = 1024


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    n = NotifySocket(tmp_path / "notify.sock")
    yield n
    n.close()


def _sha(project: Path) -> str:
    return hashlib.sha256((project / "uv.lock").read_bytes()).hexdigest()


def _warm_line(project: Path) -> str:
    """What the daemon logs once a project is proven warm for the uv.lock it has now."""
    return f"{project}: warm (uv.lock {_sha(project)[:12]})"


def _until_warm(daemon: DaemonProcess, projects: list[Path], *, since: int) -> None:
    """Wait for each project's warm line. The index's 503s are met through the daemon's retries,
    doubling from `retry-delay`: each retry it starts is progress, so the bound (WAIT) is on the
    silence between two of them, not on how long a loaded machine takes for them all."""
    while True:
        seen = daemon.mark()
        try:
            daemon.wait_for([_warm_line(p) for p in projects], since=since)
            return
        except AssertionError:
            if not any("trying the failed work again" in ln for ln in daemon.all[seen:]):
                raise


def _pin(project: Path, server: IndexServer, ws: WheelSet) -> None:
    pinned_project(project.parent, project.name, server=server, ws=ws)


class Status:
    """`warmd status --json` of the real command, each answer held to the published schema."""

    def __init__(self, cfg: Path, env: dict[str, str]) -> None:
        self.cfg, self.env = cfg, env
        self.samples: list[list[dict]] = []

    def __call__(self) -> dict[str, dict]:
        data = status_json(self.cfg, env=self.env)
        self.samples.append(data)
        return {Path(p["project"]).name: p for p in data}


# Minutes of real `uv lock` runs and two daemons: the suite's 300 s would time a loaded machine. This
# bound only catches a hang; every wait inside ends on an event (WAIT each).
@pytest.mark.timeout(1800)
def test_the_daemon_tells_the_truth_under_churn(tmp_path: Path, wheel_dir: Path, uv_bin: Path, uv_cache: Path,
                                                uv_environ: dict[str, str], notify: NotifySocket) -> None:
    root = tmp_path / "code"
    daemon_tmp = tmp_path / "daemon-tmp"  # the daemon's TMPDIR and memory folder: its scratch folders, and their litter
    daemon_tmp.mkdir()
    with IndexServer(vouched=True) as server:
        old = torch_like_set(server, wheel_dir, "cu128", size=64 * KiB, pythons=("cp311",))
        new = torch_like_set(server, wheel_dir, "cu128", version="2.9.0", size=64 * KiB, pythons=("cp311",))
        new_torch = next(f for f in new.filenames if f.startswith("torch-"))
        churning = [root / f"p{i}" for i in range(4)]
        steady = root / "steady"  # never re-locked: warm from the first run to the last
        broken = churning[3]  # gets a malformed uv.lock for a while: the one failure the user must mend
        for p in [*churning, steady]:
            _pin(p, server, old)
            lock_project(p, uv_bin, uv_environ)
        cfg = write_warmd_config(tmp_path, uv_bin, uv_cache, extra=[
            f"roots = {json.dumps([str(root)])}", 'recheck-interval = "1h"', "retry-delay = 1",
            "[download]", "retries = 1", "[watch]", "debounce = 0.1"])
        env = dict(uv_environ, NOTIFY_SOCKET=str(notify.path), PYTHONUNBUFFERED="1", TMPDIR=str(daemon_tmp),
                   XDG_RUNTIME_DIR=str(daemon_tmp))
        status = Status(cfg, uv_environ)
        runs: list[DaemonProcess] = []
        try:
            first = DaemonProcess(cfg, env)
            runs.append(first)
            notify.until(lambda m: m == "READY=1")
            first.wait_for([_warm_line(p) for p in [*churning, steady]])
            before = status()
            assert {name: p["state"] for name, p in before.items()} == {p.name: "warm" for p in [*churning, steady]}

            # The index turns hostile for warmd's downloads of the new torch: a run of 503s, then
            # connections cut mid-body (uv's own metadata requests for `uv lock` still get through).
            server.faults.agent = "warmd/"
            server.faults.status_burst[new_torch] = [503] * 12
            server.faults.drop_after[new_torch] = [4 * KiB, 4 * KiB]

            def relock(p: Path, sets: list[WheelSet]) -> None:
                for ws in sets:
                    _pin(p, server, ws)
                    lock_project(p, uv_bin, uv_environ)

            def churn(plans: dict[Path, list[WheelSet]]) -> None:
                """Each project re-locked through its pins, all at once, as from several terminals."""
                with ThreadPoolExecutor(len(plans)) as pool:
                    for done in [pool.submit(relock, p, sets) for p, sets in plans.items()]:
                        done.result()

            for rnd in range(3):
                # Pins moving back and forth, a lock a few tenths of a second after the last.
                churn({p: [new, old] * 2 + [new] if (i + rnd) % 2 == 0 else [old, new] * 2 + [old]
                       for i, p in enumerate(churning) if not (p == broken and rnd == 2)})
                if rnd == 0:
                    first.expect("uv.lock changed")
                    run_uv(uv_bin, ["cache", "clean"], cwd=root, env=uv_environ)  # while it warms
                if rnd == 1:
                    good = cfg.read_text()
                    cfg.write_text(good + "bogus-key = 1\n")
                    first.proc.send_signal(signal.SIGHUP)
                    assert "bogus-key" in first.expect("reload failed")
                    cfg.write_text(good)
                    # Not uv's doing: a lock broken by hand, put in place as an editor saves.
                    (broken / ".uv.lock.swp").write_text("version = [\n")
                    os.replace(broken / ".uv.lock.swp", broken / "uv.lock")
                    first.wait_for([f"{broken / 'uv.lock'}: not valid TOML"])
                status()
            # Mid-churn, with a uv child at work, SIGKILL: nothing that was warm may be reported
            # otherwise, and the state must be whole.
            warm_before = {name for name, p in status().items() if p["state"] == "warm"}
            with scratch_made(daemon_tmp) as made:
                (broken / "uv.lock").unlink()  # `uv lock` cannot read the broken one either
                lock_project(broken, uv_bin, uv_environ)
                assert made.wait(WAIT), "warmd never ran uv for the repaired lock"
                first.proc.kill()
                first.proc.wait()
            after_kill = status()
            assert {name for name in warm_before if after_kill[name]["state"] == "warm"} == warm_before, after_kill
            assert "steady" in warm_before
            db = sqlite3.connect(tmp_path / "state" / STATE_FILE)
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            db.close()

            # Restart, and the final pins, while the index still misbehaves if anything of it is left.
            second = DaemonProcess(cfg, env)
            runs.append(second)
            mark = second.mark()
            for i, p in enumerate(churning):
                _pin(p, server, new if i % 2 else old)
                lock_project(p, uv_bin, uv_environ)
            _until_warm(second, [*churning, steady], since=mark)
            final = status()
            for p in [*churning, steady]:
                assert final[p.name]["state"] == "warm" and final[p.name]["lock_sha256"] == _sha(p), final[p.name]
                assert final[p.name]["wheels_warm"] == final[p.name]["wheels_planned"] > 0
            assert server.faults.status_burst[new_torch] == [], "the 503s were never met"

            # uv says so: a fresh `uv sync` of each project downloads no GPU wheel, and works offline.
            for p in [*churning, steady]:
                server.reset_counters()
                run_uv(uv_bin, ["sync", "--frozen"], cwd=p, env=dict(uv_environ, UV_PROJECT_ENVIRONMENT=str(
                    tmp_path / "venvs" / p.name)))
                assert [h for h in server.wheel_gets() if "/whl/" in h.path] == [], p
                run_uv(uv_bin, ["sync", "--frozen", "--offline"], cwd=p, env=dict(
                    uv_environ, UV_PROJECT_ENVIRONMENT=str(tmp_path / "venvs-offline" / p.name)))

            second.proc.send_signal(signal.SIGTERM)
            assert second.proc.wait(timeout=WAIT) == 0
        finally:
            for d in runs:
                d.kill()
    second.wait_for(["stopping"])

    # No litter: a clean stop leaves none of warmd's scratch folders, the killed run's included, and
    # none of uv's own (`.tmp*`, `uv-*.lock`): uv ran in a TMPDIR of warmd's, removed after it.
    assert sorted(p.name for p in daemon_tmp.iterdir()) == []

    # The log cried wolf for nothing: its only ERRORs are the faults injected on purpose, each named.
    log = [ln for d in runs for ln in d.all]
    assert not any("Traceback" in ln for ln in log)
    errors = [ln for ln in log if " ERROR " in ln]
    reload_errors = [ln for ln in errors if "reload failed" in ln]
    lock_errors = [ln for ln in errors if f"{broken / 'uv.lock'}: not valid TOML" in ln]
    assert reload_errors and all(str(cfg) in ln and "SIGHUP" in ln for ln in reload_errors)
    assert lock_errors and all("uv lock" in ln for ln in lock_errors)
    assert sorted(errors) == sorted(reload_errors + lock_errors), errors

    # No project was ever failed for work that was merely superseded: every failed outcome on
    # record, and every failed state `warmd status` showed, is one of the injected faults.
    def injected(project: str, reason: str | None) -> bool:
        reason = reason or ""
        hostile_index = new_torch in reason and "giving up after" in reason
        return hostile_index or (project == broken.name and "not valid TOML" in reason)

    st = State.open(tmp_path / "state")
    try:
        history = {p.name: st.history(p) for p in [*churning, steady]}
    finally:
        st.close()
    for name, entries in history.items():
        failed = [(reason, sha) for _at, outcome, reason, sha in entries if outcome == "failed"]
        assert all(injected(name, reason) for reason, _sha in failed), (name, failed)
    assert [outcome for _at, outcome, _r, _s in history["steady"]] == ["warm"]
    assert any(outcome == "failed" for _at, outcome, _r, _s in history[broken.name])
    for sample in status.samples:
        for p in sample:
            assert p["state"] != "failed" or injected(Path(p["project"]).name, p["reason"]), p
            assert not re.search(r"exit status -\d|still would download", json.dumps(p)), p
