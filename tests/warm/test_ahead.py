"""The upgrade look-ahead with the real uv (the pinned one and 0.8.2) and the local index: a newer
torch published on the index is warmed before anyone upgrades, without touching the project; the
user's own `uv lock --upgrade-package torch` and `uv sync` then send no wheel request at all."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.cli import run_warmd, status_by_name, warmd_json
from tests.support.config import PACKAGES, write_warmd_config
from tests.support.daemon import WAIT, DaemonProcess
from tests.support.index_server import IndexServer
from tests.support.projects import TORCH_PLATFORM, locked_project, run_uv, torch_like_set
from tests.support.uvplan import tree
from tests.support.wheels import make_wheel

REPO = Path(__file__).resolve().parents[2]
KiB = 1024
TORCH = 256 * KiB  # the synthetic torch's payload; triton and nvtx get a quarter each


@dataclass
class Lab:
    tmp: Path
    server: IndexServer
    uv: Path
    env: dict[str, str]
    cache: Path

    def config(self, *extra: str, name: str = "warmd", variant: str = "cu128", packages: Sequence[str] = PACKAGES) -> Path:
        folder = self.tmp / name
        folder.mkdir(exist_ok=True)
        return write_warmd_config(folder, self.uv, self.cache, variant=variant, extra=extra, packages=packages)

    def warmd(self, cfg: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return run_warmd(cfg, *args, env=env or self.env)

    def prefetch(self, cfg: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict, str]:
        return warmd_json(cfg, "prefetch", *args, env=env or self.env)

    def status(self, cfg: Path) -> dict[str, dict]:
        return status_by_name(cfg, env=self.env)


@pytest.fixture(params=["uv", "uv-0.8.2"])
def lab(request: pytest.FixtureRequest, tmp_path: Path, index_server: IndexServer, uv_cache: Path,
        uv_environ: dict[str, str]) -> Lab:
    uv = request.getfixturevalue("uv_bin" if request.param == "uv" else "uv_old_bin")
    return Lab(tmp_path, index_server, uv, uv_environ, uv_cache)


def _project(lab: Lab, name: str, requirement: str, variant: str = "cu128") -> Path:
    ws = torch_like_set(lab.server, lab.tmp / "wheels", variant, pythons=("cp311",), size=TORCH)
    project = locked_project(lab.tmp, name, server=lab.server, ws=ws, deps=[requirement], uv=lab.uv, env=lab.env)
    return project


def _publish(lab: Lab, version: str = "2.9.0", variant: str = "cu128") -> str:
    """A newer torch build on the index; returns its wheel's file name."""
    ws = torch_like_set(lab.server, lab.tmp / "wheels", variant, version=version, pythons=("cp311",), size=TORCH)
    return next(f for f in ws.filenames if f.startswith("torch-"))


def _ready(lab: Lab, cfg: Path, project: Path) -> dict:
    """`warmd prefetch --ahead` of the project, which must find torch 2.9.0+cu128 ready; its report."""
    code, report, err = lab.prefetch(cfg, "--ahead", str(project))
    assert code == 0, err
    (ahead,) = report["ahead"]
    assert ahead["state"] == "ready", ahead
    assert {"name": "torch", "from": "2.8.0+cu128", "to": "2.9.0+cu128"} in ahead["packages"]
    assert "ERROR" not in err
    return ahead


