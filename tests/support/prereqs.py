"""What the test suite needs beyond the dev dependencies, where it looks for each, and how to get it.

A test asks with `need(name)`: it gets the path, or, when it is missing, a skip that says exactly
what to install — and under CI=true a failure instead, because .ci/run installs all of them first
and a skip there would hide a lost test. The older uvs are the prerequisites the run can install by
itself (from PyPI, into .tools/, before the network is locked): 0.8.2, the newest of each later
minor line before the pinned one (UV_LINES), and 0.8.0; .ci/run does that with
`python -m tests.support.prereqs install-uv-old`, the rest with apt.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED_NIX = REPO.parent / "shared" / "nix"  # read-only test input beside the checkout, never copied in
UV_OLD_VERSION = "0.8.2"  # the oldest uv warmd supports: the release of the original report
UV_OLDER_VERSION = "0.8.0"  # one older than that, for doctor's "uv older than 0.8.2"
# A user may have any uv: the newest release of each minor line between 0.8.2 and the pinned dev
# dependency (0.13.x), as PyPI had them when this list was last looked at (`uv pip install --dry-run
# "uv>=0.9,<0.10"` ...). Each runs the seed story (tests/warm/test_prefetch.py).
UV_LINES = (UV_OLD_VERSION, "0.9.30", "0.10.12", "0.11.33", "0.12.24")


def in_ci() -> bool:
    """True when the run is CI's (CI=true, as .ci/run and CI systems set it)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def uv_old_path(version: str = UV_OLD_VERSION) -> Path:
    """Where the tests find that uv: .tools/uv-VERSION/bin/uv (for 0.8.2, $WARMD_TEST_UV_OLD first)."""
    override = os.environ.get("WARMD_TEST_UV_OLD")
    if override and version == UV_OLD_VERSION:
        return Path(override)
    return REPO / ".tools" / f"uv-{version}" / "bin" / "uv"


def _which(cmd: str) -> Callable[[], Path | None]:
    def find() -> Path | None:
        found = shutil.which(cmd)
        return Path(found) if found else None
    return find


def _file(path: Callable[[], Path]) -> Callable[[], Path | None]:
    return lambda: path() if path().is_file() else None


def _nginx() -> Path | None:
    # Debian keeps it in /usr/sbin, which a non-root PATH often lacks.
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    return Path(found) if found else None


def _netns() -> Path | None:
    ip = shutil.which("ip") or shutil.which("ip", path="/usr/sbin:/sbin")
    return Path(ip) if ip and os.geteuid() == 0 else None


def _root() -> Path | None:
    return Path("/") if os.geteuid() == 0 else None


def _nspawn() -> Path | None:
    from tests.support.booted import usable

    found = shutil.which("systemd-nspawn", path="/usr/bin:/bin")
    return Path(found) if found and usable() is None else None


@dataclass(frozen=True)
class Prereq:
    """One thing some tests need: what it is, how to find it, and the command that installs it."""

    what: str
    find: Callable[[], Path | None]
    install: str


PREREQS: dict[str, Prereq] = {
    "uv-old": Prereq(f"uv {UV_OLD_VERSION} (the release of the original report)", _file(uv_old_path),
                     f"python -m tests.support.prereqs install-uv-old  (uv pip install uv=={UV_OLD_VERSION} "
                     f"into .tools/), or point WARMD_TEST_UV_OLD at one"),
    "uv-older": Prereq(f"uv {UV_OLDER_VERSION} (older than warmd supports)", _file(lambda: uv_old_path(UV_OLDER_VERSION)),
                       f"python -m tests.support.prereqs install-uv-old  (uv pip install uv=={UV_OLDER_VERSION} "
                       "into .tools/)"),
    **{f"uv-{v}": Prereq(f"uv {v} (the newest of its minor line)", _file(lambda v=v: uv_old_path(v)),
                         f"python -m tests.support.prereqs install-uv-old  (uv pip install uv=={v} into .tools/)")
       for v in UV_LINES[1:]},
    "nix-instantiate": Prereq("nix-instantiate", _which("nix-instantiate"), "apt-get install nix-bin"),
    "nix-shared": Prereq("the real nixpkgs lib and home-manager modules (the Nix module tests evaluate with them)",
                         _file(lambda: SHARED_NIX / "nixpkgs-lib" / "default.nix"),
                         f"lay the project's shared folder beside the checkout ({SHARED_NIX.parent}); "
                         "its nix/README.md says what is in it"),
    "systemd-analyze": Prereq("systemd-analyze", _which("systemd-analyze"), "apt-get install systemd"),
    "systemctl": Prereq("systemctl", _which("systemctl"), "apt-get install systemd"),
    "nginx": Prereq("nginx (the lab mirror's engine, contrib/nginx)", _nginx, "apt-get install nginx"),
    "netns": Prereq("root and iproute2 (the lab test puts each host in a network namespace of its own)", _netns,
                    "run the tests as root with iproute2 (apt-get install iproute2)"),
    "mount": Prereq("the right to mount a small tmpfs (root)", _root,
                    "run the tests as root (the disk-full drills mount a tmpfs of a few MiB)"),
    "systemd-nspawn": Prereq("root and systemd-nspawn (the service tests boot this machine's systemd in a "
                             "container: tests/support/booted.py)", _nspawn,
                             "apt-get install systemd-container dbus-user-session procps, and run the tests as "
                             "root"),
    "mknod": Prereq("the right to make a device node (root)", _root,
                    "run the tests as root (a hostile project's uv.lock is made a character device)"),
}


