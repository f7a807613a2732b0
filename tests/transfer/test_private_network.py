"""A clone under a watched root cannot make warmd reach the private network, nor carry the user's
credentials to a host its lock names. Real `warmd` commands, the real uv, and two local index
servers: the lab index the user vouched for (`trusted-indexes`) and an `intranet` server nobody
vouched for, standing in for a service on the user's LAN or loopback. Requests are counted there."""

from __future__ import annotations

import json
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.cli import run_warmd, status_by_name, warmd_json
from tests.support.config import write_warmd_config
from tests.support.daemon import DaemonProcess
from tests.support.index_server import IndexServer
from tests.support.projects import lock_project, locked_project, torch_like_set, uv_env, write_project
from tests.support.wheels import make_wheel



@dataclass
class Named:
    """A server as a project names it: by another host name (`localhost`) than the address it binds."""

    server: IndexServer
    host: str

    @property
    def url(self) -> str:
        return self.server.url.replace("127.0.0.1", self.host)

    @property
    def simple_url(self) -> str:
        return f"{self.url}/simple"

    def index_url(self, variant: str) -> str:
        return f"{self.url}/whl/{variant}"


@dataclass
class User:
    tmp: Path
    uv: Path
    cache: Path
    env: dict[str, str]

    def config(self, lab: IndexServer, *extra: str) -> Path:
        """The user's config: the lab index vouched for, nothing else."""
        return write_warmd_config(self.tmp, self.uv, self.cache, trusted=[lab.url], extra=extra)

    def warmd(self, config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return run_warmd(config, *args, env=env or self.env)

    def prefetch(self, config: Path, *args: str, env: dict[str, str] | None = None) -> dict:
        return warmd_json(config, "prefetch", *args, env=env or self.env)[1]

    def status(self, config: Path) -> dict[str, dict]:
        return status_by_name(config, env=self.env)


@pytest.fixture
def user(tmp_path: Path, uv_bin: Path, uv_cache: Path, uv_environ: dict[str, str]) -> User:
    return User(tmp_path, uv_bin, uv_cache, uv_environ)


def _project(root: Path, name: str, server: IndexServer | Named, wheel_dir: Path, version: str, user: User) -> Path:
    """A locked project whose GPU wheels (and default index) are on `server`."""
    real = server.server if isinstance(server, Named) else server
    ws = torch_like_set(real, wheel_dir, "cu128", version=version, pythons=("cp311",), size=64 * 1024)
    # the lock's author reached the server: the user never did
    return locked_project(root, name, server=server, ws=ws, uv=user.uv, env=user.env)  # type: ignore[arg-type]


def _by_name(report: dict) -> dict[str, dict]:
    return {Path(p["project"]).name: p for p in report["projects"]}


def test_a_clone_under_a_root_reaches_no_server_nobody_vouched_for(user: User, index_server: IndexServer,
                                                                    wheel_dir: Path) -> None:
    root = user.tmp / "code"
    with IndexServer() as intranet:
        _project(root, "mine", index_server, wheel_dir / "lab", "2.8.0", user)
        by_ip = _project(root, "by-ip", intranet, wheel_dir / "intranet", "2.7.0", user)
        by_name = _project(root, "by-name", Named(intranet, "localhost"), wheel_dir / "intranet", "2.7.0", user)
        assert f"http://localhost:{intranet.url.rsplit(':', 1)[1]}/whl/cu128" in (by_name / "uv.lock").read_text()
        config = user.config(index_server, f"roots = {json.dumps([str(root)])}")
        intranet.reset_counters()
        index_server.reset_counters()

        report = _by_name(user.prefetch(config))  # every project under the root, as the daemon finds them
        status = user.status(config)
        doctor = user.warmd(config, "doctor", "--json", str(by_name))
        assert intranet.hits == [], "warmd sent the server nobody vouched for a request"

    # The lab index, vouched for in the config, is warmed as before.
    assert {w["state"] for w in report["mine"]["wheels"]} == {"warm"}
    assert index_server.wheel_gets()
    # The clones' wheels are skipped, each saying where and how to vouch for it.
    for name, project, host in (("by-ip", by_ip, "127.0.0.1"), ("by-name", by_name, "localhost")):
        skipped = [w for w in report[name]["wheels"] if w["state"] == "skipped"]
        assert {w["name"] for w in skipped} == {"torch", "pytorch-triton", "nvidia-nvtx-cu12"}, report[name]
        assert [w for w in report[name]["wheels"] if w["state"] != "skipped"] == []
        for w in skipped:
            assert f"{host}:{intranet.url.rsplit(':', 1)[1]}, a loopback address" in w["reason"]
            assert f"warmd trust {shlex.quote(str(project))}" in w["reason"]
        assert status[name]["state"] == "nothing to warm" and "skipped" in status[name]["reason"]
        assert {s["name"] for s in status[name]["skipped"]} == {"torch", "pytorch-triton", "nvidia-nvtx-cu12"}
        assert all("warmd trust" in s["reason"] for s in status[name]["skipped"])
    assert status["mine"]["state"] == "warm" and status["mine"]["skipped"] == []
    # doctor names the host and how to vouch for it, and asks it nothing either.
    findings = json.loads(doctor.stdout)["findings"]
    network = [f for f in findings if f["check"] == "network"]
    assert [f["status"] for f in network] == ["warn"] and "localhost" in network[0]["message"]
    assert "warmd trust PROJECT" in network[0]["fix"]


@pytest.mark.parametrize("extra", [["keep-wheels = true"], ["[limits]", "per-project = 0", "min-free = 0"]],
                         ids=["warmd-fetches-all", "uv-may-fetch-no-limit"])
def test_a_redirect_from_the_vouched_index_to_an_unvouched_server_is_not_followed(
        user: User, index_server: IndexServer, wheel_dir: Path, extra: list[str]) -> None:
    """Neither by warmd's engine (keep-wheels: it fetches every file) nor by uv, which follows
    redirects unchecked and so is handed a file only once warmd's own request for it passed every
    hop this run (without limits, no HEAD for a size asks that: the pre-flight does). Whether uv
    would download a file itself here depends on what warmd measures of the link; in
    tests/warm/test_direct.py it surely does (that test fails without the pre-flight, this one need not)."""
    with IndexServer() as intranet:
        project = _project(user.tmp, "app", index_server, wheel_dir, "2.8.0", user)
        torch = next(p for p in (wheel_dir / "cu128").iterdir() if p.name.startswith("torch-"))
        intranet.add_wheel(torch, "cu128")
        index_server.faults.redirect[torch.name] = intranet.file_url(torch.name, "cu128")
        config = user.config(index_server, *extra)
        intranet.reset_counters()
        report = user.prefetch(config, str(project))
        assert intranet.hits == []
    wheels = {w["name"]: w for w in report["projects"][0]["wheels"]}
    assert wheels["torch"]["state"] == "failed" and "nobody vouched for" in wheels["torch"]["reason"]
    assert {w["state"] for n, w in wheels.items() if n != "torch"} == {"warm"}
    assert report["exit_code"] == 1


def test_credentials_are_not_sent_to_an_http_index_only_a_lock_names(user: User, index_server: IndexServer,
                                                                       wheel_dir: Path) -> None:
    home = user.tmp / "home"
    home.mkdir()
    netrc = home / ".netrc"
    netrc.write_text("machine 127.0.0.1\nlogin alice\npassword s3cret\n")  # both servers live on that host
    netrc.chmod(0o600)
    env = user.env | {"HOME": str(home)}
    with IndexServer() as intranet:
        mine = _project(user.tmp / "code", "mine", index_server, wheel_dir / "lab", "2.8.0", user)
        clone = _project(user.tmp / "code", "clone", intranet, wheel_dir / "intranet", "2.7.0", user)
        config = user.config(index_server)
        # trusted: warmd connects for it; its index is still no index of the user's own
        assert user.warmd(config, "trust", str(clone)).returncode == 0
        intranet.reset_counters()
        index_server.reset_counters()
        report = _by_name(user.prefetch(config, str(mine), str(clone), env=env))
        gets = [h for h in intranet.hits if h.method == "GET"]
    assert {w["state"] for p in report.values() for w in p["wheels"]} == {"warm"}, report
    assert gets and not any(h.authorization for h in intranet.hits)
    lab = index_server.hits
    assert lab and all(h.authorization for h in lab)  # the user's own index gets the netrc's credentials


def test_warmd_trust_makes_a_running_daemon_warm_a_skipped_private_index(user: User, index_server: IndexServer,
                                                                          wheel_dir: Path) -> None:
    root = user.tmp / "code"
    with IndexServer() as intranet:
        clone = _project(root, "clone", intranet, wheel_dir, "2.7.0", user)
        config = user.config(index_server, f"roots = {json.dumps([str(root)])}", 'recheck-interval = "1h"',
                             "[watch]", "debounce = 0.3")
        intranet.reset_counters()
        daemon = DaemonProcess(config, user.env)
        try:
            daemon.expect(f"{clone}: nothing to warm")
            assert intranet.hits == []
            st = user.status(config)["clone"]
            assert st["state"] == "nothing to warm" and len(st["skipped"]) == 3
            assert all(f"warmd trust {clone}" in s["reason"] for s in st["skipped"])

            trusted = user.warmd(config, "trust", str(clone))
            assert trusted.returncode == 0, trusted.stderr
            assert f"trusted {clone}" in trusted.stdout and intranet.url in trusted.stdout
            daemon.expect(f"{clone}: its trust changed")
            daemon.expect(f"{clone}: warm")  # no restart, no lock change
            st = user.status(config)["clone"]
            assert st["state"] == "warm" and st["skipped"] == [] and st["wheels_warm"] == 3
            assert [h for h in intranet.hits if h.method == "GET"]
            listed = user.warmd(config, "trust", "--list")
            assert listed.returncode == 0 and str(clone) in listed.stdout and intranet.url in listed.stdout

            untrusted = user.warmd(config, "untrust", str(clone))
            assert untrusted.returncode == 0 and f"untrusted {clone}" in untrusted.stdout
            daemon.expect(f"{clone}: its trust changed")
            daemon.expect(f"{clone}: nothing to warm")
            assert str(clone) not in user.warmd(config, "trust", "--list").stdout
            before = len(intranet.hits)
            st = user.status(config)["clone"]
            assert st["state"] == "nothing to warm" and len(st["skipped"]) == 3
            assert len(intranet.hits) == before
        finally:
            daemon.kill()
    again = user.warmd(config, "untrust", str(clone))
    assert again.returncode == 0 and "was not trusted" in again.stdout
    assert user.warmd(config, "trust").returncode == 2  # neither a PATH nor --list


def test_a_trusted_project_whose_lock_names_a_new_private_host_gets_only_that_hosts_wheels_skipped(
        user: User, index_server: IndexServer, wheel_dir: Path) -> None:
    with IndexServer() as first, IndexServer() as second:
        project = _project(user.tmp, "app", first, wheel_dir, "2.8.0", user)
        config = user.config(index_server)
        assert user.warmd(config, "trust", str(project)).returncode == 0
        # The lock moves nvidia-nvtx-cu12 to a host it did not name when it was trusted.
        nvtx = next(p for p in (wheel_dir / "_shared").iterdir() if p.name.startswith("nvidia_nvtx"))
        second.add_wheel(nvtx, "cu128")
        text = (project / "pyproject.toml").read_text()
        text = text.replace('nvidia-nvtx-cu12 = [{ index = "pytorch-cu128" }]', 'nvidia-nvtx-cu12 = [{ index = "other" }]')
        text += f'\n[[tool.uv.index]]\nname = "other"\nurl = "{second.index_url("cu128")}"\nexplicit = true\n'
        write_project(user.tmp, "app", "3.11", text.splitlines())
        lock_project(project, user.uv, user.env)
        assert second.url in (project / "uv.lock").read_text()
        first.reset_counters()
        second.reset_counters()
        report = user.prefetch(config, str(project))
        assert second.hits == []
        assert [h for h in first.hits if h.method == "GET"]
    wheels = {w["name"]: w for w in report["projects"][0]["wheels"]}
    assert {n: w["state"] for n, w in wheels.items()} == {"torch": "warm", "pytorch-triton": "warm",
                                                          "nvidia-nvtx-cu12": "skipped"}
    reason = wheels["nvidia-nvtx-cu12"]["reason"]
    assert "not among the hosts" in reason and f"`warmd trust {project}` trusts what it names now" in reason
    assert report["exit_code"] == 0


def test_the_look_ahead_does_not_run_uv_lock_against_an_index_nobody_vouched_for(
        user: User, index_server: IndexServer, wheel_dir: Path) -> None:
    with IndexServer() as intranet:
        clone = _project(user.tmp, "clone", intranet, wheel_dir, "2.7.0", user)
        torch_like_set(intranet, wheel_dir, "cu128", version="2.9.0", pythons=("cp311",), size=64 * 1024)
        config = user.config(index_server)
        intranet.reset_counters()
        report = user.prefetch(config, "--ahead", str(clone))
        assert intranet.hits == []  # neither warmd nor the `uv lock` it would run
        status = user.status(config)["clone"]
    [ahead] = report["ahead"]
    assert ahead["state"] == "skipped"
    assert "`uv lock` would connect to" in ahead["reason"] and f"warmd trust {clone}" in ahead["reason"]
    assert status["upgrade"]["state"] == "skipped" and status["upgrade"]["reason"] == ahead["reason"]
    assert report["exit_code"] == 0  # nothing failed: nothing was tried


def _direct_url_project(user: User, server: IndexServer, wheel_dir: Path) -> tuple[Path, Path]:
    """A project pinning a wheel by its URL on the lab index (as on a release page)."""
    wheel = make_wheel(wheel_dir / "releases", "flash-attn", "2.6.3", "py3-none-any", 64 * 1024)
    url = server.add_wheel(wheel, "releases", folder="/files/releases/v1")
    project = write_project(user.tmp, "kernels", "3.11", [
        "[project]", 'name = "kernels"', 'version = "0.1.0"', 'requires-python = ">=3.11"',
        f'dependencies = ["flash-attn @ {url}"]', "",
    ])
    lock_project(project, user.uv, uv_env(user.tmp / "lock-cache"))
    assert f'source = {{ url = "{url}" }}' in (project / "uv.lock").read_text()
    return project, wheel


def test_a_url_the_lock_spells_in_capitals_goes_to_uv_once_warmds_own_request_for_it_passed(
        user: User, index_server: IndexServer, wheel_dir: Path) -> None:
    """A lock written by hand may spell a host in capitals; httpx asks (and records) it in lower
    case. Both are one URL to warmd: the pre-flight's answer for it counts, and uv is handed the wheel."""
    project, wheel = _direct_url_project(user, index_server, wheel_dir)
    lock = project / "uv.lock"
    lock.write_text(lock.read_text().replace("127.0.0.1", "LocalHost"))
    port = index_server.url.rsplit(":", 1)[1]
    config = write_warmd_config(user.tmp, user.uv, user.cache, packages=["flash-attn*"],
                                trusted=[f"http://localhost:{port}/"], extra=["keep-wheels = true"])
    first = user.prefetch(config, str(project))
    assert [w["state"] for w in first["projects"][0]["wheels"]] == ["warm"], first
    subprocess.run([str(user.uv), "cache", "clean"], env=user.env, check=True, capture_output=True)
    index_server.reset_counters()
    second = user.prefetch(config, str(project))  # in the store: the pre-flight asks where the URL leads
    assert [(w["state"], w["reason"]) for w in second["projects"][0]["wheels"]] == [("warm", None)], second
    hits = index_server.wheel_hits(wheel.name)
    assert hits[0].method == "HEAD" and any(h.method == "GET" and h.range is None for h in hits), hits  # warmd, then uv


def _kept_in_the_store_only(user: User, index_server: IndexServer, wheel_dir: Path) -> tuple[Path, Path, Path]:
    """A project pinning a wheel by URL, warmed once with keep-wheels, then uv's cache cleaned: the
    next run has the file in warmd's store and must hand it to uv again (the project, wheel, config)."""
    project, wheel = _direct_url_project(user, index_server, wheel_dir)
    config = write_warmd_config(user.tmp, user.uv, user.cache, packages=["flash-attn*"],
                                trusted=[index_server.url], extra=["keep-wheels = true"])
    first = user.prefetch(config, str(project))
    assert [w["state"] for w in first["projects"][0]["wheels"]] == ["warm"], first
    subprocess.run([str(user.uv), "cache", "clean"], env=user.env, check=True, capture_output=True)
    return project, wheel, config


def test_a_wheel_pinned_by_url_goes_to_uv_only_after_warmd_checked_where_its_url_leads(
        user: User, index_server: IndexServer, wheel_dir: Path) -> None:
    """uv downloads a wheel pinned by URL itself (its cache keys it by the URL), following redirects
    unchecked. In warmd's store already (keep-wheels), the file is not downloaded this run, so a
    HEAD asks where its URL leads: a redirect to a server nobody vouched for keeps uv from it."""
    project, wheel, config = _kept_in_the_store_only(user, index_server, wheel_dir)
    with IndexServer() as intranet:
        intranet.add_wheel(wheel, "releases", folder="/files/releases/v1")
        index_server.faults.redirect[wheel.name] = intranet.file_url(wheel.name, "releases")
        index_server.reset_counters()
        intranet.reset_counters()
        second = user.prefetch(config, str(project))
        assert intranet.hits == [], "uv followed the wheel's redirect to a server nobody vouched for"
    [fa] = second["projects"][0]["wheels"]
    assert fa["state"] == "skipped" and "redirects unchecked" in fa["reason"], fa
    assert [h.method for h in index_server.wheel_hits(wheel.name)] == ["HEAD"]  # the pre-flight's one request


def test_a_wheel_the_pre_flight_could_not_check_is_no_limits_and_a_passing_fault_fails_it(
        user: User, index_server: IndexServer, wheel_dir: Path) -> None:
    """The pre-flight's refusal is its own: a redirect it could not follow leaves the wheel to `uv sync`
    (under `skipped`, with the pre-flight's words: never "skipped by a limit"); an index that answers
    its HEAD with a 503 (a fault waiting may mend) fails the wheel, so the daemon tries again."""
    project, wheel, config = _kept_in_the_store_only(user, index_server, wheel_dir)
    index_server.faults.status_burst[wheel.name] = [503]
    index_server.reset_counters()
    second = user.prefetch(config, str(project))
    [fa] = second["projects"][0]["wheels"]
    assert fa["state"] == "failed" and "redirects unchecked" in fa["reason"] and "503" in fa["reason"], \
        (fa, index_server.wheel_hits(wheel.name))
    assert second["exit_code"] == 1
    status = user.status(config)["kernels"]
    assert status["state"] == "failed", status  # an outcome the daemon retries (policy.outcome_of)

    with IndexServer() as intranet:
        intranet.add_wheel(wheel, "releases", folder="/files/releases/v1")
        index_server.faults.redirect[wheel.name] = intranet.file_url(wheel.name, "releases")
        third = user.prefetch(config, str(project))
        assert intranet.hits == []
    [fa] = third["projects"][0]["wheels"]
    assert fa["state"] == "skipped" and fa["verified"] is False and "redirects unchecked" in fa["reason"], fa
    status = user.status(config)["kernels"]
    assert "limit" not in (status["reason"] or "") and not any("limit" in f for f in status["flags"]), status


def test_warm_unhashed_hands_uv_only_urls_whose_redirects_warmd_checked(
        user: User, index_server: IndexServer, wheel_dir: Path) -> None:
    """A wheel the lock pins without a sha256 (`warm-unhashed`) is fetched by uv, from its index's page
    and the file: each is asked by warmd first, and the file's redirect keeps uv from it."""
    ws = torch_like_set(index_server, wheel_dir, "rocm6.4", pythons=("cp311",), size=64 * 1024)
    index_server.hashless.add("rocm6.4")  # a nightly index: no #sha256= in its pages
    project = locked_project(user.tmp, "nightly", server=index_server, ws=ws, uv=user.uv, env=user.env)
    torch = next(f for f in ws.filenames if f.startswith("torch-"))
    config = write_warmd_config(user.tmp, user.uv, user.cache, variant="rocm6.4",
                                trusted=[index_server.url], extra=["warm-unhashed = true"])
    with IndexServer() as intranet:
        intranet.add_wheel(wheel_dir / "rocm6.4" / torch, "rocm6.4")
        index_server.faults.redirect[torch] = intranet.file_url(torch, "rocm6.4")
        intranet.reset_counters()
        report = user.prefetch(config, str(project))
        assert intranet.hits == [], "uv followed the wheel's redirect to a server nobody vouched for"
    wheels = {w["name"]: w for w in report["projects"][0]["wheels"]}
    assert wheels["torch"]["state"] == "skipped" and "redirects unchecked" in wheels["torch"]["reason"]
    assert (wheels["pytorch-triton"]["state"], wheels["pytorch-triton"]["verified"]) == ("warm", False)


def test_the_look_ahead_does_not_run_uv_lock_for_a_direct_url_only_the_pyproject_names(
        user: User, index_server: IndexServer, wheel_dir: Path) -> None:
    """The lock names only the vouched lab index; the pyproject.toml gained `evil @ <url>` on a server
    nobody vouched for since (the lock is not up to date, so `uv lock` would fetch it to resolve)."""
    with IndexServer() as intranet:
        project = _project(user.tmp, "app", index_server, wheel_dir, "2.8.0", user)
        torch_like_set(index_server, wheel_dir, "cu128", version="2.9.0", pythons=("cp311",), size=64 * 1024)
        url = intranet.add_wheel(make_wheel(wheel_dir / "evil", "evil", "1.0", "py3-none-any", 4096), None)
        pyproject = project / "pyproject.toml"
        text = pyproject.read_text()
        assert "dependencies = [" in text
        pyproject.write_text(text.replace("dependencies = [", f'dependencies = ["evil @ {url}", ', 1))
        config = user.config(index_server)
        intranet.reset_counters()
        report = user.prefetch(config, "--ahead", str(project))
        assert intranet.hits == []  # the `uv lock` that would resolve it never ran
    [ahead] = report["ahead"]
    assert ahead["state"] == "skipped" and url in ahead["reason"] and "pyproject.toml" in ahead["reason"], ahead
    assert {w["state"] for w in report["projects"][0]["wheels"]} == {"warm"}  # the lock itself is still warmed