def test_the_next_upgrade_is_warm_before_the_user_asks_and_the_project_is_untouched(lab: Lab) -> None:
    project = _project(lab, "app", "torch>=2.5")
    cfg = lab.config()
    run_uv(lab.uv, ["sync"], cwd=project, env=lab.env)  # the user's venv, with torch 2.8.0
    code, _report, err = lab.prefetch(cfg, str(project))
    assert code == 0, err
    new_torch = _publish(lab)
    before = tree(project, folder_mtimes=True)
    lock_bytes = (project / "uv.lock").read_bytes()
    lab.server.reset_counters()

    ahead = _ready(lab, cfg, project)
    assert [(w["filename"], w["state"]) for w in ahead["wheels"]] == [(new_torch, "warm")]
    assert ahead["line"] == f"upgrade ready: torch 2.9.0+cu128, {ahead['bytes_warm'] / KiB:.1f} KiB warm"
    assert lab.server.bytes_served(new_torch) >= (lab.tmp / "wheels" / "cu128" / new_torch).stat().st_size
    # The project, its lock and its venv were only read: every entry, size and mtime as it was.
    assert tree(project, folder_mtimes=True) == before
    assert (project / "uv.lock").read_bytes() == lock_bytes

    st = lab.status(cfg)["app"]
    assert st["state"] == "warm" and st["upgrade"]["state"] == "ready"
    assert st["upgrade"]["line"] == ahead["line"]
    assert "  " + ahead["line"] in lab.warmd(cfg, "status").stdout

    # The user upgrades: uv's lock reads the new torch's metadata from its cache, the sync finds
    # the wheel there. Not one request for a wheel reaches the index (HEAD, Range or whole).
    lab.server.reset_counters()
    run_uv(lab.uv, ["lock", "--upgrade-package", "torch"], cwd=project, env=lab.env)
    assert "2.9.0+cu128" in (project / "uv.lock").read_text()
    synced = run_uv(lab.uv, ["sync"], cwd=project, env=lab.env)
    assert "torch==2.9.0+cu128" in synced.stderr
    assert lab.server.wheel_hits() == [], [(h.method, h.path, h.range) for h in lab.server.wheel_hits()]
    run_uv(lab.uv, ["venv", "--clear", str(project / ".venv")], cwd=project, env=lab.env)
    offline = run_uv(lab.uv, ["sync", "--offline"], cwd=project, env=lab.env)
    assert "torch==2.9.0+cu128" in offline.stderr
    # The look-ahead was about the lock before the upgrade: status no longer shows it.
    assert lab.status(cfg)["app"]["upgrade"] is None


def _vision(lab: Lab, version: str, torch: str, variant: str = "cu128") -> str:
    """A torchvision build on the variant's index that needs exactly its torch, as the real ones do."""
    wheel = make_wheel(lab.tmp / "wheels" / variant, "torchvision", f"{version}+{variant}",
                       f"cp311-cp311-{TORCH_PLATFORM}", 16 * KiB, requires=[f"torch=={torch}"])
    lab.server.add_wheel(wheel, variant)
    return wheel.name


def _bump(project: Path, pins: dict[str, str]) -> None:
    """What the user does by hand: the `==` pins in pyproject.toml move to the new versions."""
    text = (project / "pyproject.toml").read_text()
    for old, new in pins.items():
        assert old in text
        text = text.replace(old, new)
    (project / "pyproject.toml").write_text(text)


