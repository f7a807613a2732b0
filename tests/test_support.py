"""The test infrastructure itself: synthetic wheels, the PyTorch-like index, real uv against it."""

from __future__ import annotations

import base64
import hashlib
import shutil
import ssl
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest

from concurrent.futures import ThreadPoolExecutor

from tests.support.config import write_warmd_config
from tests.support.daemon import WAIT
from tests.support.index_server import NO_STORE, IndexServer, _LinkBucket
from tests.support.projects import (
    lock_project,
    locked_project,
    make_two_build_project,
    pinned_project,
    run_uv,
    torch_like_set,
)
from tests.support.tls import TlsFiles
from tests.support.wheels import make_wheel, sha256_file

REPO = Path(__file__).resolve().parent.parent
TORCH = "torch-2.8.0+cu128-cp311-cp311-manylinux_2_28_x86_64.whl"


def _client() -> httpx.Client:
    # trust_env off: a developer's proxy variables must not see loopback test traffic
    return httpx.Client(trust_env=False, timeout=10)


def test_wheel_has_real_layout_and_record(wheel_dir: Path) -> None:
    path = make_wheel(wheel_dir, "torch", "2.8.0+cu128", "cp311-cp311-manylinux_2_28_x86_64", payload_size=10_000)
    assert path.name == TORCH
    assert path.stat().st_size > 10_000
    with zipfile.ZipFile(path) as zf:
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
        record = zf.read("torch-2.8.0+cu128.dist-info/RECORD").decode().splitlines()
        for line in record:
            name, digest, size = line.rsplit(",", 2)
            if name.endswith("RECORD"):
                continue
            data = zf.read(name)
            want = "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert (digest, int(size)) == (want, len(data)), name
        assert "Tag: cp311-cp311-manylinux_2_28_x86_64" in zf.read("torch-2.8.0+cu128.dist-info/WHEEL").decode()
    # deterministic: same arguments, same bytes; another seed, other bytes
    again = make_wheel(wheel_dir / "again", "torch", "2.8.0+cu128", "cp311-cp311-manylinux_2_28_x86_64", payload_size=10_000)
    other = make_wheel(wheel_dir / "other", "torch", "2.8.0+cu128", "cp311-cp311-manylinux_2_28_x86_64", 10_000, seed=1)
    assert sha256_file(again) == sha256_file(path) != sha256_file(other)


def test_uv_lock_and_sync_download_and_a_fresh_venv_downloads_again(
    index_server: IndexServer, wheel_dir: Path, tmp_path: Path, uv_bin: Path, uv_environ: dict[str, str]
) -> None:
    ws = torch_like_set(index_server, wheel_dir, "cu128", size=32 * 1024)
    project = pinned_project(tmp_path, "app", server=index_server, ws=ws)
    lock = lock_project(project, uv_bin, uv_environ)
    text = lock.read_text()
    assert f'registry = "{index_server.index_url("cu128")}"' in text
    assert "torch-2.8.0%2Bcu128-cp311" in text

    gpu_cp311 = [f for f in ws.filenames if "cp312" not in f]
    index_server.reset_counters()
    run_uv(uv_bin, ["sync", "--frozen"], cwd=project, env=uv_environ)
    for name in gpu_cp311:
        assert [h.status for h in index_server.wheel_gets(name)] == [200], name
    assert index_server.wheel_gets(ws.default_wheels[0].name)  # filelock, from the PyPI-like index

    # The baseline warmd exists for: no-store wheels are not kept, so a fresh venv downloads them
    # all again, while the PyPI-like (immutable) filelock comes from the cache.
    shutil.rmtree(project / ".venv")
    index_server.reset_counters()
    run_uv(uv_bin, ["sync", "--frozen"], cwd=project, env=uv_environ)
    for name in gpu_cp311:
        assert [h.status for h in index_server.wheel_gets(name)] == [200], name
    assert index_server.wheel_hits(ws.default_wheels[0].name) == []
    assert index_server.bytes_served() == sum((wheel_dir / "cu128" / n).stat().st_size for n in gpu_cp311 if n.startswith("torch")) + sum(
        (wheel_dir / "_shared" / n).stat().st_size for n in gpu_cp311 if not n.startswith("torch")
    )


def test_two_build_project_locks_both_variants(
    index_server: IndexServer, wheel_dir: Path, tmp_path: Path, uv_bin: Path, uv_environ: dict[str, str]
) -> None:
    cpu = torch_like_set(index_server, wheel_dir, "cpu", size=8 * 1024, pythons=("cp311",))
    cuda = torch_like_set(index_server, wheel_dir, "cu128", size=8 * 1024, pythons=("cp311",))
    project = make_two_build_project(
        tmp_path,
        "two",
        server=index_server,
        extras={"cpu": [cpu.requirement()], "cu128": [cuda.requirement()]},
        gpu_packages={"cpu": cpu.gpu_packages, "cu128": cuda.gpu_packages},
    )
    text = lock_project(project, uv_bin, uv_environ).read_text()
    assert 'version = "2.8.0+cpu"' in text and 'version = "2.8.0+cu128"' in text
    assert f'registry = "{index_server.index_url("cpu")}"' in text
    index_server.reset_counters()
    run_uv(uv_bin, ["sync", "--frozen", "--extra", "cu128"], cwd=project, env=uv_environ)
    got = {h.path.rsplit("/", 1)[-1] for h in index_server.wheel_gets()}
    assert TORCH in got and not any("+cpu" in n for n in got)


