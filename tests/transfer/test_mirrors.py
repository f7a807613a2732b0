"""A lab's mirror: the real nginx with the shipped config in front of the local index, and real
workstations (each its own uv cache, store and state) warming one project through it.

Counted at the origin (the index server): the second workstation makes no request there at all;
a mirror whose cached copy is damaged is caught by the sha256 and the origin serves that wheel;
a mirror that hangs costs one connection per run, not one per wheel.
"""

from __future__ import annotations

import json
import socket
import socketserver
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.cli import warmd_argv, warmd_json
from tests.support.config import OFFLINE_PACKAGES, write_warmd_config
from tests.support.index_server import PYPI_CACHE_CONTROL, IndexServer
from tests.support.lab_net import ORIGIN, LabNet
from tests.support.mirror import NginxMirror
from tests.support.netguard import LAB_ENV
from tests.support.prereqs import need
from tests.support.projects import locked_project, pinned_project, run_uv, torch_like_set, uv_env
from warmd.base import Config, DownloadSettings, MirrorSettings
from warmd.transfer import Fetcher, Store, mirror_for, mirror_url
from warmd.warm import Pipeline
from warmd.uv import Project, Uv

MiB = 1024 * 1024


@dataclass
class Workstation:
    """One machine of the lab: its own uv cache, warmd store and state, the same project."""

    root: Path
    config: Path
    env: dict[str, str]
    uv: Path

    def prefetch(self, project: Path) -> tuple[int, dict, str]:
        return warmd_json(self.config, "prefetch", project, env=self.env)

    def sync_offline(self, project: Path) -> None:
        env = self.env | {"UV_PROJECT_ENVIRONMENT": str(self.root / "venv")}
        run_uv(self.uv, ["sync", "--offline", "--frozen"], cwd=project, env=env)


def workstation(root: Path, uv: Path, mirrors: list[tuple[str, str]], *, timeout: float | None = None) -> Workstation:
    root.mkdir()
    cache = root / "uv-cache"
    cache.mkdir()
    extra = [f"[[mirrors]]\norigin = {json.dumps(o)}\nurl = {json.dumps(u)}" for o, u in mirrors]
    if timeout is not None:
        extra.insert(0, f"[download]\ntimeout = {timeout}")
    return Workstation(root, write_warmd_config(root, uv, cache, packages=OFFLINE_PACKAGES, extra=extra), uv_env(cache),
                       uv)


def host_of(server: IndexServer) -> str:
    return server.url.split("//", 1)[1]


@pytest.fixture
def nginx() -> Path:
    return need("nginx")


@pytest.fixture
def lab(tmp_path: Path, index_server: IndexServer, uv_bin: Path, uv_environ: dict[str, str], nginx: Path):
    """The origin with a torch-like set (torch big enough for several slices and segments), a
    locked project, and the mirror in front of the origin."""
    ws = torch_like_set(index_server, tmp_path / "wheels", "cu128", size=20 * MiB)
    project = locked_project(tmp_path, "proj", server=index_server, ws=ws, uv=uv_bin, env=uv_environ)
    with NginxMirror(nginx, tmp_path / "mirror", {host_of(index_server): index_server.url}) as mirror:
        index_server.reset_counters()  # `uv lock` read metadata from the origin: not the lab's traffic
        yield project, mirror, ws


def origin_entry(server: IndexServer, mirror: NginxMirror) -> tuple[str, str]:
    return server.url + "/", mirror.prefix_for(host_of(server))


