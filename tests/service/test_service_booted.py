"""The warmd user service under a real systemd: this machine's own, booted in a container
(tests/support/booted.py), and a fresh account for every test, as a new user meets warmd.

Each behaviour is checked for the three ways a unit gets there: the README's `warmd install-service`,
`install-service --no-sandbox` (kernels without unprivileged user namespaces), and the
`systemd/warmd.service` shipped in the source, copied in. warmd and uv are the checkout's own
(its venv, linked into ~/.local/bin); the index is the tests' own on 127.0.0.1, which the
container reaches because it shares the test run's network namespace.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.booted import Container, User, wait_for
from tests.support.index_server import IndexServer
from tests.support.prereqs import need
from tests.support.projects import locked_project, pinned_project, torch_like_set
from warmd.cli import TROUBLESHOOTING

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
README_COMMANDS = "warmd install-service && systemctl --user daemon-reload && systemctl --user enable --now warmd"
# How each kind of unit gets into the user's unit folder, in place of README's `warmd install-service`.
UNITS = {
    "install-service": "warmd install-service",
    "no-sandbox": "warmd install-service --no-sandbox",
    "shipped": f"mkdir -p ~/.config/systemd/user && cp {REPO}/systemd/warmd.service ~/.config/systemd/user/",
}
# A checkout in /tmp (a clone made with mktemp): the shipped unit's PrivateTmp= hides the code its
# ~/.local/bin links point to, so the drop-in a user with such an install would add binds it back
# (`warmd install-service` writes that line itself).
CHECKOUT_DROPIN = ("mkdir -p ~/.config/systemd/user/warmd.service.d && printf '[Service]\\n"
                   f"BindReadOnlyPaths={REPO}\\n' > ~/.config/systemd/user/warmd.service.d/checkout.conf"
                   if REPO.is_relative_to("/tmp") or REPO.is_relative_to("/var/tmp") else "true")
UNITS["shipped"] += f" && {CHECKOUT_DROPIN}"
SANDBOXED = {"install-service": True, "no-sandbox": False, "shipped": True}
# The user's config: one root, the variant of the test index, every package of a lock warmed (so
# that `uv sync` afterwards needs nothing from the index at all).
CONFIG = 'roots = ["~/src"]\nvariant = "cpu"\npackages = ["*"]\n\n[watch]\ndebounce = 0.3\n'


def vouching(server: IndexServer) -> str:
    """The config line by which the user vouches for the lab index, a private one on 127.0.0.1."""
    return f"trusted-indexes = [{json.dumps(server.url + '/')}]\n"


OLD_UNIT = REPO / "tests" / "fixtures" / "units" / "warmd-d5ad866.service"  # systemd/warmd.service at d5ad866


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    """One booted container for the module: tests share it, each with an account of its own."""
    need("systemd-nspawn")
    log = tmp_path_factory.mktemp("booted") / "console.log"
    # What the users run: the venv's scripts, the interpreter they point at, and the checkout
    # (warmd is installed editable; the shipped unit is copied from it).
    reach = [VENV_BIN, Path(os.path.realpath(sys.executable)), Path(sys.base_prefix), REPO]
    with Container(log, reach=reach) as container:
        yield container


@pytest.fixture
def user(box: Container) -> Iterator[User]:
    """A fresh account: its own user manager, warmd and uv in ~/.local/bin, a config with one empty root."""
    u = box.new_user()
    done = u.sh(f"mkdir -p ~/.local/bin ~/src && ln -s {VENV_BIN}/warmd {VENV_BIN}/uv ~/.local/bin/")
    assert done.returncode == 0, done.stderr
    u.write(".config/warmd/config.toml", CONFIG)
    try:
        yield u
    finally:
        print(u.describe())  # shown when the test failed
        box.drop_user(u)


def start(user: User, unit: str) -> None:
    """Put the unit in place and start it with README's commands; it must come up."""
    done = user.sh(README_COMMANDS.replace("warmd install-service", UNITS[unit], 1))
    assert done.returncode == 0, f"{done.stdout}{done.stderr}\n{user.describe()}"
    assert user.show("ActiveState", "SubState") == {"ActiveState": "active", "SubState": "running"}


