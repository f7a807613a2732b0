"""sd_notify against real sockets; the unit file checked by systemd-analyze; install-service."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import platformdirs
import pytest

from tests.support.prereqs import need
from warmd.service import ENABLE_COMMAND, XDG_HOMES, Notifier, UnitReview, canonical_unit, default_warmd_exe, install_service, render_unit, review_unit, service_state, systemd_version, user_unit_dir, userns_available, xdg_homes

REPO = Path(__file__).resolve().parents[2]
UV = Path(shutil.which("uv", path=str(Path(sys.executable).parent)) or "uv")
# systemd-analyze is a prerequisite (Debian's systemd): missing, these tests say what to install,
# and fail under CI instead of skipping.
needs_analyze = pytest.mark.usefixtures("systemd_analyze")


@pytest.fixture
def systemd_analyze() -> Path:
    return need("systemd-analyze")


def _listener(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


def test_notifier_path_socket(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with _listener(str(path)) as sock:
        n = Notifier({"NOTIFY_SOCKET": str(path)})
        assert n.enabled
        n.ready()
        n.status("warming 2 projects\nsecond line")
        n.stopping()
        assert sock.recv(4096) == b"READY=1"
        assert sock.recv(4096) == b"STATUS=warming 2 projects second line"
        assert sock.recv(4096) == b"STOPPING=1"
        n.reloading()
        msg = sock.recv(4096).decode()
        assert re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=\d+", msg)
        n.close()


def test_notifier_abstract_socket() -> None:
    name = f"warmd-test-{uuid.uuid4().hex}"
    with _listener("\0" + name) as sock:
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        n.ready()
        n.watchdog()
        assert sock.recv(4096) == b"READY=1"
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_notifier_without_socket_or_listener_never_raises(tmp_path: Path) -> None:
    off = Notifier({})
    assert not off.enabled and off.watchdog_interval() is None
    off.ready()
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert gone.enabled
    gone.ready()  # ENOENT is logged, not raised
    gone.watchdog()


def test_watchdog_interval() -> None:
    sock = "@x"
    assert Notifier({"NOTIFY_SOCKET": sock, "WATCHDOG_USEC": "300000000"}).watchdog_interval() == 150.0
    mine = {"NOTIFY_SOCKET": sock, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier(mine).watchdog_interval() == 1.0
    other = dict(mine, WATCHDOG_PID=str(os.getpid() + 1))
    assert Notifier(other).watchdog_interval() is None
    assert Notifier({"NOTIFY_SOCKET": sock, "WATCHDOG_USEC": "junk"}).watchdog_interval() is None
    assert Notifier({"WATCHDOG_USEC": "2000000"}).watchdog_interval() is None


def _warmd_exe() -> Path:
    exe = default_warmd_exe()
    return exe if exe.exists() else Path(sys.executable)


def _verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(need("systemd-analyze")), "verify", str(unit)], capture_output=True, text=True,
                          timeout=60)


@needs_analyze
@pytest.mark.parametrize("sandbox", [True, False])
def test_rendered_unit_verifies_silently(tmp_path: Path, sandbox: bool) -> None:
    cache = tmp_path / "uv cache"  # a space, to exercise quoting
    cache.mkdir()
    text = render_unit(warmd_exe=_warmd_exe(), uv_exe=UV, uv_cache_dir=cache,
                       config_path=tmp_path / "config.toml", path_env="/usr/bin:/bin",
                       write_paths=[tmp_path / "store"], sandbox=sandbox)
    unit = tmp_path / "warmd.service"
    unit.write_text(text)
    done = _verify(unit)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert ("ProtectHome=read-only" in text) is sandbox
    assert ("PrivateUsers=yes" in text) is sandbox
    assert "Type=notify" in text and "NoNewPrivileges=yes" in text


@needs_analyze
def test_what_private_tmp_would_hide_is_bound_back_in(tmp_path: Path) -> None:
    # A checkout cloned into /tmp runs from there: PrivateTmp= would leave the service an empty /tmp
    # (203/EXEC). The booted test runs that for real when the suite's checkout is under /tmp.
    cache = tmp_path / "cache"
    text = render_unit(warmd_exe=_warmd_exe(), uv_exe=UV, uv_cache_dir=cache, config_path=None,
                       path_env="/usr/bin", read_paths=[Path("/tmp/c/.venv"), Path("/tmp/c/.venv/bin"),
                                                        Path("/var/tmp/c/daemon"), Path("/usr/lib")])
    assert "BindReadOnlyPaths=/tmp/c/.venv /var/tmp/c/daemon" in text.splitlines()
    unit = tmp_path / "warmd.service"
    unit.write_text(text)
    done = _verify(unit)
    assert (done.returncode, done.stderr) == (0, "")
    # Nothing to bind, no such line; and none without the sandbox, which has no private /tmp.
    plain = render_unit(warmd_exe=_warmd_exe(), uv_exe=UV, uv_cache_dir=cache, config_path=None,
                        path_env="/usr/bin", read_paths=[Path("/usr/lib")])
    bare = render_unit(warmd_exe=_warmd_exe(), uv_exe=UV, uv_cache_dir=cache, config_path=None,
                       path_env="/usr/bin", read_paths=[Path("/tmp/c/.venv")], sandbox=False)
    assert "Bind" not in plain and "Bind" not in bare


@needs_analyze
def test_verify_does_catch_a_missing_executable(tmp_path: Path) -> None:
    text = render_unit(warmd_exe=tmp_path / "no-such-warmd", uv_exe=UV, uv_cache_dir=tmp_path,
                       config_path=None, path_env="/usr/bin")
    unit = tmp_path / "warmd.service"
    unit.write_text(text)
    done = _verify(unit)
    assert "no-such-warmd" in done.stdout + done.stderr


@needs_analyze
def test_shipped_unit_is_the_template_and_verifies(tmp_path: Path) -> None:
    shipped = (REPO / "systemd" / "warmd.service").read_text()
    assert shipped == canonical_unit()
    assert "ExecStart=%h/.local/bin/warmd run" in shipped
    # The folders warmd's defaults resolve to, made at start and the only writable ones; no %S.
    dirs = "%C/uv %C/warmd/store %h/.local/state/warmd"
    assert _unit_values(shipped, "ExecStartPre") == [f"+/bin/mkdir -p {dirs}"]
    assert _unit_values(shipped, "ReadWritePaths") == [dirs]
    assert "XDG_STATE_HOME=%h/.local/state" in _unit_values(shipped, "Environment")
    settings = [line for line in shipped.splitlines() if not line.startswith("#")]
    assert not any("%S" in line or line.startswith("StateDirectory=") for line in settings)
    # verify needs the binary to exist: point %h/.local/bin/warmd at a real one.
    unit = tmp_path / "warmd.service"
    unit.write_text(shipped.replace("%h/.local/bin/warmd", str(_warmd_exe())))
    done = _verify(unit)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def _unit_values(text: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(key + "=")]


def test_install_service_writes_unit_with_existing_paths(tmp_path: Path) -> None:
    cache = tmp_path / "cache" / "uv"
    cache.mkdir(parents=True)
    cfg = tmp_path / "config.toml"
    cfg.write_text("")
    unit_dir = tmp_path / "systemd" / "user"
    store, state = tmp_path / "new" / "store", tmp_path / "new" / "state"  # not there yet: the unit makes them
    xdg = xdg_homes({"XDG_STATE_HOME": str(tmp_path / "xdg state")}, home=tmp_path)
    res = install_service(unit_dir, print_only=False, warmd_exe=_warmd_exe(), uv_exe=UV,
                          uv_cache_dir=cache, config_path=cfg, write_paths=[store, state], xdg=xdg)
    assert res.written and res.unit_path == unit_dir / "warmd.service"
    assert res.next_command == ENABLE_COMMAND and "enable --now warmd" in res.next_command
    text = res.unit_path.read_text()
    assert text == res.text
    assert sorted(p.name for p in unit_dir.iterdir()) == ["warmd.service"]  # no temp file left
    exe, *args = _unit_values(text, "ExecStart")[0].split()
    assert Path(exe).is_file() and os.access(exe, os.X_OK)
    assert args == ["--config", str(cfg), "run"]
    path_env = next(v for v in _unit_values(text, "Environment") if v.startswith("PATH="))
    first = path_env.removeprefix("PATH=").split(":")[0]
    assert (Path(first) / "uv").is_file()  # the shell's uv comes first on the service's PATH
    assert f"UV_CACHE_DIR={cache}" in _unit_values(text, "Environment")
    assert _unit_values(text, "ReadWritePaths") == [f"{cache} {store} {state}"]
    assert _unit_values(text, "ExecStartPre") == [f"+{shutil.which('mkdir')} -p {cache} {store} {state}"]
    assert f'"XDG_STATE_HOME={tmp_path}/xdg state"' in _unit_values(text, "Environment")
    assert f"XDG_CACHE_HOME={tmp_path}/.cache" in _unit_values(text, "Environment")
    assert review_unit(text, writes=[cache, store, state], xdg=xdg, home=tmp_path, systemd_version=252).missing == ()


def test_install_service_print_writes_nothing(tmp_path: Path) -> None:
    unit_dir = tmp_path / "systemd" / "user"
    res = install_service(unit_dir, print_only=True, warmd_exe=_warmd_exe(), uv_exe=UV,
                          uv_cache_dir=tmp_path / "c")
    assert not res.written
    assert "ExecStart=" in res.text
    assert not unit_dir.exists()


def test_user_unit_dir_honours_xdg_config_home(tmp_path: Path) -> None:
    assert user_unit_dir({"XDG_CONFIG_HOME": str(tmp_path)}) == tmp_path / "systemd" / "user"
    assert user_unit_dir({}) == Path.home() / ".config" / "systemd" / "user"


def test_service_state_without_user_bus(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path), "XDG_RUNTIME_DIR": str(tmp_path / "run")}
    state = service_state(env)
    assert state.active == "unknown"
    (tmp_path / "systemd" / "user").mkdir(parents=True)
    (tmp_path / "systemd" / "user" / "warmd.service").write_text(canonical_unit())
    state = service_state(env)
    assert state.installed is True and state.unit_path == tmp_path / "systemd/user/warmd.service"


def test_service_state_reads_systemctl_show(tmp_path: Path) -> None:
    need("systemctl")
    asked: list[list[str]] = []

    def systemctl(argv: list[str]) -> str:
        asked.append(argv)
        return "LoadState=loaded\nActiveState=failed\nFragmentPath=/etc/systemd/user/warmd.service\n"

    state = service_state({"DBUS_SESSION_BUS_ADDRESS": "unix:path=/x", "XDG_CONFIG_HOME": str(tmp_path)},
                          run=systemctl)
    assert (state.installed, state.active) == (True, "failed")
    assert state.unit_path == Path("/etc/systemd/user/warmd.service")
    assert asked[0][:2] == ["systemctl", "--user"]


def test_userns_available(tmp_path: Path) -> None:
    assert userns_available(tmp_path)
    knob = tmp_path / "proc/sys/kernel/unprivileged_userns_clone"
    knob.parent.mkdir(parents=True)
    knob.write_text("0\n")
    assert not userns_available(tmp_path)


# -- reading a unit back (what `warmd doctor` checks) ------------------------------------------------

OLD_UNIT = REPO / "tests" / "fixtures" / "units" / "warmd-d5ad866.service"  # systemd/warmd.service at d5ad866


def _fresh(home: Path) -> tuple[dict[str, Path], list[Path]]:
    """A new account's XDG folders and what warmd writes there by default (nothing of it exists yet)."""
    xdg = xdg_homes({}, home=home)
    return xdg, [xdg["XDG_CACHE_HOME"] / "uv", xdg["XDG_CACHE_HOME"] / "warmd" / "store",
                 xdg["XDG_STATE_HOME"] / "warmd"]