def test_a_wheel_url_is_rewritten_under_the_longest_matching_origin() -> None:
    mirrors = [MirrorSettings("https://download.pytorch.org", "http://m:3142/download.pytorch.org"),
               MirrorSettings("https://download.pytorch.org/whl/nightly/", "http://n/nightly/")]
    url = "https://download.pytorch.org/whl/cu128/torch-2.8.0%2Bcu128-cp311-cp311-manylinux_2_28_x86_64.whl"
    m = mirror_for(mirrors, url)
    assert m is mirrors[0]
    assert mirror_url(m, url) == ("http://m:3142/download.pytorch.org/whl/cu128/"
                                  "torch-2.8.0%2Bcu128-cp311-cp311-manylinux_2_28_x86_64.whl")
    assert mirror_for(mirrors, "https://download.pytorch.org/whl/nightly/x.whl") is mirrors[1]
    # At a path boundary only: another host that merely starts with the same letters is not served.
    assert mirror_for(mirrors, "https://download.pytorch.org.evil/x.whl") is None


def test_a_second_workstation_warms_through_the_mirror_without_reaching_the_origin(
        lab, tmp_path: Path, index_server: IndexServer, uv_bin: Path) -> None:
    project, mirror, ws = lab
    entry = origin_entry(index_server, mirror)
    first = workstation(tmp_path / "ws1", uv_bin, [entry])
    code, report, err = first.prefetch(project)
    assert code == 0, err
    wheels = report["projects"][0]["wheels"]
    assert wheels and all(w["state"] == "warm" for w in wheels), wheels
    assert all(w["via"] == entry[1].rstrip("/") or w["via"] == entry[1] for w in wheels), wheels
    # The first machine's bytes came from the origin once, through the mirror, in 8 MiB slices.
    assert index_server.wheel_gets(), "the mirror never asked the origin"
    assert all(h.range and h.range.startswith("bytes=") for h in index_server.wheel_gets())
    first_bytes = index_server.bytes_served()

    mirror.stop()  # the mirror's cache outlives a restart of its server
    mirror.start()
    index_server.reset_counters()
    second = workstation(tmp_path / "ws2", uv_bin, [entry])
    code, report, err = second.prefetch(project)
    assert code == 0, err
    wheels = report["projects"][0]["wheels"]
    assert all(w["state"] == "warm" and w["bytes_downloaded"] > 0 for w in wheels), wheels
    index_server.settle()
    assert index_server.hits == [], "the second workstation's warm reached the origin"
    assert first_bytes >= sum(w["bytes_downloaded"] for w in wheels)
    second.sync_offline(project)  # filed under the origin's index: uv needs neither mirror nor network