def test_exact_pins_move_together_and_the_users_bump_downloads_no_wheel(lab: Lab) -> None:
    """The seed's shape: torch and torchvision pinned with `==` to one variant's build. The look-ahead
    moves both, in a scratch copy, to the newest release the index offers for that build."""
    ws = torch_like_set(lab.server, lab.tmp / "wheels", "cu128", pythons=("cp311",), size=TORCH)
    _vision(lab, "0.23.0", "2.8.0")
    ws.gpu_packages.append("torchvision")
    pins = ["torch==2.8.0+cu128", "torchvision==0.23.0+cu128"]
    project = locked_project(lab.tmp, "seed", server=lab.server, ws=ws, deps=pins, uv=lab.uv, env=lab.env)
    cfg = lab.config(packages=[*PACKAGES, "torchvision"])
    run_uv(lab.uv, ["sync"], cwd=project, env=lab.env)
    assert lab.prefetch(cfg, str(project))[0] == 0
    new_torch, new_vision = _publish(lab), _vision(lab, "0.24.0", "2.9.0")
    before = tree(project, folder_mtimes=True)
    lab.server.reset_counters()

    ahead = _ready(lab, cfg, project)
    assert {"name": "torchvision", "from": "0.23.0+cu128", "to": "0.24.0+cu128"} in ahead["packages"]
    assert sorted((w["filename"], w["state"]) for w in ahead["wheels"]) == [(new_torch, "warm"), (new_vision, "warm")]
    assert tree(project, folder_mtimes=True) == before  # the pins moved in warmd's scratch copy only
    st = lab.status(cfg)["seed"]
    assert st["upgrade"]["state"] == "ready"
    assert st["upgrade"]["line"].startswith("upgrade ready: torch 2.9.0+cu128 (+1 more), ")

    # The user bumps the pins by hand, then locks and syncs: no request for any wheel.
    lab.server.reset_counters()
    _bump(project, {"torch==2.8.0+cu128": "torch==2.9.0+cu128", "torchvision==0.23.0+cu128": "torchvision==0.24.0+cu128"})
    run_uv(lab.uv, ["lock"], cwd=project, env=lab.env)
    synced = run_uv(lab.uv, ["sync"], cwd=project, env=lab.env)
    assert "torch==2.9.0+cu128" in synced.stderr and "torchvision==0.24.0+cu128" in synced.stderr
    assert lab.server.wheel_hits() == [], [(h.method, h.path, h.range) for h in lab.server.wheel_hits()]
    run_uv(lab.uv, ["venv", "--clear", str(project / ".venv")], cwd=project, env=lab.env)
    assert "torch==2.9.0+cu128" in run_uv(lab.uv, ["sync", "--offline"], cwd=project, env=lab.env).stderr


def test_an_exact_pin_warms_only_a_newer_release_of_its_own_build(lab: Lab) -> None:
    project = _project(lab, "pinned", "torch==2.8.0+cu128")
    cfg = lab.config()
    assert lab.prefetch(cfg, str(project))[0] == 0
    store = {p.name for p in (lab.tmp / "warmd" / "store" / "blobs").rglob("*") if p.is_file()}

    code, report, err = lab.prefetch(cfg, "--ahead", str(project))  # nothing newer yet
    assert code == 0, err
    (ahead,) = report["ahead"]
    assert ahead["state"] == "none" and ahead["wheels"] == [] and ahead["packages"] == [], ahead
    assert lab.status(cfg)["pinned"]["upgrade"]["line"] == (
        "no upgrade: the project pins torch==2.8.0+cu128 and its index offers no newer release of the same build "
        "that resolves with the others pinned")

    # A newer torch on the same index, but another variant's build: not what the pin will name.
    other = make_wheel(lab.tmp / "wheels" / "cu128", "torch", "2.9.0+cu130", f"cp311-cp311-{TORCH_PLATFORM}", TORCH,
                       requires=["filelock"])
    lab.server.add_wheel(other, "cu128")
    lab.server.reset_counters()
    code, report, err = lab.prefetch(cfg, "--ahead", str(project))
    assert code == 0, err
    (ahead,) = report["ahead"]
    assert ahead["state"] == "none" and ahead["wheels"] == [], ahead
    assert "the newest torch the index offers with them is 2.9.0+cu130, another build than 2.8.0+cu128" in ahead["reason"]
    assert lab.server.bytes_served(other.name) < TORCH / 4  # uv read its metadata; warmd fetched nothing
    assert {p.name for p in (lab.tmp / "warmd" / "store" / "blobs").rglob("*") if p.is_file()} == store
    assert (project / "pyproject.toml").read_text().count("torch==2.8.0+cu128") == 1


