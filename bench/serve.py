"""The test index server in its own process, with counters the benchmark can read.

    python bench/serve.py --dir D [--rate BPS] [--link-rate BPS] [--latency S] [--tls-dir T]

Serves every .whl under D like `python -m tests.support.index_server` (D/<variant>/*.whl on
/whl/<variant>/, files directly in D on /simple) and prints its URL as the first stdout line (https:// with --tls-dir, whose files
tests/support/tls.py wrote; clients trust them through SSL_CERT_FILE).
Then it answers one JSON line per command read from stdin (the side channel; the server's
threads never share a GIL with the process being measured):

    stats                      -> {"bytes": {filename: n}, "total": n, "gets": n,
                                   "first_get": t, "last_end": t}
    reset                      -> {"ok": true}   forget counters and the first-GET time
    set RATE LATENCY [LINK]    -> {"ok": true}   RATE bytes/s per connection, LINK bytes/s for
                                                 all connections together (0: uncapped)
    add PATH [VARIANT]         -> {"ok": true}   publish one more wheel (a release after the
                                                 project was locked), on /whl/VARIANT or /simple
    quit (or EOF)              -> stop

`first_get` is the wall-clock time (time.time()) at which the first wheel GET since the last
reset was routed: how the reaction-time row sees "fetching started"; `last_end` the time the
last wheel body finished. Together they give each side's transfer window.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support import index_server as _ix  # noqa: E402
from tests.support.tls import TlsFiles  # noqa: E402

_first_get: list[float] = []
_first_lock = threading.Lock()
_orig_wheel = _ix._Handler._wheel


def _stamped_wheel(self: _ix._Handler, wheel: object, head: bool) -> None:
    # Stamp on entry, before latency or rate limiting delay the body: the request's arrival.
    if not head:
        now = time.time()
        with _first_lock:
            if not _first_get:
                _first_get.append(now)
    _orig_wheel(self, wheel, head)


# Only this process's copy of the class is wrapped; the shared module file is untouched.
_ix._Handler._wheel = _stamped_wheel  # type: ignore[method-assign]

_last_end: list[float] = []


class _Server(_ix.IndexServer):
    """IndexServer that also notes when the last wheel body finished (end of the transfer window)."""

    def _record(self, hit: _ix.Hit) -> None:
        if hit.method == "GET" and hit.path.endswith(".whl") and hit.status in (200, 206):
            with _first_lock:
                _last_end[:] = [time.time()]
        super()._record(hit)


def _stats(server: _ix.IndexServer) -> dict:
    per: dict[str, int] = {}
    gets = 0
    for h in server.wheel_hits():
        if h.status in (200, 206):
            name = h.path.rsplit("/", 1)[-1]
            per[name] = per.get(name, 0) + h.body_bytes
            gets += h.method == "GET"
    with _first_lock:
        first = _first_get[0] if _first_get else None
        last = _last_end[0] if _last_end else None
    return {"bytes": per, "total": sum(per.values()), "gets": gets, "first_get": first, "last_end": last}


def main(argv: list[str] | None = None) -> int:
    """Serve D's wheels until stdin closes; answer commands on stdin with JSON lines."""
    ap = argparse.ArgumentParser(prog="bench/serve.py")
    ap.add_argument("--dir", required=True, type=Path)
    ap.add_argument("--rate", type=int, default=0, help="bytes/s per connection (0: uncapped)")
    ap.add_argument("--link-rate", type=int, default=0, help="bytes/s for all connections together (0: uncapped)")
    ap.add_argument("--latency", type=float, default=0.0, help="seconds before each response")
    ap.add_argument("--tls-dir", type=Path, default=None, help="serve HTTPS with the files tests.support.tls wrote")
    args = ap.parse_args(argv)
    tls = TlsFiles.in_folder(args.tls_dir) if args.tls_dir else None
    server = _Server(rate_limit=args.rate or None, link_rate=args.link_rate or None, latency=args.latency, tls=tls)
    server.start()
    root = args.dir.resolve()
    for whl in sorted(root.rglob("*.whl")):
        rel = whl.parent.relative_to(root)
        server.add_wheel(whl, None if rel == Path(".") else rel.parts[0])
    print(server.url, flush=True)
    try:
        for line in sys.stdin:
            cmd = line.split()
            if not cmd:
                continue
            if cmd[0] == "quit":
                break
            if cmd[0] == "stats":
                out: dict = _stats(server)
            elif cmd[0] == "reset":
                server.reset_counters()
                with _first_lock:
                    _first_get.clear()
                    _last_end.clear()
                out = {"ok": True}
            elif cmd[0] == "set" and len(cmd) in (3, 4):
                server.rate_limit = int(cmd[1]) or None
                server.latency = float(cmd[2])
                server.link_rate = (int(cmd[3]) if len(cmd) == 4 else 0) or None
                out = {"ok": True}
            elif cmd[0] == "add" and len(cmd) in (2, 3):
                server.add_wheel(Path(cmd[1]), cmd[2] if len(cmd) == 3 else None)
                out = {"ok": True}
            else:
                out = {"error": f"unknown command {line.strip()!r}"}
            print(json.dumps(out), flush=True)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