def test_headers_ranges_etag_and_head(index_server: IndexServer, wheel_dir: Path) -> None:
    path = make_wheel(wheel_dir, "torch", "2.8.0+cu128", "cp311-cp311-manylinux_2_28_x86_64", payload_size=5000)
    data = path.read_bytes()
    size = len(data)
    url = index_server.add_wheel(path, "cu128")
    assert "%2B" in url
    with _client() as c:
        page = c.get(index_server.index_url("cu128") + "/Torch/")  # names normalized
        assert page.status_code == 200 and f"#sha256={sha256_file(path)}" in page.text

        head = c.head(url)
        assert head.status_code == 200
        assert head.headers["cache-control"] == NO_STORE
        assert head.headers["content-length"] == str(size)
        assert head.headers["accept-ranges"] == "bytes"
        assert head.headers["etag"].startswith('"') and head.headers["last-modified"]
        etag = head.headers["etag"]

        plus = url.replace("%2B", "+")
        assert c.get(plus).content == data
        for rng, start, end in (("bytes=10-19", 10, 19), ("bytes=100-", 100, size - 1), ("bytes=-7", size - 7, size - 1)):
            r = c.get(plus, headers={"Range": rng})
            assert r.status_code == 206, rng
            assert r.headers["content-range"] == f"bytes {start}-{end}/{size}"
            assert r.content == data[start : end + 1]
        r = c.get(url, headers={"Range": f"bytes={size}-"})
        assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{size}"
        assert c.get(url, headers={"Range": "bytes=0-3", "If-Range": '"stale"'}).status_code == 200
        assert c.get(url, headers={"Range": "bytes=0-3", "If-Range": etag}).status_code == 206
        assert c.get(index_server.url + "/whl/cu128/nope-1.0-py3-none-any.whl").status_code == 404

    heads = [h for h in index_server.wheel_hits(path.name) if h.method == "HEAD"]
    assert len(heads) == 1 and heads[0].body_bytes == 0
    assert all(h.path.endswith(path.name) for h in index_server.wheel_hits(path.name))


def test_drop_after_and_status_burst(index_server: IndexServer, wheel_dir: Path) -> None:
    path = make_wheel(wheel_dir, "torch", "2.8.0+cu128", "cp311-cp311-manylinux_2_28_x86_64", payload_size=50_000)
    url = index_server.add_wheel(path, "cu128")
    index_server.faults.drop_after[path.name] = [1000]
    index_server.faults.status_burst[path.name] = [503, 429]
    index_server.faults.retry_after = "2"
    with _client() as c:
        for status in (503, 429):
            r = c.get(url)
            assert r.status_code == status and r.headers["retry-after"] == "2"
        with pytest.raises(httpx.RemoteProtocolError):
            c.get(url)
        assert c.get(url).content == path.read_bytes()  # faults are used up: whole file
    statuses = [(h.status, h.body_bytes) for h in index_server.wheel_hits(path.name)]
    assert statuses[:3] == [(503, statuses[0][1]), (429, statuses[1][1]), (200, 1000)]
    assert statuses[3] == (200, path.stat().st_size)
    assert index_server.bytes_served(path.name) == 1000 + path.stat().st_size


def test_corrupt_replace_lie_ignore_range_no_head(index_server: IndexServer, wheel_dir: Path) -> None:
    path = make_wheel(wheel_dir, "torch", "2.8.0+cu128", "cp311-cp311-manylinux_2_28_x86_64", payload_size=20_000)
    data = path.read_bytes()
    url = index_server.add_wheel(path, "cu128")
    f = index_server.faults
    with _client() as c:
        etag = c.head(url).headers["etag"]
        f.corrupt.add(path.name)
        bad = c.get(url).content
        assert len(bad) == len(data) and bad != data
        f.corrupt.clear()

        f.replace[path.name] = b"new bytes upstream"
        r = c.get(url)
        assert r.content == b"new bytes upstream" and r.headers["etag"] != etag
        f.replace.clear()

        f.ignore_range.add(path.name)
        r = c.get(url, headers={"Range": "bytes=0-9"})
        assert r.status_code == 200 and r.content == data
        f.ignore_range.clear()

        f.no_head = True
        assert c.head(url).status_code == 405
        f.no_head = False

        f.lie_length[path.name] = len(data) + 100
        with pytest.raises(httpx.RemoteProtocolError):
            c.get(url)


def test_cli_mode_serves_a_folder(tmp_path: Path) -> None:
    make_wheel(tmp_path / "cu128", "torch", "2.8.0+cu128", "cp311-cp311-manylinux_2_28_x86_64", payload_size=1000)
    make_wheel(tmp_path, "filelock", "3.18.0")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.index_server", "--dir", str(tmp_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        with _client() as c:
            assert "torch-2.8.0%2Bcu128" in c.get(f"{url}/whl/cu128/torch/").text
            assert c.get(f"{url}/simple/filelock/").status_code == 200
    finally:
        proc.terminate()
        assert proc.wait(timeout=WAIT) == 0