@pytest.mark.parametrize("trouble", ["down", "slow"])
def test_an_index_that_is_down_or_slow_postpones_the_look_ahead(lab: Lab, trouble: str) -> None:
    project = _project(lab, "app", "torch>=2.5")
    cfg = lab.config()
    assert lab.prefetch(cfg, str(project))[0] == 0
    _publish(lab)
    env = lab.env | {"UV_HTTP_RETRIES": "0"}  # the user's uv settings apply: no need to wait out retries
    if trouble == "down":
        lab.server.stop()
    else:
        env["UV_HTTP_TIMEOUT"] = "1"
        lab.server.latency = 2.0  # every answer comes after uv gave up on it

    code, report, err = lab.prefetch(cfg, "--ahead", str(project), env=env)
    assert code == 0, err  # the project is warm; the look-ahead waits, it did not fail
    (ahead,) = report["ahead"]
    assert ahead["state"] == "postponed" and ahead["wheels"] == [], ahead
    assert ("Connection refused" if trouble == "down" else "timed out") in ahead["reason"]
    assert " ERROR " not in err and " WARNING " in err
    lab.server.latency = 0.0
    st = lab.status(cfg)["app"]
    assert st["state"] == "warm" and st["upgrade"]["state"] == "postponed"
    assert st["upgrade"]["line"].startswith("upgrade look-ahead postponed: `uv lock --upgrade-package` failed")


def _fake_busctl(folder: Path, fixture: str) -> dict[str, str]:
    """A `busctl` that answers with a recorded NetworkManager reading (no system bus runs here)."""
    folder.mkdir(exist_ok=True)
    tool = folder / "busctl"
    tool.write_text(f"#!/bin/sh\ncat {REPO / 'tests' / 'fixtures' / 'power' / fixture}\n")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    return {"PATH": f"{folder}{os.pathsep}"}


def test_a_metered_connection_postpones_the_look_ahead_unless_the_config_allows_it(lab: Lab) -> None:
    project = _project(lab, "app", "torch>=2.5")
    cfg = lab.config()
    assert lab.prefetch(cfg, str(project))[0] == 0
    new_torch = _publish(lab)
    fake = _fake_busctl(lab.tmp / "bin", "busctl-metered-guess-yes.txt")
    env = lab.env | {"PATH": fake["PATH"] + lab.env["PATH"]}
    lab.server.reset_counters()

    code, report, err = lab.prefetch(cfg, "--ahead", str(project), env=env)
    assert code == 0, err
    (ahead,) = report["ahead"]
    assert ahead["state"] == "postponed" and "metered" in ahead["reason"] and "busctl" in ahead["reason"]
    assert "on-metered = true" in ahead["reason"]
    assert lab.server.hits == []  # not even the index pages: nothing was asked of the network
    assert " WARNING " not in err and " ERROR " not in err  # a choice of the user's, not trouble

    allowed = lab.config("[ahead]", "on-metered = true")
    code, report, err = lab.prefetch(allowed, "--ahead", str(project), env=env)
    assert code == 0, err
    assert report["ahead"][0]["state"] == "ready"
    assert lab.server.wheel_gets(new_torch)


def test_the_budget_goes_to_the_newest_project_first_and_doctor_reports_it(lab: Lab) -> None:
    older = _project(lab, "older", "torch>=2.5", variant="cu128")
    newer = _project(lab, "newer", "torch>=2.5", variant="cu126")
    os.utime(older / "uv.lock", (1_700_000_000, 1_700_000_000))  # locked long before the other
    size = next((lab.tmp / "wheels" / "cu128").glob("torch-2.8.0*")).stat().st_size
    # Room for one new torch, not two.
    cfg = lab.config("[ahead]", f"budget = {int(size * 1.5)}",
                     "[[project]]", f"path = {json.dumps(str(newer))}", 'variant = "cu126"')
    code, _r, err = lab.prefetch(cfg, str(older), str(newer))
    assert code == 0, err
    old_new, new_new = _publish(lab, variant="cu128"), _publish(lab, variant="cu126")
    lab.server.reset_counters()

    code, report, err = lab.prefetch(cfg, "--ahead", str(older), str(newer))
    assert code == 0, err
    ahead = {Path(a["project"]).name: a for a in report["ahead"]}
    assert [(w["filename"], w["state"]) for w in ahead["newer"]["wheels"]] == [(new_new, "warm")]
    assert ahead["newer"]["state"] == "ready"
    assert ahead["older"]["state"] == "partial", ahead["older"]
    assert [(w["filename"], w["state"]) for w in ahead["older"]["wheels"]] == [(old_new, "cold")]
    assert "budget" in ahead["older"]["wheels"][0]["reason"] and ahead["older"]["line"].startswith(
        "upgrade partly ready: torch 2.9.0+cu128, 0 B of ")
    # Of the wheel left out the index served only what `uv lock` reads (its metadata), not the file.
    assert lab.server.bytes_served(old_new) < size / 4

    doctor = json.loads(lab.warmd(cfg, "doctor", "--json").stdout)
    (budget,) = [f for f in doctor["findings"] if f["check"] == "ahead" and "budget" in f["message"]]
    assert "used by 1 warmed-ahead wheel(s)" in budget["message"] and budget["status"] == "info"
    assert budget["message"].startswith("upgrade look-ahead off")