@pytest.mark.parametrize("version", [252, 254, None])
def test_the_units_warmd_writes_start_on_a_fresh_account_on_any_systemd(tmp_path: Path, version: int | None) -> None:
    xdg, writes = _fresh(tmp_path)
    assert review_unit(canonical_unit(), writes=writes, xdg=xdg, home=tmp_path, systemd_version=version) == UnitReview()
    for sandbox in (True, False):
        text = render_unit(warmd_exe=_warmd_exe(), uv_exe=UV, uv_cache_dir=writes[0], config_path=None,
                           path_env="/usr/bin", write_paths=writes[1:], xdg=xdg, sandbox=sandbox)
        got = review_unit(text, writes=writes, xdg=xdg, home=tmp_path, systemd_version=version)
        assert (got.missing, got.unwritable, got.outdated, got.sandboxed) == ((), (), (), sandbox)


def test_the_shipped_unit_of_d5ad866_leaves_the_state_read_only(tmp_path: Path) -> None:
    xdg, writes = _fresh(tmp_path)
    got = review_unit(OLD_UNIT.read_text(), writes=writes, xdg=xdg, home=tmp_path, systemd_version=252)
    # StateDirectory= made ~/.config/warmd writable on 252, not ~/.local/state/warmd.
    assert got.unwritable == (tmp_path / ".local/state/warmd",) and got.missing == ()
    assert any("StateDirectory=" in o for o in got.outdated)
    assert any("does not set XDG_CONFIG_HOME, XDG_CACHE_HOME, XDG_STATE_HOME" in o for o in got.outdated)
    # From systemd 254, %S is $XDG_STATE_HOME: the same unit then lets warmd write its state.
    assert review_unit(OLD_UNIT.read_text(), writes=writes, xdg=xdg, home=tmp_path,
                       systemd_version=254).unwritable == ()