def status_text(user: User, text: str) -> str:
    """Wait until systemd shows warmd's STATUS= as `text`."""
    return wait_for(lambda: user.show("StatusText")["StatusText"] == text and text,
                    f"STATUS={text}", describe=user.describe)


def in_journal(user: User, text: str) -> str:
    """Wait until `journalctl --user -u warmd` holds `text`; the log."""
    def seen() -> str:
        log = user.journal()
        return log if text in log else ""

    return wait_for(seen, repr(text), describe=user.describe)


def doctor(user: User) -> dict[str, dict]:
    """The shell's `warmd doctor --json`: its service findings by check."""
    done = user.run(["warmd", "doctor", "--json"])
    assert done.stdout, done.stderr
    return {f["check"]: f for f in json.loads(done.stdout)["findings"] if f["check"].startswith("service")}


def main_pid(user: User) -> int:
    pid = int(user.show("MainPID")["MainPID"])
    assert pid > 0
    return pid


def copy_project(user: User, project: Path, dest: str, names: tuple[str, ...]) -> None:
    """Copy a project made on this side into the user's home (uv.lock last, renamed into place as uv does)."""
    for name in names:
        user.write(f"{dest}/{name}", (project / name).read_text())


@pytest.mark.parametrize("unit", UNITS)
def test_the_readme_commands_start_a_service_systemd_sees_ready_with_its_status(user: User, unit: str) -> None:
    assert README_COMMANDS in (REPO / "README.md").read_text()
    start(user, unit)
    # Type=notify: `enable --now` returned after warmd's READY=1; then its STATUS= reaches systemd.
    status_text(user, "idle, 0 projects warm")
    status = user.systemctl("status", "warmd", "--no-pager").stdout
    assert "active (running)" in status and 'Status: "idle, 0 projects warm"' in status, status
    log = user.journal()
    assert "Started warmd.service" in log and "watching 1 root(s): 0 project(s)" in log, log
    assert "Failed" not in log
    found = doctor(user)
    assert found["service"]["status"] == "ok", found
    assert found["service-unit"]["status"] == "ok", found


@pytest.mark.parametrize("unit", UNITS)
def test_a_lock_appearing_under_a_root_is_warmed_and_uv_sync_then_fetches_no_wheel(
    user: User, unit: str, index_server: IndexServer, wheel_dir: Path, tmp_path: Path,
) -> None:
    ws = torch_like_set(index_server, wheel_dir, "cpu", size=64 * 1024, pythons=("cp311",))
    project = pinned_project(tmp_path, "app", server=index_server, ws=ws)
    user.write(".config/warmd/config.toml", vouching(index_server) + CONFIG)
    start(user, unit)
    copy_project(user, project, "src/app", ("pyproject.toml", ".python-version"))
    # The user locks; with a throw-away uv cache, so that only the service can fill ~/.cache/uv.
    done = user.sh("cd src/app && UV_CACHE_DIR=$(mktemp -d) UV_PYTHON_DOWNLOADS=never uv lock")
    assert done.returncode == 0, done.stderr
    status_text(user, "idle, 1 project warm")
    # The shell's `warmd status` reads the database the service wrote.
    done = user.run(["warmd", "status", "--json"])
    assert done.returncode == 0, done.stderr
    [app] = json.loads(done.stdout)
    assert app["path"] == f"{user.home}/src/app" and app["error"] is None, app
    assert {w["name"]: w["state"] for w in app["wheels"]} == {"torch": "warm", "filelock": "warm"}, app
    # Then `uv sync` as the user: everything comes from the cache the service's uv filled.
    index_server.reset_counters()
    done = user.sh("cd src/app && UV_PYTHON_DOWNLOADS=never uv sync --frozen")
    assert done.returncode == 0, done.stderr
    assert index_server.wheel_gets() == []
    assert user.sh("src/app/.venv/bin/python -c 'import torch, filelock'").returncode == 0


