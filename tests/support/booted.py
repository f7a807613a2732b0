"""A real systemd for the tests: this machine's root booted under systemd-nspawn, fresh users in it.

The container's root is an overlay: this machine's `/` read-only below, a tmpfs above, with `/dev`
emptied (nspawn makes its own) and the services this host's admin enabled masked (the container
shares the test run's network, so an nginx or a PostgreSQL starting there would take the host's
ports). The tmpfs and the overlay are mounted in a mount namespace of their own (`unshare
--mount`) that only systemd-nspawn and the container use: when nspawn ends, whatever the test did,
both are gone; nothing is ever mounted where the test run or the host would see it. stop() powers
the container off and waits for it; a test run killed outright takes it down too (nspawn's parent
death signal is SIGTERM, which it turns into a halt of the container).

The container shares the test run's network namespace (the suite's loopback-only one), so an
IndexServer on 127.0.0.1 answers in there and nothing beyond loopback does. It sees this machine's
files through the overlay, so the checkout's own venv (warmd and the pinned uv) runs in there as
it is, once the users may reach it: `o+x` on the folders above it, changed in the overlay only.

Commands run inside through `nsenter` into the container's PID 1; a user's as that user (runuser)
with what a login session gives: XDG_RUNTIME_DIR and the user bus of the user's own manager.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

T = TypeVar("T")

WAIT = 120.0  # upper bound of any wait that ends on a condition: a loaded CI box must not fail it
TOOLS = ("systemd-nspawn", "nsenter", "unshare", "runuser", "setpriv", "ps")
# A user's manager gets its bus from dbus-user-session (dbus.socket as a user unit).
USER_BUS_UNITS = (Path("/usr/lib/systemd/user/dbus.socket"), Path("/lib/systemd/user/dbus.socket"))
ROOT_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
# The run's loopback guard for non-Python children (a tripwire proxy on 127.0.0.1, see
# tests/support/network.py): the users' commands in the container carry it too.
_GUARD_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy",
              "NO_PROXY", "no_proxy")
_UNIT_KINDS = (".service", ".socket", ".timer", ".path")
# systemd-nspawn mounts a fresh tmpfs here in the container: the host's files under it are hidden.
_HIDDEN_BY_NSPAWN = (Path("/tmp"),)

# Runs as root in a mount namespace of its own: $1 the (empty) folder to build the root in, $2 a
# Python for the one xattr; the rest goes to systemd-nspawn.
_BOOT = r"""
set -eu
dir=$1; py=$2; shift 2
mount -t tmpfs -o mode=0755 warmd-booted "$dir"
mkdir -p "$dir/upper/dev" "$dir/upper/etc/systemd/system" "$dir/work" "$dir/root"
# An opaque /dev: nothing of the host's /dev folder shows through; nspawn mounts its own.
"$py" -I -c 'import os, sys; os.setxattr(sys.argv[1], "trusted.overlay.opaque", b"y")' "$dir/upper/dev"
for unit in $WARMD_BOOT_MASK; do ln -s /dev/null "$dir/upper/etc/systemd/system/$unit"; done
mount -t overlay warmd-booted -o "lowerdir=/,upperdir=$dir/upper,workdir=$dir/work" "$dir/root"
exec systemd-nspawn --quiet --directory="$dir/root" --boot --keep-unit --register=no --link-journal=no \
    --console=read-only "$@"
"""


def wait_for(cond: Callable[[], T], what: str, timeout: float = WAIT,
             describe: Callable[[], str] | None = None) -> T:
    """Check `cond` until it answers something true and return that; after `timeout` s fail naming `what`."""
    deadline = time.monotonic() + timeout
    pause = 0.05
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}"
                                 + (f"\n{describe()}" if describe else ""))
        time.sleep(pause)  # between checks of the condition, not instead of one
        pause = min(pause * 1.5, 0.5)


def host_services(etc: Path = Path("/etc/systemd/system")) -> list[str]:
    """The units this host's admin enabled (`*.wants/` under /etc): its own services, masked in the container."""
    return sorted({p.name for p in etc.glob("*.wants/*") if p.name.endswith(_UNIT_KINDS)})


def usable() -> str | None:
    """Why a container cannot be booted here, or None."""
    if os.geteuid() != 0:
        return "needs root (mounts, nspawn)"
    missing = [t for t in TOOLS if not _which(t)]
    if not any(p.exists() for p in USER_BUS_UNITS):
        missing.append("a user bus (dbus-user-session)")
    return f"missing {', '.join(missing)}" if missing else None


def _which(tool: str) -> str | None:
    return shutil.which(tool, path=ROOT_ENV["PATH"])


