"""The lab mirror for tests: the real nginx, running the shipped contrib/nginx config in front of a
local index, on 127.0.0.1 (or an address given), with its cache, logs and pid under a folder of the test's.

The shipped file is used as it is, with its placeholders filled in (`render`); only the top-level
nginx.conf around it (pid, error log, temp paths, the user) is the harness's own.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONTRIB = REPO / "contrib" / "nginx"


def render(template: str, values: Mapping[str, str]) -> str:
    """The shipped config with each @NAME@ placeholder replaced; one left unfilled is an error."""
    for name, value in values.items():
        template = template.replace(f"@{name}@", value)
    if "@" in "".join(line.split("#", 1)[0] for line in template.splitlines()):
        raise ValueError("a placeholder of the mirror config was left unfilled")
    return template


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class NginxMirror:
    """nginx with contrib/nginx/warmd-mirror.conf, serving `origins` ({mirror path host: origin URL})."""

    def __init__(self, nginx: Path, root: Path, origins: Mapping[str, str], *, host: str = "127.0.0.1",
                 ca_file: Path | None = None, max_size: str = "1g", wrap: list[str] | None = None) -> None:
        self.nginx = nginx
        self.root = root
        self.host = host
        self.port = free_port(host) if host == "127.0.0.1" else 3142
        self.cache_dir = root / "cache"
        self.wrap = wrap or []  # a command to run nginx under, e.g. ["ip", "netns", "exec", "mirror"]
        self._proc: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)
        self.cache_dir.mkdir(exist_ok=True)
        (root / "temp").mkdir(exist_ok=True)
        origins_file = root / "origins.map"
        origins_file.write_text("".join(f"{h} {u.rstrip('/')};\n" for h, u in origins.items()))
        conf = render((CONTRIB / "warmd-mirror.conf").read_text(), {
            "LISTEN": f"{host}:{self.port}",
            "CACHE_DIR": str(self.cache_dir),
            "MAX_SIZE": max_size,
            "ORIGINS": str(origins_file),
            "CA_FILE": str(ca_file or "/etc/ssl/certs/ca-certificates.crt"),
            "RESOLVER": "127.0.0.1",
        })
        (root / "warmd-mirror.conf").write_text(conf)
        temp = root / "temp"
        user = "user root;\n" if os.geteuid() == 0 else ""  # the test's folders are root's, mode 700
        (root / "nginx.conf").write_text(
            f"{user}worker_processes 1;\npid {root / 'nginx.pid'};\nerror_log {root / 'error.log'} info;\n"
            "events { worker_connections 256; }\n"
            "http {\n"
            f"  access_log {root / 'access.log'};\n"
            f"  client_body_temp_path {temp}/body; proxy_temp_path {temp}/proxy; fastcgi_temp_path {temp}/fcgi;\n"
            f"  uwsgi_temp_path {temp}/uwsgi; scgi_temp_path {temp}/scgi;\n"
            f"  include {root / 'warmd-mirror.conf'};\n"
            "}\n")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def prefix_for(self, host: str) -> str:
        """The mirror prefix a workstation's `mirrors` entry names for the origin at `host`."""
        return f"{self.url}/{host}/"

    def check(self) -> None:
        """Raise with nginx's own words unless it accepts the config (`nginx -t`)."""
        done = subprocess.run([*self.wrap, str(self.nginx), "-t", "-p", str(self.root), "-c", str(self.root / "nginx.conf")],
                              capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"nginx -t: {done.stderr.strip()}")

    def start(self) -> NginxMirror:
        """Start nginx in the foreground as a child; return once it accepts connections."""
        self.check()
        self._proc = subprocess.Popen([*self.wrap, str(self.nginx), "-p", str(self.root), "-c", str(self.root / "nginx.conf"),
                                       "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"nginx exited {self._proc.returncode}: {self.errors()}")
            if (self.root / "nginx.pid").exists() and self._accepts():
                return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not start listening: {self.errors()}")
            time.sleep(0.05)  # polling a child's start-up: nginx has no readiness notification here

    def _accepts(self) -> bool:
        if self.wrap:  # in another network namespace: ask from there (bash's /dev/tcp, no Python guard)
            probe = [*self.wrap, "bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{self.port}"]
            return subprocess.run(probe, capture_output=True, timeout=10).returncode == 0
        try:
            socket.create_connection((self.host, self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(timeout=20)
        self._proc = None

    def errors(self) -> str:
        log = self.root / "error.log"
        return log.read_text()[-2000:] if log.exists() else ""

    def cached_files(self) -> list[Path]:
        """The files of nginx's cache (its slices), for tests that damage one as a disk would."""
        return sorted(p for p in self.cache_dir.rglob("*") if p.is_file())

    def __enter__(self) -> NginxMirror:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
