"""README: fetch "honours proxies and `.netrc`". The real `warmd prefetch` through a real forwarding
proxy (requests counted at the proxy), and against an index that wants Basic credentials."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.support.cli import run_warmd
from tests.support.config import write_warmd_config
from tests.support.index_server import IndexServer
from tests.support.projects import locked_project, torch_like_set, uv_env
from tests.support.proxy import ForwardProxy



def states(proc: subprocess.CompletedProcess[str]) -> dict[str, str]:
    assert proc.stdout, proc.stderr
    return {w["filename"]: w["state"] for w in json.loads(proc.stdout)["projects"][0]["wheels"]}


def test_prefetch_goes_through_http_proxy(tmp_path: Path, index_server: IndexServer, wheel_dir: Path,
                                          uv_bin: Path, uv_cache: Path, uv_environ: dict[str, str]) -> None:
    ws = torch_like_set(index_server, wheel_dir, "cu128", size=256 * 1024)
    project = locked_project(tmp_path, "proj", server=index_server, ws=ws, uv=uv_bin, env=uv_environ)
    index_server.reset_counters()
    config = write_warmd_config(tmp_path, uv_bin, uv_cache)
    with ForwardProxy() as proxy:
        # The index is on 127.0.0.1, which the test run lets bypass proxies: take that exemption away.
        env = uv_environ | {"HTTP_PROXY": proxy.url, "http_proxy": proxy.url, "NO_PROXY": "", "no_proxy": ""}
        proc = run_warmd(config, "prefetch", project, "--json", env=env)
        assert proc.returncode == 0, proc.stderr
        assert set(states(proc).values()) == {"warm"}
        through = [h for h in proxy.hits if h.url.startswith(index_server.url) and ".whl" in h.url]
    # Every wheel request the index answered came through the proxy, and nothing went around it.
    at_index = [h for h in index_server.wheel_hits() if h.method == "GET"]
    assert at_index and len([h for h in through if h.method == "GET"]) == len(at_index)
    assert {h.status for h in through if h.method == "GET"} <= {200, 206}
    assert any(h.range for h in through), "warmd's ranged requests should be what the proxy saw"
    fetched = {h.url.rsplit("/", 1)[-1].replace("%2B", "+") for h in through if h.method == "GET"}
    assert fetched == {f for f in ws.filenames if "cp311" in f or "-py3-" in f}


def test_netrc_credentials_open_a_protected_index(tmp_path: Path, wheel_dir: Path, uv_bin: Path,
                                                  uv_cache: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    netrc = home / ".netrc"
    netrc.write_text("machine 127.0.0.1\nlogin alice\npassword s3cret\n")
    netrc.chmod(0o600)  # ~/.netrc readable by others is refused, by Python and by curl alike
    env = uv_env(uv_cache) | {"HOME": str(home)}
    with IndexServer(basic_auth=("alice", "s3cret"), vouched=True) as server:
        ws = torch_like_set(server, wheel_dir, "cu128", size=128 * 1024)
        project = locked_project(tmp_path, "proj", server=server, ws=ws, uv=uv_bin, env=env)  # uv reads ~/.netrc too
        lock = (project / "uv.lock").read_text()
        assert "s3cret" not in lock and "alice" not in lock
        config = write_warmd_config(tmp_path, uv_bin, uv_cache)

        netrc.write_text("machine 127.0.0.1\nlogin alice\npassword wrong\n")
        server.reset_counters()
        denied = run_warmd(config, "prefetch", project, "--json", env=env)
        assert denied.returncode == 1, denied.stderr
        assert set(states(denied).values()) == {"failed"}
        # refused: each wheel's size (a HEAD) or download (a GET) was answered 401, and nothing else
        assert server.wheel_hits() and {h.status for h in server.wheel_hits()} == {401}

        netrc.write_text("machine 127.0.0.1\nlogin alice\npassword s3cret\n")
        server.reset_counters()
        proc = run_warmd(config, "prefetch", project, "--json", env=env)
        assert proc.returncode == 0, proc.stderr
        assert set(states(proc).values()) == {"warm"}
        gets = [h for h in server.wheel_hits() if h.method == "GET"]
        assert gets and {h.status for h in gets} <= {200, 206}
        assert "s3cret" not in proc.stdout + proc.stderr


def test_a_token_in_the_locks_wheel_urls_logs_in_and_is_never_shown_or_stored(
        tmp_path: Path, wheel_dir: Path, uv_bin: Path, uv_cache: Path) -> None:
    """A lock whose wheel URLs carry `user:token@` (no netrc): the download logs in with them, and the
    token appears in no output of prefetch (plain, --json, -v logs), nor `warmd status --json`, nor
    the bytes of the state database."""
    home = tmp_path / "home"
    home.mkdir()
    netrc = home / ".netrc"
    netrc.write_text("machine 127.0.0.1\nlogin alice\npassword s3cr3tT0ken\n")
    netrc.chmod(0o600)
    with IndexServer(basic_auth=("alice", "s3cr3tT0ken"), vouched=True) as server:
        ws = torch_like_set(server, wheel_dir, "cu128", size=128 * 1024)
        project = locked_project(tmp_path, "proj", server=server, ws=ws, uv=uv_bin,
                                 env=uv_env(uv_cache) | {"HOME": str(home)})
        lock = project / "uv.lock"
        text = lock.read_text()
        plain = f'url = "{server.url}/'
        assert plain in text
        lock.write_text(text.replace(plain, plain.replace("://", "://alice:s3cr3tT0ken@")))
        netrc.unlink()  # the URL's own login is all warmd has
        config = write_warmd_config(tmp_path, uv_bin, uv_cache)
        env = uv_env(uv_cache) | {"HOME": str(home)}

        server.reset_counters()
        proc = run_warmd(config, "-v", "prefetch", project, "--json", env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert set(states(proc).values()) == {"warm"}
        gets = [h for h in server.wheel_hits() if h.method == "GET"]
        assert gets and all(h.authorization for h in gets) and {h.status for h in gets} <= {200, 206}
        human = run_warmd(config, "-v", "prefetch", project, env=env)  # warm already: the lines that name URLs
        status = run_warmd(config, "status", "--json", env=env)
        assert status.returncode == 0, status.stderr
        assert f"{server.url}/" in proc.stdout + status.stdout  # the URLs are shown, without their login
        for out in (proc, human, status):
            assert "s3cr3tT0ken" not in out.stdout + out.stderr
        state = (tmp_path / "state" / "state.sqlite3").read_bytes()
        assert b"127.0.0.1" in state
        kept = [p for p in (tmp_path / "state").rglob("*") if p.is_file()]
        kept += [p for p in (tmp_path / "store").rglob("*") if p.is_file() and not p.name.endswith(".whl")]
        assert tmp_path / "state" / "state.sqlite3" in kept
        for path in kept:  # the database, its journal, the store's records
            assert b"s3cr3tT0ken" not in path.read_bytes(), path
