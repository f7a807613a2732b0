"""Header checks against the local PyTorch-like index: verdicts, HEAD fallback, moved files."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.support.index_server import NO_STORE, IndexServer
from tests.support.wheels import make_wheel
from warmd.transfer import check_pins, check_url, compare
from warmd.uv import cache_verdict, is_immutable_host
from warmd.base import Pin, WheelFile, redact


@pytest.fixture
def client() -> httpx.Client:
    with httpx.Client(trust_env=False, timeout=10) as c:  # a developer's proxy must not see loopback
        yield c


def _wheel(server: IndexServer, wheel_dir: Path, name: str = "torch") -> tuple[Path, str]:
    path = make_wheel(wheel_dir, name, "2.8.0+cu128", "cp311-cp311-manylinux_2_28_x86_64", payload_size=20_000)
    return path, server.add_wheel(path, "cu128")


def test_no_store_wheel_is_not_kept(index_server: IndexServer, wheel_dir: Path, client: httpx.Client) -> None:
    path, url = _wheel(index_server, wheel_dir)
    h = check_url(client, url)
    assert (h.status, h.method, h.error) == (200, "HEAD", None)
    assert h.cache_control == NO_STORE
    assert cache_verdict(h.cache_control) == "not kept"
    assert h.content_length == path.stat().st_size
    assert h.etag and h.last_modified
    assert [x.method for x in index_server.wheel_hits()] == ["HEAD"]
    assert index_server.bytes_served() == 0


def test_head_refused_falls_back_to_one_byte_get(index_server: IndexServer, wheel_dir: Path,
                                                 client: httpx.Client) -> None:
    path, url = _wheel(index_server, wheel_dir)
    index_server.faults.no_head = True
    h = check_url(client, url)
    assert (h.status, h.method) == (206, "GET-range")
    assert h.content_length == path.stat().st_size  # from Content-Range, not the 1-byte body
    assert h.cache_control == NO_STORE and h.etag
    hits = index_server.wheel_hits()
    assert [(x.method, x.status) for x in hits] == [("HEAD", 405), ("GET", 206)]
    assert hits[1].range == "bytes=0-0" and index_server.bytes_served() <= 1


def test_changed_etag_and_size_are_flagged(index_server: IndexServer, wheel_dir: Path,
                                           client: httpx.Client) -> None:
    path, url = _wheel(index_server, wheel_dir)
    before = check_url(client, url)
    assert compare(before, check_url(client, url)) is None  # nothing moved
    index_server.faults.replace[path.name] = b"other bytes behind the same name"
    after = check_url(client, url)
    warning = compare(before, after)
    assert warning is not None and "ETag" in warning and "size" in warning
    assert "locked hash moved" in warning
    # a failed check is no evidence of a move
    index_server.faults.status_burst[path.name] = [503]
    assert compare(before, check_url(client, url)) is None


def test_check_pins_dedupes_and_checks_each_index(index_server: IndexServer, wheel_dir: Path,
                                                  client: httpx.Client) -> None:
    path, url = _wheel(index_server, wheel_dir)
    index = index_server.index_url("cu128")
    wf = WheelFile(url=url, filename=path.name, sha256=index_server.sha256_of(path.name), size=None)
    pins = [Pin("torch", "2.8.0+cu128", index, wf, py, "x86_64-manylinux_2_28") for py in ("3.11", "3.12")]
    checks = check_pins(pins, client)
    assert [c.url for c in checks] == [url, index + "/"]
    assert all(c.status == 200 for c in checks)
    assert len(index_server.wheel_hits()) == 1


def test_credentials_never_stored(index_server: IndexServer, wheel_dir: Path, client: httpx.Client) -> None:
    _path, url = _wheel(index_server, wheel_dir)
    secret = url.replace("http://", "http://me:hunter2@")
    h = check_url(client, secret)
    assert h.status == 200 and "hunter2" not in repr(h) and h.url == url
    dead = check_url(client, "http://me:hunter2@127.0.0.1:9/x.whl")  # nothing listens on port 9
    assert dead.status is None and dead.error and "hunter2" not in dead.error
    assert redact("https://tok@h.example:8443/a?b=1") == "https://h.example:8443/a?b=1"


def test_verdicts_and_immutable_hosts() -> None:
    assert cache_verdict("no-cache,no-store,must-revalidate") == "not kept"
    assert cache_verdict("No-Cache") == "not kept"
    assert cache_verdict("max-age=365000000, immutable") == "kept"
    assert cache_verdict(None) == "kept"
    torch = "https://download.pytorch.org/whl/cu128/torch-2.8.0%2Bcu128-cp311-cp311-linux_x86_64.whl"
    assert is_immutable_host(torch, "0.8.14") and not is_immutable_host(torch, "0.8.13")
    assert not is_immutable_host(torch, "0.8.2")
    nv = "https://pypi.nvidia.com/nvidia-nvtx-cu12/x.whl"
    assert is_immutable_host(nv, "0.13.9") and not is_immutable_host(nv, "0.9.19")
    assert not is_immutable_host("https://mirror.example.org/whl/torch.whl", "0.13.9")