def test_two_workstations_warming_at_once_pull_each_slice_from_the_origin_once(
        lab, tmp_path: Path, index_server: IndexServer, uv_bin: Path) -> None:
    project, mirror, ws = lab
    index_server.rate_limit = 8 * MiB  # a capped uplink, so that the two runs overlap
    entry = origin_entry(index_server, mirror)
    stations = [workstation(tmp_path / f"ws{i}", uv_bin, [entry]) for i in (1, 2)]
    cmds = [warmd_argv(s.config, "prefetch", project, "--json") for s in stations]
    procs = [subprocess.Popen(c, env=s.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c, s in zip(cmds, stations)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        assert all(w["state"] == "warm" for w in json.loads(out)["projects"][0]["wheels"])
    index_server.settle()
    asked = [(h.path, h.range) for h in index_server.wheel_gets()]
    # proxy_cache_lock: a slice one client is filling is waited for by the other, never fetched twice.
    assert asked and len(asked) == len(set(asked)), sorted(asked)
    torch = [r for path, r in asked if "/torch-" in path and "cp311" in path]
    assert sorted(torch) == ["bytes=0-8388607", "bytes=16777216-25165823", "bytes=8388608-16777215"]


def _damage_cached(mirror: NginxMirror, filename: str) -> None:
    """Flip one byte of the wheel's first cached slice, as a failing disk on the mirror would."""
    key = filename.replace("+", "%2B").encode()
    for path in mirror.cached_files():
        data = bytearray(path.read_bytes())
        if key in data[:4096]:
            data[-1] ^= 0xFF  # the body ends the file; its header (with the key) comes first
            path.write_bytes(bytes(data))
            return
    raise AssertionError(f"no cached slice of {filename} in {mirror.cache_dir}")


def test_a_mirror_serving_damaged_bytes_is_caught_and_the_origin_used(
        lab, tmp_path: Path, index_server: IndexServer, uv_bin: Path) -> None:
    project, mirror, ws = lab
    entry = origin_entry(index_server, mirror)
    code, _report, err = workstation(tmp_path / "ws1", uv_bin, [entry]).prefetch(project)
    assert code == 0, err
    triton = next(f for f in ws.filenames if f.startswith("pytorch_triton") and "cp311" in f)
    _damage_cached(mirror, triton)

    index_server.reset_counters()
    second = workstation(tmp_path / "ws2", uv_bin, [entry])
    code, report, err = second.prefetch(project)
    assert code == 0, err
    wheels = {w["filename"]: w for w in report["projects"][0]["wheels"]}
    assert all(w["state"] == "warm" for w in wheels.values()), wheels
    bad = wheels[triton]
    assert bad["via"] is None and "fail the lock's sha256" in bad["mirror_error"], bad
    assert "the mirror's fault" in err and "kept out of the store" in err
    # Only that wheel came from the origin; the others from the mirror, untouched by the origin.
    index_server.settle()
    assert {h.path.rsplit("/", 1)[1] for h in index_server.wheel_gets()} == {triton}
    assert all(w["via"] for f, w in wheels.items() if f != triton)
    second.sync_offline(project)


class _Hang(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.server.accepted += 1  # type: ignore[attr-defined]
        self.server.release.wait()  # type: ignore[attr-defined]


class Hanging(socketserver.ThreadingTCPServer):
    """A 'mirror' that accepts connections and never answers (a wedged cache server); counts them."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Hang)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.accepted = 0
        self.release = threading.Event()
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.shutdown()
        self.server_close()


def test_a_mirror_that_hangs_costs_one_timeout_per_run_not_one_per_wheel(
        lab, tmp_path: Path, index_server: IndexServer, uv_bin: Path) -> None:
    project, _mirror, ws = lab
    hanging = Hanging()
    try:
        station = workstation(tmp_path / "ws", uv_bin, [(index_server.url + "/", hanging.url + "/m/")], timeout=1)
        code, report, err = station.prefetch(project)
        assert code == 0, err
        wheels = report["projects"][0]["wheels"]
        assert len(wheels) >= 3 and all(w["state"] == "warm" and w["via"] is None for w in wheels), wheels
        assert hanging.accepted == 1, f"{hanging.accepted} connections to a hung mirror in one run"
        assert err.count("is down") == 1, err
        assert index_server.wheel_gets(), "the origin served nothing"
        # uv loses its copies (and warmd keeps no wheels by default): the next run is a run of its
        # own, and asks the mirror once more, once.
        run_uv(uv_bin, ["cache", "clean"], cwd=tmp_path, env=station.env)
        code, report, err = station.prefetch(project)
        assert code == 0 and all(w["state"] == "warm" for w in report["projects"][0]["wheels"]), err
        assert hanging.accepted == 2 and err.count("is down") == 1, (hanging.accepted, err)
    finally:
        hanging.close()


def test_a_mirror_that_refuses_connections_is_passed_over(lab, tmp_path: Path, index_server: IndexServer,
                                                           uv_bin: Path) -> None:
    project, _mirror, _ws = lab
    with socket.create_server(("127.0.0.1", 0)) as s:
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/m/"  # closed below: nothing listens there
    station = workstation(tmp_path / "ws", uv_bin, [(index_server.url + "/", dead)])
    code, report, err = station.prefetch(project)
    assert code == 0, err
    assert all(w["state"] == "warm" and w["via"] is None for w in report["projects"][0]["wheels"])
    assert err.count("is down") == 1, err
    station.sync_offline(project)


def doctor(station: Workstation, project: Path) -> tuple[int, list[dict]]:
    env = {k: v for k, v in station.env.items() if k != "SHELL"}
    code, report, _stderr = warmd_json(station.config, "doctor", project, env=env)
    return code, [f for f in report["findings"] if f["check"] == "mirror"]


def test_doctor_checks_a_mirror_with_the_smallest_planned_wheel(lab, tmp_path: Path, index_server: IndexServer,
                                                                 uv_bin: Path) -> None:
    project, mirror, ws = lab
    entry = origin_entry(index_server, mirror)
    station = workstation(tmp_path / "ws", uv_bin, [entry])
    _code, found = doctor(station, project)
    assert len(found) == 1, found
    f = found[0]
    assert f["status"] == "ok", f
    assert "answers Range" in f["message"] and "cache MISS" in f["message"]
    assert "matches the lock's sha256" in f["message"] and "filelock" in f["message"]
    # Bounded: of the wheels, only the small sample went through the mirror; torch's 20 MiB did not.
    index_server.settle()
    assert {h.path.rsplit("/", 1)[1] for h in index_server.wheel_gets()} == {ws.default_wheels[0].name}
    _code, found = doctor(station, project)
    assert "cache HIT" in found[0]["message"], found

    _damage_cached(mirror, ws.default_wheels[0].name)
    code, found = doctor(station, project)
    assert found[0]["status"] == "problem" and "not the lock's" in found[0]["message"], found
    assert found[0]["fix"].startswith("purge that file from the mirror's cache") and code == 1


def test_doctor_says_a_mirror_is_down_and_what_to_check(lab, tmp_path: Path, index_server: IndexServer,
                                                       uv_bin: Path) -> None:
    project, _mirror, _ws = lab
    with socket.create_server(("127.0.0.1", 0)) as s:
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/m/"
    station = workstation(tmp_path / "ws", uv_bin, [(index_server.url + "/", dead)])
    _code, found = doctor(station, project)
    assert len(found) == 1 and found[0]["status"] == "warn" and "ConnectError" in found[0]["message"], found
    assert "meanwhile warmd fetches from the origin" in found[0]["fix"]


def test_in_network_namespaces_the_second_workstation_has_no_route_to_the_origin(
        tmp_path: Path, uv_bin: Path, uv_environ: dict[str, str], nginx: Path) -> None:
    """Origin, mirror and two workstations on hosts of their own: "never reached the origin" is
    counted at the origin and enforced by the network (the workstations have no route there)."""
    need("netns")
    with LabNet(workstations=2) as net:
        origin = net.run_in(net.origin, lambda: IndexServer(host=ORIGIN, vouched=True).start())
        try:
            ws = torch_like_set(origin, tmp_path / "wheels", "cu128", size=20 * MiB)
            project = pinned_project(tmp_path, "proj", server=origin, ws=ws)
            lock_env = uv_environ | {"NO_PROXY": f"{ORIGIN},127.0.0.1", "no_proxy": f"{ORIGIN},127.0.0.1"}
            subprocess.run([*net.exec_prefix(net.origin), str(uv_bin), "lock"], cwd=project, env=lock_env,
                           check=True, capture_output=True, timeout=240)  # the origin's own host locks it
            port = int(origin.url.rsplit(":", 1)[1])
            host = f"{ORIGIN}:{port}"
            with NginxMirror(nginx, tmp_path / "mirror", {host: origin.url}, host="0.0.0.0",
                             wrap=net.exec_prefix(net.mirror)):
                origin.reset_counters()
                reports = []
                for n, ns in enumerate(net.workstations, 1):
                    assert net.can_connect(ns, net.mirror_ip(n), 3142) == "ok"
                    assert "unreachable" in net.can_connect(ns, ORIGIN, port).lower()
                    station = workstation(tmp_path / f"ws{n}", uv_bin, [(origin.url + "/", f"http://{net.mirror_ip(n)}:3142/{host}/")])
                    lab_env = {LAB_ENV: ",".join(net.hosts), "NO_PROXY": ",".join([*net.hosts, "127.0.0.1"])}
                    station.env = station.env | lab_env | {"no_proxy": lab_env["NO_PROXY"]}
                    cmd = [*net.exec_prefix(ns), *warmd_argv(station.config, "prefetch", project, "--json")]
                    proc = subprocess.run(cmd, env=station.env, capture_output=True, text=True, timeout=300)
                    assert proc.returncode == 0, proc.stderr
                    reports.append(json.loads(proc.stdout))
                    origin.settle()
                    if n == 1:
                        assert origin.wheel_gets(), "the mirror never asked the origin for the first workstation"
                        origin.reset_counters()
                    else:
                        assert origin.hits == [], "a later workstation's warm reached the origin"
                    subprocess.run([*net.exec_prefix(ns), str(uv_bin), "sync", "--offline", "--frozen"], cwd=project,
                                   env=station.env | {"UV_PROJECT_ENVIRONMENT": str(station.root / "venv")},
                                   check=True, capture_output=True, timeout=240)
                for report in reports:
                    assert all(w["state"] == "warm" and w["via"] for w in report["projects"][0]["wheels"]), report
        finally:
            origin.stop()


def test_a_wheel_a_mirror_serves_is_never_left_to_uv_s_own_download(tmp_path: Path, uv_bin: Path, uv_cache: Path,
                                                                     uv_environ: dict[str, str], nginx: Path) -> None:
    """Where uv would download the wheels itself (`downloader = "uv"`), a wheel under a mirror's origin
    still goes through warmd's engine and the mirror: uv would take it from the origin."""
    with IndexServer(cache_control=PYPI_CACHE_CONTROL, rate_limit=2 * MiB) as origin:
        ws = torch_like_set(origin, tmp_path / "wheels", "cu128", pythons=("cp311",), size=2 * MiB)
        project = locked_project(tmp_path, "proj", server=origin, ws=ws, uv=uv_bin, env=uv_environ)
        engine = Fetcher(Store(tmp_path / "store"), connections=4, timeout=10, retries=2, backoff=0.01,
                         max_backoff=0.05, trust_env=False, fast_stream=1.0)
        uv = Uv(str(uv_bin), cache_dir=uv_cache, env=uv_environ)

        def warm(mirrors: tuple[MirrorSettings, ...]) -> list:
            config = Config(variant="cu128", uv=str(uv_bin), cache_dir=uv_cache, store_dir=tmp_path / "store",
                            state_dir=tmp_path / "state", packages=OFFLINE_PACKAGES, mirrors=mirrors,
                            download=DownloadSettings(timeout=10, retries=2, downloader="uv"),
                            trusted_indexes=(origin.url + "/",))
            return list(Pipeline(config, uv=uv, fetcher=engine).warm([Project.of(project)])[0].wheels)

        origin.reset_counters()
        assert {w.state for w in warm(())} == {"warm"}
        assert origin.wheel_gets() and all(h.range is None for h in origin.wheel_gets()), "without a mirror, uv fetches"

        run_uv(uv_bin, ["cache", "clean"], cwd=tmp_path, env=uv_environ)
        with NginxMirror(nginx, tmp_path / "mirror", {host_of(origin): origin.url}) as mirror:
            origin.reset_counters()
            wheels = warm((MirrorSettings(origin.url + "/", mirror.prefix_for(host_of(origin))),))
        assert {w.state for w in wheels} == {"warm"} and all(w.via for w in wheels), wheels
        origin.settle()
        # Only the mirror's slice requests reached the origin: no whole-file GET, which is what uv sends.
        assert origin.wheel_gets() and all(h.range for h in origin.wheel_gets())
        engine.close()


def test_the_look_ahead_s_entry_hands_uv_a_wheel_with_a_mirror_configured(tmp_path: Path, uv_bin: Path,
                                                                           uv_cache: Path, uv_environ: dict[str, str]) -> None:
    """Pipeline.warm_plans (the look-ahead's way in, outside a run) with a mirror configured and the
    default limits, on a link where uv downloads the wheels itself (`downloader = "uv"`): each wheel's
    size is asked of its index (the lock has none) and confirmed before uv gets it; uv then fetches
    them, whole, and warmd's engine none of their bytes."""
    # PEP 503 pages: no sizes in the lock; a rate that lets the engine measure the link
    with IndexServer(cache_control=PYPI_CACHE_CONTROL, rate_limit=2 * MiB) as origin:
        ws = torch_like_set(origin, tmp_path / "wheels", "cu128", pythons=("cp311",), size=2 * MiB)
        project = locked_project(tmp_path, "proj", server=origin, ws=ws, uv=uv_bin, env=uv_environ)
        assert "size = " not in (project / "uv.lock").read_text()
        engine = Fetcher(Store(tmp_path / "store"), connections=4, timeout=10, retries=2, backoff=0.01,
                         max_backoff=0.05, trust_env=False, fast_stream=1.0)
        config = Config(variant="cu128", uv=str(uv_bin), cache_dir=uv_cache, store_dir=tmp_path / "store",
                        state_dir=tmp_path / "state", packages=OFFLINE_PACKAGES,
                        mirrors=(MirrorSettings("https://files.example.org/", "http://127.0.0.1:9/files/"),),
                        download=DownloadSettings(timeout=10, retries=2, downloader="uv"),
                        trusted_indexes=(origin.url + "/",))
        pipeline = Pipeline(config, uv=Uv(str(uv_bin), cache_dir=uv_cache, env=uv_environ), fetcher=engine)
        (first,) = pipeline.warm([Project.of(project)])
        assert {w.state for w in first.wheels} == {"warm"}
        run_uv(uv_bin, ["cache", "clean"], cwd=tmp_path, env=uv_environ)
        origin.reset_counters()

        (report,) = pipeline.warm_plans([pipeline.admit(pipeline.plan(Project.of(project)))])
        assert {w.state for w in report.wheels} == {"warm"}, report.wheels
        for name in ws.filenames:
            hits = origin.wheel_hits(name)
            assert [h.method for h in hits].count("HEAD") == 1, (name, hits)  # its size, asked once
            assert [h.range for h in hits if h.method == "GET"] == [None], (name, hits)  # uv's own download, whole
        pipeline.close()


def test_a_mirror_s_credentials_come_from_netrc(lab, tmp_path: Path, index_server: IndexServer, uv_bin: Path) -> None:
    """A mirror that wants a login gets the one ~/.netrc has for its host, as any index does."""
    project, _mirror, ws = lab
    home = tmp_path / "home"
    home.mkdir()
    netrc = home / ".netrc"
    with IndexServer(basic_auth=("lab", "s3cret")) as guarded:  # a mirror holding the origin's files at its paths
        for w in ws.wheels:
            guarded.add_wheel(w, "cu128")
        for w in ws.default_wheels:
            guarded.add_wheel(w, None)
        # "localhost" for the mirror, 127.0.0.1 for the origin: two netrc machines
        url = f"http://localhost:{guarded.url.rsplit(':', 1)[1]}/"
        for password, through in (("s3cret", True), ("wrong", False)):
            netrc.write_text(f"machine localhost\nlogin lab\npassword {password}\n")
            netrc.chmod(0o600)
            station = workstation(tmp_path / f"ws-{password}", uv_bin, [(index_server.url + "/", url)])
            station.env = station.env | {"HOME": str(home)}
            index_server.reset_counters()
            guarded.reset_counters()
            code, report, err = station.prefetch(project)
            assert code == 0, err
            wheels = report["projects"][0]["wheels"]
            assert all(w["state"] == "warm" for w in wheels), wheels
            if through:
                assert all(w["via"] for w in wheels) and index_server.wheel_gets() == []
                assert guarded.wheel_gets() and all(h.status in (200, 206) for h in guarded.wheel_gets())
            else:  # refused (401): the origin serves, and the report says why the mirror was passed over
                assert all(w["via"] is None and "401" in (w["mirror_error"] or "") for w in wheels), wheels
                assert index_server.wheel_gets()
