"""The one atomic-replace helper and the one credential scrubber every module uses."""

from __future__ import annotations

import os
from pathlib import Path

from warmd.base import redact, scrub, write_atomic


def test_write_atomic_replaces_keeps_mode_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "pyproject.toml"
    target.write_text("old\n")
    os.chmod(target, 0o640)
    write_atomic(target, "new\r\nline\n")
    assert target.read_bytes() == b"new\r\nline\n"  # newlines untouched, as the user wrote them
    assert target.stat().st_mode & 0o777 == 0o640
    write_atomic(target, b"\x00bytes", mode=0o600, durable=False)
    assert target.read_bytes() == b"\x00bytes" and target.stat().st_mode & 0o777 == 0o600
    fresh = tmp_path / "unit.service"
    write_atomic(fresh, "x")
    assert fresh.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pyproject.toml", "unit.service"]


def test_redact_and_scrub_drop_credentials_only() -> None:
    assert redact("https://alice:s3cret@[::1]:8443/whl/x.whl?a=1") == "https://[::1]:8443/whl/x.whl?a=1"
    assert redact("https://h.example/simple") == "https://h.example/simple"
    assert redact("http://h:notaport/x") == "http://h:notaport/x"  # nothing to strip: left alone
    assert redact("http://u:p@h:notaport/x") == "<unparseable URL>"
    text = "ConnectError for url 'https://tok@h.example/a' and http://u:p@other/b"
    assert scrub(text) == "ConnectError for url 'https://h.example/a' and http://other/b"