def test_a_read_write_path_nothing_makes_is_missing_until_it_exists(tmp_path: Path) -> None:
    # What d5ad866's install-service wrote: store and state in ReadWritePaths=, only the uv cache made.
    xdg, writes = _fresh(tmp_path)
    text = OLD_UNIT.read_text().replace("ReadWritePaths=%C/uv", "ReadWritePaths=%C/uv %C/warmd/store "
                                        "%h/.local/state/warmd")
    got = review_unit(text, writes=writes, xdg=xdg, home=tmp_path, systemd_version=252)
    assert got.missing == (writes[1], writes[2]) and got.unwritable == ()
    writes[1].mkdir(parents=True)  # made by hand, as a user would after the first failed start
    assert review_unit(text, writes=writes, xdg=xdg, home=tmp_path, systemd_version=252).missing == (writes[2],)
    optional = text.replace(" %h/.local/state/warmd", " -%h/.local/state/warmd")  # `-`: may be missing
    assert review_unit(optional, writes=writes, xdg=xdg, home=tmp_path, systemd_version=252).missing == ()


def test_a_unit_for_other_xdg_folders_is_flagged_and_unknown_specifiers_are_left_alone(tmp_path: Path) -> None:
    xdg, writes = _fresh(tmp_path)
    text = render_unit(warmd_exe=_warmd_exe(), uv_exe=UV, uv_cache_dir=writes[0], config_path=None,
                       path_env="/usr/bin", write_paths=writes[1:], xdg=xdg)
    moved = xdg_homes({"XDG_STATE_HOME": str(tmp_path / "elsewhere")}, home=tmp_path)
    got = review_unit(text, writes=[*writes[:2], moved["XDG_STATE_HOME"] / "warmd"], xdg=moved, home=tmp_path)
    assert got.unwritable == (moved["XDG_STATE_HOME"] / "warmd",)
    assert any(f"XDG_STATE_HOME={tmp_path}/.local/state, this shell has {tmp_path}/elsewhere" in o
               for o in got.outdated)
    # %S without knowing systemd's version, %U: cannot be judged here, so not reported.
    odd = "[Service]\nReadWritePaths=%S/warmd %U/x\nExecStartPre=+/bin/mkdir -p %C/uv\n"
    assert review_unit(odd, writes=[], xdg=xdg, home=tmp_path).missing == ()


def test_xdg_homes_and_systemd_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert xdg_homes({"XDG_CACHE_HOME": "/c", "XDG_STATE_HOME": " "}, home=tmp_path) == {
        "XDG_CONFIG_HOME": tmp_path / ".config", "XDG_CACHE_HOME": Path("/c"),
        "XDG_STATE_HOME": tmp_path / ".local/state"}
    # The answers of platformdirs, which places warmd's own folders (config.py), for this process's environment.
    monkeypatch.setenv("HOME", str(tmp_path))
    for env in ({}, {"XDG_CACHE_HOME": "/c", "XDG_STATE_HOME": " ", "XDG_CONFIG_HOME": str(tmp_path / "cfg")}):
        for key in XDG_HOMES:
            monkeypatch.delenv(key, raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        assert xdg_homes(os.environ) == {
            "XDG_CONFIG_HOME": Path(platformdirs.user_config_dir()), "XDG_CACHE_HOME": Path(platformdirs.user_cache_dir()),
            "XDG_STATE_HOME": Path(platformdirs.user_state_dir())}, env
    assert systemd_version(lambda argv: "systemd 252 (252.39-1~deb12u2)\n+PAM +AUDIT\n") == 252
    assert systemd_version(lambda argv: None) is None