def test_old_uv_is_available(uv_old_bin: Path) -> None:
    out = subprocess.run([str(uv_old_bin), "--version"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("uv 0.8.2")


def test_per_index_cache_control_override_keeps_wheels(
    index_server: IndexServer, wheel_dir: Path, tmp_path: Path, uv_bin: Path, uv_environ: dict[str, str]
) -> None:
    # uv's manual fix (what warmd automates): with the override, a fresh venv needs no request
    ws = torch_like_set(index_server, wheel_dir, "cu128", size=8 * 1024, pythons=("cp311",))
    project = locked_project(tmp_path, "fixed", server=index_server, ws=ws, uv=uv_bin, env=uv_environ,
                             index_cache_control="max-age=365000000, immutable")
    run_uv(uv_bin, ["sync", "--frozen"], cwd=project, env=uv_environ)
    shutil.rmtree(project / ".venv")
    index_server.reset_counters()
    run_uv(uv_bin, ["sync", "--frozen"], cwd=project, env=uv_environ)
    assert index_server.wheel_hits() == []


def test_https_index_answers_a_client_that_trusts_the_run_ca_only(https_index_server: IndexServer, tls_files: TlsFiles,
                                                                  wheel_dir: Path) -> None:
    path = make_wheel(wheel_dir, "torch", "2.8.0+cu128", "cp311-cp311-manylinux_2_28_x86_64", payload_size=5000)
    url = https_index_server.add_wheel(path, "cu128")
    assert url.startswith("https://127.0.0.1:")
    data = path.read_bytes()
    trusting = ssl.create_default_context(cafile=str(tls_files.ca))
    with httpx.Client(trust_env=False, verify=trusting, timeout=10) as c:
        r = c.get(url, headers={"Range": "bytes=10-19"})
        assert r.status_code == 206 and r.content == data[10:20]
        assert r.headers["cache-control"] == NO_STORE
        assert r.http_version == "HTTP/1.1"
    assert https_index_server.refused_handshakes == 0
    with httpx.Client(trust_env=False, timeout=10) as c:  # certifi's roots: the run's CA is not among them
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            c.get(url)
    assert https_index_server.refused_handshakes == 1
    assert [h.status for h in https_index_server.wheel_hits(path.name)] == [206]


def test_link_rate_is_one_budget_for_every_connection() -> None:
    """The shared cap books every piece, whichever connection sends it, on one timeline."""
    bucket = _LinkBucket()
    with ThreadPoolExecutor(4) as pool:  # four connections, one piece each
        dues = sorted(pool.map(lambda _: bucket.reserve(1000, rate=1000), range(4)))
    steps = [b - a for a, b in zip(dues, dues[1:])]
    assert steps == pytest.approx([1.0, 1.0, 1.0])  # a second of link each: no connection gets its own budget


def test_link_rate_serves_parallel_ranges_intact(wheel_dir: Path) -> None:
    path = make_wheel(wheel_dir, "torch", "2.8.0+cu128", "cp311-cp311-manylinux_2_28_x86_64", payload_size=512 * 1024)
    data = path.read_bytes()
    half = len(data) // 2
    with IndexServer(link_rate=8 * 1024 * 1024) as server:
        url = server.add_wheel(path, "cu128")

        def get(rng: tuple[int, int]) -> bytes:
            with _client() as c:
                return c.get(url, headers={"Range": f"bytes={rng[0]}-{rng[1]}"}).content

        with ThreadPoolExecutor(2) as pool:
            parts = list(pool.map(get, [(0, half - 1), (half, len(data) - 1)]))
        assert b"".join(parts) == data
        assert len({h.conn for h in server.wheel_gets(path.name)}) == 2


def test_only_a_server_started_vouched_is_named_in_the_configs_of_a_test(tmp_path: Path,
                                                                          index_server: IndexServer) -> None:
    """The `index_server` fixture's and a server started with `vouched=True` are named in the
    `trusted-indexes` of configs written before or after they start; one a test starts as a
    stranger's never is (test_private_network rests on that), and a config rewritten for a new lab
    index is replaced whole (a daemon re-reading it never sees half a file)."""
    cfg = write_warmd_config(tmp_path, "uv", tmp_path / "cache", packages=["torch"])
    assert f'"{index_server.url}/"' in cfg.read_text()
    with IndexServer() as stranger:
        (tmp_path / "later").mkdir()
        later = write_warmd_config(tmp_path / "later", "uv", tmp_path / "cache", packages=["torch"])
        assert stranger.url not in cfg.read_text() and stranger.url not in later.read_text()
        inode = cfg.stat().st_ino
        with IndexServer(vouched=True) as lab:
            assert f'"{lab.url}/"' in cfg.read_text() and f'"{lab.url}/"' in later.read_text()
            assert stranger.url not in cfg.read_text()
            assert cfg.stat().st_ino != inode  # renamed into place, not written over
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary file left
