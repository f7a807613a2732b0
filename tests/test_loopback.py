"""The default run is loopback only, and says so by failing: in this process, in Python children, in
uv, and (as root) in a network namespace with no route beyond `lo`."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import netguard
from tests.support.network import NO_ROUTE, interfaces, lockdown
from tests.support.prereqs import in_ci

REPO = Path(__file__).resolve().parent.parent
PUBLIC = ("151.101.0.223", 443)  # a public address (a CDN's); nothing here may reach it


@pytest.fixture
def lock():
    held = lockdown()
    if held is None:  # only when the run selected an `internet` test too (`-m internet` or `-m ""`)
        pytest.skip("this run has the real network: it selected a test marked internet")
    return held


def test_a_connection_to_a_public_address_fails_in_process(lock) -> None:
    with pytest.raises(OSError, match="loopback only") as err:
        socket.create_connection(PUBLIC, timeout=2)
    assert err.value.errno == errno.ENETUNREACH
    with pytest.raises(OSError, match="loopback only"):
        socket.getaddrinfo("pypi.org", 443)  # refused before any DNS query leaves
    refused = lock.take_refusals()
    assert len(refused) == 2 and "151.101.0.223" in refused[0] and "'pypi.org'" in refused[1], refused


def test_refusals_are_recorded_so_a_swallowed_error_still_fails(lock) -> None:
    try:
        socket.create_connection(PUBLIC, timeout=2)
    except OSError:
        pass  # what a `try: ... except: warn` in the code under test would do
    refused = lock.take_refusals()
    assert len(refused) == 1 and "151.101.0.223" in refused[0], refused


def test_loopback_is_allowed(lock) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=2):
            pass
        with socket.create_connection(("localhost", server.getsockname()[1]), timeout=2):
            pass
    assert lock.take_refusals() == []


def test_a_python_child_is_refused_too(lock) -> None:
    code = "import socket; socket.create_connection(('pypi.org', 443), timeout=2)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "loopback only" in proc.stderr
    refused = lock.take_refusals()
    assert len(refused) == 1 and refused[0].startswith("child: name lookup of 'pypi.org'"), refused


def test_a_child_may_reach_only_the_lab_addresses_it_is_given(lock) -> None:
    """WARMD_TEST_LAB_HOSTS widens a child's guard to those private addresses, and no others."""
    code = ("import socket\n"
            "for host in ('10.77.1.1', '10.77.0.1'):\n"
            "    try: socket.create_connection((host, 9), timeout=0.2)\n"
            "    except OSError as e: print(host, e)\n")
    env = os.environ | {netguard.LAB_ENV: "10.77.1.1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    refused = lock.take_refusals()
    # The lab's address got past the guard to the kernel (no route here: the lab is not up); the other did not.
    assert len(refused) == 1 and refused[0].startswith("child: name lookup of '10.77.0.1'"), (refused, proc.stdout)
    said = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    assert "loopback only" not in said["10.77.1.1"] and "loopback only" in said["10.77.0.1"], said
    for bad in ("8.8.8.8", "127.0.0.1", "files.pythonhosted.org"):
        with pytest.raises(ValueError):
            netguard.lab_hosts(bad)
    assert netguard.lab_hosts("10.77.0.1, 192.168.5.2") == {"10.77.0.1", "192.168.5.2"}


def test_uv_is_stopped_at_the_tripwire(lock, uv_bin: Path, uv_environ: dict[str, str], tmp_path: Path) -> None:
    proc = subprocess.run([str(uv_bin), "pip", "install", "--no-config", "--target", str(tmp_path / "t"),
                           "--index-url", "https://pypi.org/simple", "six"],
                          env=uv_environ | {"UV_HTTP_RETRIES": "0"}, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    refused = lock.take_refusals()
    assert refused and all("pypi.org:443" in r for r in refused), (refused, proc.stderr[-500:])
    assert not list(tmp_path.rglob("six*")), "uv installed something it could not have downloaded"


def test_the_run_has_no_route_beyond_loopback(lock) -> None:
    if lock.netns != "entered":
        if in_ci():
            pytest.fail(f"CI: the run must be in a network namespace of its own: {lock.netns}", pytrace=False)
        pytest.skip(f"network namespace {lock.netns}")
    assert interfaces() == ["lo"]
    with socket.socket() as s:
        s.settimeout(2)
        # the socket module's own connect_ex, around the guard: the kernel itself has no route
        assert netguard._real["connect_ex"](s, PUBLIC) in NO_ROUTE


INNER = '''
import socket, subprocess, sys, urllib.request

def test_fine():
    assert 1 + 1 == 2

def test_reaches_out():
    urllib.request.urlopen("http://151.101.0.223/", timeout=2)

def test_reaches_out_and_hides_it():
    try:
        socket.create_connection(("151.101.0.223", 443), timeout=2)
    except OSError:
        pass

def test_child_reaches_out_and_hides_it():
    subprocess.run([sys.executable, "-c", "import socket; socket.create_connection(('1.1.1.1', 53), timeout=2)"])
'''


def test_a_run_with_a_test_that_reaches_out_fails(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole pytest run with this policy: the tests that reach out fail it, even those that hide it."""
    pytester.makepyfile(test_inner=INNER)
    pytester.makeconftest("from tests.support.network import pytest_collection_finish, pytest_runtest_call, "
                          "pytest_runtest_teardown, pytest_unconfigure\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:cov")
    outcomes = result.parseoutcomes()
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert (outcomes.get("passed"), outcomes.get("failed"), outcomes.get("errors")) == (1, 3, None), \
        result.stdout.str()
    out = result.stdout.str()
    assert "reached beyond loopback" in out and "151.101.0.223" in out and "1.1.1.1" in out