def need(name: str) -> Path:
    """The prerequisite's path; a missing one skips the test saying what to install (fails under CI)."""
    import pytest

    pre = PREREQS[name]
    found = pre.find()
    if found is not None:
        return found
    message = f"{pre.what} is missing; install it: {pre.install}"
    if in_ci():
        pytest.fail(f"CI: {message}", pytrace=False)
    pytest.skip(message)


def install_uv_old(version: str = UV_OLD_VERSION, uv: Path | None = None) -> str | None:
    """Install that uv from PyPI into .tools/ (atomically: a parallel run never sees half); None or why not."""
    path = uv_old_path(version)
    if path.is_file():
        return None
    if os.environ.get("WARMD_TEST_UV_OLD") and version == UV_OLD_VERSION:
        return f"WARMD_TEST_UV_OLD={path} does not exist"
    uv = uv or Path(shutil.which("uv", path=str(Path(sys.executable).parent)) or "uv")
    target = path.parent.parent
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".uv-{version}-", dir=target.parent))
    staging.chmod(0o755)
    try:
        proc = subprocess.run([str(uv), "pip", "install", "--quiet", "--target", str(staging), f"uv=={version}"],
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            return f"`uv pip install uv=={version}` failed: {proc.stderr.strip()[-300:]}"
        try:
            staging.rename(target)
        except OSError:
            if not path.is_file():  # another run won the race only if its binary is there
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return None if path.is_file() else f"installing uv {version} left no {path}"


_FIXTURE_VERSIONS = {"uv_old_bin": UV_OLD_VERSION, "uv_older_bin": UV_OLDER_VERSION}


def uv_line(version: str) -> Path:
    """The uv of that line (one of UV_LINES) for a test: its path, or the skip (CI: failure) `need` gives."""
    return need("uv-old" if version == UV_OLD_VERSION else f"uv-{version}")


def prepare(items: Sequence[object]) -> None:
    """The set-up the selected tests need from the network, done before it is locked (never in CI)."""
    if in_ci():
        return
    wanted = {v for item in items for f, v in _FIXTURE_VERSIONS.items() if f in getattr(item, "fixturenames", ())}
    # a test parametrized over the lines (`uv_line` in its parameters) wants the one it runs with
    wanted |= {p for item in items if (p := getattr(getattr(item, "callspec", None), "params", {}).get("uv_line"))}
    for version in sorted(wanted):
        why = install_uv_old(version)
        if why:
            print(f"\nprereqs: {why}", file=sys.stderr)


def main(argv: Sequence[str]) -> int:
    """`install-uv-old`: put the older uvs (UV_LINES and 0.8.0) into .tools/; `check`: list what is missing."""
    if list(argv) == ["install-uv-old"]:
        failed = 0
        for version in dict.fromkeys((*UV_LINES, *_FIXTURE_VERSIONS.values())):
            why = install_uv_old(version)
            print(f"prereqs: {why}" if why else f"prereqs: uv {version} at {uv_old_path(version)}",
                  file=sys.stderr if why else sys.stdout)
            failed += bool(why)
        return 1 if failed else 0
    if list(argv) == ["check"]:
        missing = [f"{p.what}: {p.install}" for p in PREREQS.values() if p.find() is None]
        for line in missing:
            print(f"prereqs: missing {line}", file=sys.stderr)
        return 1 if missing else 0
    print("usage: python -m tests.support.prereqs install-uv-old | check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