@pytest.mark.parametrize("unit", UNITS)
def test_reload_rereads_the_config_and_keeps_the_running_one_when_the_new_one_is_broken(user: User, unit: str) -> None:
    start(user, unit)
    pid = main_pid(user)
    user.sh("mkdir -p ~/more")
    user.write(".config/warmd/config.toml", CONFIG.replace('["~/src"]', '["~/src", "~/more"]'))
    assert user.systemctl("reload", "warmd").returncode == 0
    in_journal(user, f"now watching {user.home}/src, {user.home}/more: 0 project(s)")
    user.write(".config/warmd/config.toml", "roots = [\n")
    assert user.systemctl("reload", "warmd").returncode == 0
    in_journal(user, "reload failed, keeping the running config")
    assert main_pid(user) == pid and user.show("ActiveState")["ActiveState"] == "active"
    # The config kept is the one that watches ~/more: a project appearing there is taken up.
    user.write("more/app/pyproject.toml", "[project]\nname = 'app'\nversion = '0'\n")
    user.write("more/app/uv.lock", "this is [not toml")
    in_journal(user, f"{user.home}/more/app: failed")
    assert main_pid(user) == pid


@pytest.mark.parametrize("unit", UNITS)
def test_a_hung_main_loop_is_restarted_by_the_watchdog(user: User, unit: str) -> None:
    # A short watchdog, and a short pause before the restart (the unit's 30 s are for a crash loop).
    user.write(".config/systemd/user/warmd.service.d/watchdog.conf", "[Service]\nWatchdogSec=3s\nRestartSec=1s\n")
    start(user, unit)
    assert user.show("WatchdogUSec")["WatchdogUSec"] == "3s"
    status_text(user, "idle, 0 projects warm")
    # Read just before the stop, not assumed: on a loaded box a 3 s watchdog may have fired already.
    before = user.show("MainPID", "NRestarts")
    assert before["MainPID"] not in ("", "0"), before
    assert user.systemctl("kill", "--kill-who=main", "--signal=SIGSTOP", "warmd").returncode == 0

    def restarted() -> bool:
        now = user.show("MainPID", "NRestarts", "SubState")
        return (int(now["NRestarts"]) > int(before["NRestarts"]) and now["SubState"] == "running"
                and now["MainPID"] not in ("0", before["MainPID"]))

    wait_for(restarted, "the watchdog's restart", describe=user.describe)
    log = user.journal()
    assert "Watchdog timeout (limit 3s)" in log and "Failed with result 'watchdog'" in log, log
    status_text(user, "idle, 0 projects warm")


@pytest.mark.parametrize("unit", UNITS)
def test_stop_mid_download_exits_cleanly_and_leaves_no_process(
    user: User, unit: str, wheel_dir: Path, tmp_path: Path, uv_bin: Path, uv_environ: dict[str, str],
) -> None:
    with IndexServer(rate_limit=128 * 1024, vouched=True) as server:  # 4 MiB at 128 KiB/s: half a minute to stop in
        ws = torch_like_set(server, wheel_dir, "cpu", size=4 * 2**20, pythons=("cp311",))
        project = locked_project(tmp_path, "app", server=server, ws=ws, uv=uv_bin, env=uv_environ)
        user.write(".config/warmd/config.toml", vouching(server) + CONFIG + "\n[download]\nconnections = 1\n")
        start(user, unit)
        server.reset_counters()
        copy_project(user, project, "src/app", ("pyproject.toml", ".python-version", "uv.lock"))
        pid = main_pid(user)

        def uv_child() -> str:  # the uv that takes the wheel from warmd while it still downloads
            out = user.box.run(["ps", "-o", "args=", "--ppid", str(pid)]).stdout
            return next((line for line in out.splitlines() if " pip install " in line), "")

        wait_for(uv_child, "warmd's uv child, importing while the download runs", describe=user.describe)
        assert server.peak_transfers >= 1
        status_text(user, "warming 1 project")  # sent at warmd's next tick
        done = user.systemctl("stop", "warmd")
        assert done.returncode == 0, done.stderr
    props = user.show("ActiveState", "Result", "ExecMainCode", "ExecMainStatus")
    # warmd exited 0 on SIGTERM (ExecMainCode 1: exited, not killed).
    assert props == {"ActiveState": "inactive", "Result": "success", "ExecMainCode": "1", "ExecMainStatus": "0"}
    log = user.journal()
    assert "SIGTERM: stopping: cancelling downloads" in log, log
    # warmd ended its children itself: systemd had no process left over to kill (KillMode=mixed).
    assert "Killing process" not in log and "left-over" not in log, log
    left = [p for p in user.processes() if "systemd --user" not in p and "(sd-pam)" not in p]
    assert left == []
    # and its scratch folders (the uv child's among them) are gone
    assert "warmd-" not in user.box.run(["ls", "-a", "/dev/shm", "/tmp"]).stdout


