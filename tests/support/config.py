"""A warmd config for tests: isolated store, state and uv cache, the uv under test.

The lab's index servers live on 127.0.0.1, which warmd reaches only for an index the user vouched
for (`trusted-indexes`), as a user of a private index vouches for it in their config. So a config
written here names every lab index running in this process (a server started with `vouched=True`:
the `index_server` fixture's, and those a test starts so; never one a test starts as a stranger's),
also those started after it was written: each such start rewrites, atomically, the configs of the
test under way (see `refresh`).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Sequence

from tests.support import index_server

# What the tests' configs warm of a torch_like_set release (tests/support/projects.py): torch and its
# GPU companions from the variant index.
PACKAGES = ("torch", "pytorch-triton*", "nvidia-*")
# ... and filelock, its plain dependency, too: then the store holds all a `uv sync --offline` needs.
OFFLINE_PACKAGES = (*PACKAGES, "filelock")

_written: dict[Path, tuple[list[str], list[str], str]] = {}  # path -> (lines before, after, text written)
_lock = threading.Lock()


def trusted_lines(trusted: Sequence[str] | None = None) -> list[str]:
    """`trusted-indexes` naming `trusted`, or (None) every vouched lab index running now."""
    urls = index_server.vouched_urls() if trusted is None else list(trusted)
    return [f"trusted-indexes = {json.dumps([u.rstrip('/') + '/' for u in urls])}"] if urls else []


def write_warmd_config(tmp: Path, uv: Path | str, cache: Path, *, packages: Sequence[str] | None = PACKAGES,
                       variant: str = "cu128", extra: Sequence[str] = (),
                       trusted: Sequence[str] | None = None, store: Path | None = None,
                       state: Path | None = None) -> Path:
    """Write tmp/warmd.toml keeping everything warmd writes under tmp; `extra` lines go last.
    `trusted`: the trusted-indexes; None: every vouched lab index of this test, whenever it starts.
    `store`, `state`: warmd's store and state folders elsewhere than tmp/store and tmp/state.
    `packages` None: no `packages` key, warmd's default (every wheel `uv sync` installs)."""
    before = [
        f"variant = {json.dumps(variant)}",
        f"uv = {json.dumps(str(uv))}",
        f"cache-dir = {json.dumps(str(cache))}",
        f"store-dir = {json.dumps(str(store or tmp / 'store'))}",
        f"state-dir = {json.dumps(str(state or tmp / 'state'))}",
    ] + ([f"packages = {json.dumps(list(packages))}"] if packages is not None else [])
    path = tmp / "warmd.toml"
    with _lock:
        _written.pop(path, None)
        text = _text(before, list(extra), trusted)
        _write(path, text)
        if trusted is None:
            _written[path] = (before, list(extra), text)
    return path


def _text(before: list[str], after: list[str], trusted: Sequence[str] | None) -> str:
    return "\n".join([*before, *trusted_lines(trusted), *after]) + "\n"


def refresh() -> None:
    """Name the vouched lab indexes running now in every config of this test written without
    `trusted` (one the test has since rewritten itself is left as it is)."""
    with _lock:
        for path, (before, after, text) in list(_written.items()):
            try:
                if path.read_text() != text:
                    del _written[path]
                    continue
            except OSError:
                del _written[path]
                continue
            new = _text(before, after, None)
            _write(path, new)
            _written[path] = (before, after, new)


def _write(path: Path, text: str) -> None:
    """Replace the file whole: a warmd running on it (a daemon re-reading it) never reads half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def forget() -> None:
    """The test is over: its configs are rewritten no more."""
    with _lock:
        _written.clear()


index_server.on_start(refresh)