def _check(done: subprocess.CompletedProcess[str], what: str) -> subprocess.CompletedProcess[str]:
    if done.returncode != 0:
        raise AssertionError(f"{what} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    return done


class Container:
    """This machine's root booted under systemd-nspawn on a throw-away overlay; `with` boots and powers off."""

    def __init__(self, console_log: Path, *, reach: Sequence[Path] = ()) -> None:
        """`reach`: files and folders the container's users must be able to run or read (a venv)."""
        self.console_log = console_log
        self.reach = [Path(p) for p in reach]
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader = 0  # the container's PID 1, as this machine numbers it
        self.state = ""  # what `systemctl is-system-running` said once booted
        self._log: IO[bytes] | None = None
        self._serial = itertools.count(1)

    def __enter__(self) -> Container:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> Container:
        """Boot the container and wait until its systemd has finished starting up."""
        self.dir = Path(tempfile.mkdtemp(prefix="warmd-booted-"))
        try:
            self._log = open(self.console_log, "wb")  # noqa: SIM115  (closed in stop())
            binds = [f"--bind-ro={p}" for p in self._elsewhere()]
            self.proc = subprocess.Popen(
                # --pdeathsig: nspawn (exec'd in its place) gets SIGTERM, a clean halt, if the test run dies.
                ["setpriv", "--pdeathsig", "SIGTERM", "unshare", "--mount", "--propagation", "private",
                 "sh", "-c", _BOOT, "sh", str(self.dir), sys.executable, *binds],
                stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                env=ROOT_ENV | {"WARMD_BOOT_MASK": " ".join(host_services())})
            self.leader = wait_for(self._find_leader, "the container's systemd to start", describe=self.console)
            self.state = wait_for(self._booted, "the container to finish booting", describe=self.console)
            # nspawn's stand-in for /proc/kmsg makes ProtectKernelLogs= fail; a real host has none.
            if self.run(["findmnt", "--noheadings", "/proc/kmsg"]).returncode == 0:
                _check(self.run(["umount", "/proc/kmsg"]), "umount /proc/kmsg")
            closed = self._closed_folders()
            if closed:
                _check(self.run(["chmod", "o+x", *map(str, closed)]), "chmod o+x")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Power the container off and wait for nspawn to end (its mounts go with it)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # nspawn halts the container's systemd, then exits
            try:
                proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                if self.leader:
                    os.kill(self.leader, signal.SIGKILL)  # the PID namespace ends with its init
                proc.kill()
                proc.wait(WAIT)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.dir is not None:
            try:
                self.dir.rmdir()  # only the empty mount point is left on this side
            except OSError:
                pass

    def namespaces(self) -> set[str]:
        """The mount namespaces of nspawn (the private one holding the overlay) and of the container."""
        assert self.proc is not None
        return {os.readlink(f"/proc/{pid}/ns/mnt") for pid in (self.proc.pid, self.leader)}

    @staticmethod
    def still_in(namespaces: set[str]) -> list[int]:
        """PIDs of processes still in any of `namespaces` (a mount namespace lives as long as they do)."""
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if os.readlink(entry / "ns" / "mnt") in namespaces:
                        found.append(int(entry.name))
                except OSError:
                    continue
        return found

    def console(self) -> str:
        """The container's console so far (the end of it), for failure messages."""
        try:
            return "container console:\n" + self.console_log.read_text(errors="replace")[-4000:]
        except OSError:
            return "(no console log)"

    # -- inside -----------------------------------------------------------------------------------

    def run(self, argv: Sequence[str], *, env: dict[str, str] | None = None, input: str | None = None,
            timeout: float = WAIT) -> subprocess.CompletedProcess[str]:
        """Run argv as root in the container (all its namespaces, its root folder)."""
        assert self.leader, "the container is not running"
        return subprocess.run(["nsenter", "-t", str(self.leader), "-a", *argv], env=env or ROOT_ENV, input=input,
                              capture_output=True, text=True, timeout=timeout)

    def new_user(self) -> User:
        """A fresh account with its own lingering systemd user manager, up and listening on its bus."""
        name = f"user{next(self._serial)}"
        _check(self.run(["useradd", "--create-home", "--shell", "/bin/bash", name]), f"useradd {name}")
        pw = _check(self.run(["getent", "passwd", name]), "getent").stdout.strip().split(":")
        user = User(self, name, int(pw[2]), int(pw[3]), pw[5])
        _check(self.run(["loginctl", "enable-linger", name]), "loginctl enable-linger")
        # Type=notify: `start` returns once the user's manager is up (logind may have begun it already).
        _check(self.run(["systemctl", "start", f"user@{user.uid}.service"]), f"start user@{user.uid}")
        wait_for(lambda: self.run(["test", "-S", f"{user.runtime_dir}/bus"]).returncode == 0,
                 f"{name}'s user bus")
        return user

    def drop_user(self, user: User) -> None:
        """Stop the user's manager and everything it runs (the account stays, unused)."""
        self.run(["loginctl", "disable-linger", user.name])
        self.run(["systemctl", "stop", f"user@{user.uid}.service"])

    # -- helpers ----------------------------------------------------------------------------------

    def _find_leader(self) -> int | None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"systemd-nspawn exited ({self.proc.returncode})\n{self.console()}")
        for entry in Path("/proc").iterdir():  # nspawn's child that has become systemd
            try:
                if (entry.name.isdigit() and (entry / "comm").read_text().strip() == "systemd"
                        and f"\nPPid:\t{self.proc.pid}\n" in (entry / "status").read_text()):
                    return int(entry.name)
            except OSError:
                continue
        return None

    def _booted(self) -> str | None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"systemd-nspawn exited ({self.proc.returncode})\n{self.console()}")
        # --wait blocks while the system is starting; before systemd listens it answers at once.
        state = self.run(["systemctl", "is-system-running", "--wait"]).stdout.strip()
        return state if state in ("running", "degraded") else None

    def _elsewhere(self) -> list[Path]:
        """`reach` paths the container would not see, to bind in: on another filesystem than `/` (the
        overlay's lower layer does not hold them), or under a folder nspawn mounts its own tmpfs on (a
        checkout cloned into /tmp)."""
        root = os.stat("/").st_dev
        out = [p for p in self.reach
               if os.stat(p).st_dev != root or any(p.is_relative_to(h) for h in _HIDDEN_BY_NSPAWN)]
        # A path inside another bound one comes with it.
        return [p for p in out if not any(p != q and p.is_relative_to(q) for q in out)]

    def _closed_folders(self) -> list[Path]:
        """Folders above (and at) the `reach` paths that others may not enter."""
        out: dict[Path, None] = {}
        for p in self.reach:
            for folder in [*reversed(p.parents), p]:
                if folder.is_dir() and not os.stat(folder).st_mode & 0o001:
                    out[folder] = None
        return list(out)