@pytest.mark.parametrize("unit", UNITS)
def test_the_sandbox_holds_and_lets_warmd_write_its_folders(user: User, unit: str) -> None:
    start(user, unit)
    pid = main_pid(user)
    status = user.box.run(["cat", f"/proc/{pid}/status"]).stdout
    assert "\nNoNewPrivs:\t1\n" in status and "\nSeccomp:\t2\n" in status, status  # in every unit

    def write(path: str) -> str:
        done = user.as_service_sees_it(pid, ["sh", "-c", 'echo x > "$1" && rm "$1" && echo written', "sh", path])
        return done.stdout.strip() or done.stderr.strip()

    home = user.home
    for folder in (f"{home}/.cache/uv", f"{home}/.cache/warmd/store", f"{home}/.local/state/warmd"):
        assert write(f"{folder}/probe") == "written", folder
    outside = write(f"{home}/probe")
    if SANDBOXED[unit]:
        assert "Read-only file system" in outside
        assert "Read-only file system" in write(f"{home}/.config/warmd/probe")  # its own config too
    else:
        assert outside == "written"


@pytest.mark.parametrize("old, mend, why", [
    pytest.param(
        # What `warmd install-service` wrote at d5ad866: the store and the state in ReadWritePaths=,
        # made by nothing on a new account.
        lambda t: t.replace("ReadWritePaths=%C/uv", "ReadWritePaths=%C/uv %C/warmd/store %h/.local/state/warmd"),
        "warmd install-service", "status=226/NAMESPACE", id="install-service-d5ad866"),
    pytest.param(lambda t: t, UNITS["shipped"], "status=1/FAILURE", id="shipped-d5ad866"),
])
def test_a_unit_from_an_older_warmd_fails_to_start_doctor_says_why_and_installing_again_mends_it(
    user: User, old, mend: str, why: str,  # noqa: ANN001
) -> None:
    user.write(".config/systemd/user/warmd.service", old(OLD_UNIT.read_text()))
    done = user.sh(f"{CHECKOUT_DROPIN} && systemctl --user daemon-reload && systemctl --user enable --now warmd")
    assert done.returncode != 0  # a test of the harness too: it does see a unit that cannot start
    log = in_journal(user, why)
    if "226" in why:
        assert f"{user.home}/.cache/warmd/store: No such file or directory" in log, log
    found = doctor(user)["service-unit"]
    assert found["status"] == "problem" and found["fix"].startswith(TROUBLESHOOTING["service-unit"].do), found
    if "226" in why:
        assert f"{user.home}/.cache/warmd/store" in found["message"] and "226/NAMESPACE" in found["message"]
    else:
        assert f"warmd's state {user.home}/.local/state/warmd" in found["message"], found
    assert "written by an older warmd" in found["message"]
    done = user.sh(f"{mend} && systemctl --user daemon-reload && systemctl --user restart warmd")
    assert done.returncode == 0, done.stderr
    assert user.show("ActiveState", "SubState") == {"ActiveState": "active", "SubState": "running"}
    assert doctor(user)["service-unit"]["status"] == "ok"


def test_the_harness_boots_on_the_runs_network_and_leaves_nothing_behind(tmp_path: Path) -> None:
    need("systemd-nspawn")
    from tests.support.network import interfaces

    box = Container(tmp_path / "console.log", reach=[VENV_BIN])
    with pytest.raises(RuntimeError, match="a failing test"):
        with box:
            held = box.namespaces()
            assert box.state in ("running", "degraded")
            # The container shares the test run's network namespace: the same interfaces (lo only when locked).
            seen = box.run(["cat", "/proc/net/dev"]).stdout
            assert sorted(line.split(":")[0].strip() for line in seen.splitlines()[2:]) == sorted(interfaces())
            raise RuntimeError("a failing test")
    assert Container.still_in(held) == []  # nspawn's namespace, with the overlay and the tmpfs, is gone
    assert box.dir is not None and not box.dir.exists()