def test_the_daemon_looks_ahead_on_its_schedule_and_the_upgrade_it_warmed_is_adopted(
        tmp_path: Path, index_server: IndexServer, uv_bin: Path, uv_cache: Path, uv_environ: dict[str, str]) -> None:
    lab = Lab(tmp_path, index_server, uv_bin, uv_environ, uv_cache)
    root = tmp_path / "code"
    ws = torch_like_set(index_server, tmp_path / "wheels", "cu128", pythons=("cp311",), size=TORCH)
    app = locked_project(root, "app", server=index_server, ws=ws, deps=["torch>=2.5"], uv=uv_bin, env=uv_environ)
    _publish(lab)
    cfg = lab.config(f"roots = {json.dumps([str(root)])}", 'recheck-interval = "1h"', "[watch]", "debounce = 0.3",
                     "[ahead]", "enable = true", 'interval = "1h"')
    before = tree(app, folder_mtimes=True)

    daemon = DaemonProcess(cfg, uv_environ)
    try:
        # At start the daemon warms what the lock pins, then (the queue idle) looks ahead.
        warm = daemon.expect(f"{app}: warm (uv.lock")
        ready = daemon.expect(f"{app}: upgrade ready: torch 2.9.0+cu128")
        assert daemon.all.index(warm) < daemon.all.index(ready)
        assert tree(app, folder_mtimes=True) == before
        st = lab.status(cfg)["app"]
        assert (st["state"], st["upgrade"]["state"]) == ("warm", "ready"), st
        budget = _doctor_budget(lab, cfg)
        assert "upgrade look-ahead on" in budget and "used by 1 warmed-ahead wheel(s)" in budget

        # The user upgrades; the daemon warms the new lock, which holds nothing uv lacks.
        index_server.reset_counters()
        run_uv(uv_bin, ["lock", "--upgrade-package", "torch"], cwd=app, env=uv_environ)
        daemon.expect(f"{app}: warm (uv.lock")
        run_uv(uv_bin, ["sync"], cwd=app, env=uv_environ)  # a first venv: filelock comes from /simple
        gpu = [h for h in index_server.wheel_hits() if "/whl/" in h.path]
        assert gpu == [], [(h.method, h.path) for h in gpu]
        st = lab.status(cfg)["app"]
        assert [w["version"] for w in st["wheels"] if w["name"] == "torch"] == ["2.9.0+cu128"]
        assert st["upgrade"] is None  # the look-ahead's word was about the lock before
        assert "0 B of 20.0 GiB used by 0 warmed-ahead wheel(s)" in _doctor_budget(lab, cfg)  # adopted
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(timeout=WAIT) == 0
    finally:
        daemon.kill()
    assert not [ln for ln in daemon.all if " ERROR " in ln or " WARNING " in ln], daemon.all


def _doctor_budget(lab: Lab, cfg: Path) -> str:
    findings = json.loads(lab.warmd(cfg, "doctor", "--json").stdout)["findings"]
    return next(f["message"] for f in findings if f["check"] == "ahead" and "budget" in f["message"])