@dataclass(frozen=True)
class User:
    """An account in the container, and its commands, run as it with its login session's environment."""

    box: Container
    name: str
    uid: int
    gid: int
    home: str

    @property
    def runtime_dir(self) -> str:
        """Its XDG_RUNTIME_DIR, which logind made for the lingering user."""
        return f"/run/user/{self.uid}"

    def environ(self) -> dict[str, str]:
        """What its login shell has: home, the user bus, ~/.local/bin first on PATH (and the run's guard)."""
        env = {"HOME": self.home, "USER": self.name, "LOGNAME": self.name, "SHELL": "/bin/bash", "LANG": "C.UTF-8",
               "PATH": f"{self.home}/.local/bin:/usr/local/bin:/usr/bin:/bin",
               "XDG_RUNTIME_DIR": self.runtime_dir, "DBUS_SESSION_BUS_ADDRESS": f"unix:path={self.runtime_dir}/bus"}
        return env | {k: os.environ[k] for k in _GUARD_ENV if k in os.environ}

    def run(self, argv: Sequence[str], *, input: str | None = None,
            timeout: float = WAIT) -> subprocess.CompletedProcess[str]:
        """Run argv as this user, in its home folder."""
        env = [f"{k}={v}" for k, v in self.environ().items()]
        return self.box.run(["runuser", "-u", self.name, "--", "env", "-i", *env, "sh", "-c", 'cd && exec "$@"', "sh",
                             *argv], input=input, timeout=timeout)

    def sh(self, script: str, *, timeout: float = WAIT) -> subprocess.CompletedProcess[str]:
        """Run a bash command line as this user, in its home folder."""
        return self.run(["bash", "-c", script], timeout=timeout)

    def write(self, rel: str, text: str) -> None:
        """Write a file under the home folder as this user: a temporary file renamed into place."""
        _check(self.run(["sh", "-c", 'mkdir -p "$(dirname "$1")" && cat > "$1.tmp" && mv "$1.tmp" "$1"', "sh", rel],
                        input=text), f"writing {rel}")

    def systemctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`systemctl --user ARGS`."""
        return self.run(["systemctl", "--user", *args])

    def show(self, *props: str, unit: str = "warmd") -> dict[str, str]:
        """`systemctl --user show -p PROPS UNIT` as a dict."""
        out = _check(self.systemctl("show", "-p", ",".join(props), unit), "systemctl --user show").stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str = "warmd") -> str:
        """`journalctl --user -u UNIT`: the unit's log, messages only."""
        return self.run(["journalctl", "--user", "-u", unit, "--no-pager", "-o", "cat"]).stdout

    def as_service_sees_it(self, pid: int, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        """Run argv as this user inside the mount namespace of process `pid` (a service's sandbox)."""
        return self.box.run(["nsenter", "-t", str(pid), "-m", "-S", str(self.uid), "-G", str(self.gid), "--",
                             *argv])

    def processes(self) -> list[str]:
        """`PID COMMAND` of each of its processes."""
        out = self.box.run(["ps", "-u", str(self.uid), "-o", "pid=,args="]).stdout
        return [line.strip() for line in out.splitlines() if line.strip()]

    def describe(self) -> str:
        """Its service's status and log, for failure messages."""
        status = self.systemctl("status", "warmd", "--no-pager", "--full").stdout
        return f"systemctl --user status warmd:\n{status}\njournalctl --user -u warmd:\n{self.journal()}"
