"""The real `warmd run` process for tests: its log lines as events, and the sd_notify socket systemd would bind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from tests.support.cli import warmd_argv

WAIT = 120.0  # upper bounds for waits that end on an event; a slow CI box must not fail them


class NotifySocket:
    """The datagram socket systemd would listen on; a thread drains it as systemd does."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.seen: list[str] = []
        self._cv = threading.Condition()
        self._closed = False
        self.sock.settimeout(0.2)  # lets close() end the reader; close() alone would not wake recv()
        # A reader that falls behind fills the socket queue and blocks the sender: read at once.
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while not self._closed:
            try:
                msg = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._cv:
                self.seen.append(msg)
                self._cv.notify_all()

    def until(self, pred: Callable[[str], bool], timeout: float = WAIT) -> str:
        """Wait for a message satisfying pred (messages already received count too)."""
        with self._cv:
            found: list[str] = []
            ok = self._cv.wait_for(lambda: found.extend(m for m in self.seen if pred(m)) or found, timeout)
            if not ok:
                raise AssertionError(f"no matching sd_notify message; got {self.seen}")
            return found[0]

    def clear(self) -> None:
        with self._cv:
            self.seen.clear()

    def close(self) -> None:
        self._closed = True
        self._thread.join(5)
        self.sock.close()


class DaemonProcess:
    """`python -m warmd --config CFG run`, its stderr lines kept and awaited as they arrive."""

    def __init__(self, cfg: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(warmd_argv(cfg, "run"), env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.all: list[str] = []
        self._cv = threading.Condition()
        self._cursor = 0  # expect() reads on from here
        self._ended = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cv:
                self.all.append(line)
                self._cv.notify_all()
        with self._cv:
            self._ended = True
            self._cv.notify_all()

    def expect(self, text: str, timeout: float = WAIT) -> str:
        """The next line (after the last one expect returned) that holds `text`."""
        with self._cv:
            def found() -> bool:
                while self._cursor < len(self.all):
                    self._cursor += 1
                    if text in self.all[self._cursor - 1]:
                        return True
                return self._ended
            if not self._cv.wait_for(found, timeout) or text not in self.all[self._cursor - 1]:
                raise AssertionError(f"no log line with {text!r}; the last ones: {self.all[-20:]}")
            return self.all[self._cursor - 1]

    def mark(self) -> int:
        """A point in the log to wait from (wait_for's `since`)."""
        with self._cv:
            return len(self.all)

    def wait_for(self, texts: Iterable[str], *, since: int = 0, timeout: float = WAIT) -> list[str]:
        """Wait until every one of `texts` is in some log line from `since` on; returns those lines."""
        wanted = list(texts)
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                lines = self.all[since:]
                hits = [next((ln for ln in lines if t in ln), None) for t in wanted]
                if all(h is not None for h in hits):
                    return hits  # type: ignore[return-value]
                left = deadline - time.monotonic()
                if self._ended or left <= 0:
                    missing = [t for t, h in zip(wanted, hits) if h is None]
                    raise AssertionError(f"no log line with {missing}; the last ones: {self.all[-30:]}")
                self._cv.wait(left)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def first_header_check(cfg: Path, env: dict[str, str]) -> list[str]:
    """The lines of a `warmd run` stopped (SIGTERM, exit 0) once its start-up header check is done."""
    daemon = DaemonProcess(cfg, env)  # its first header check runs at start
    try:
        daemon.expect("checked headers of")
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(timeout=30) == 0
    finally:
        daemon.kill()
    return daemon.all


class _Made(FileSystemEventHandler):
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.event = threading.Event()

    def on_created(self, event: FileSystemEvent) -> None:
        if Path(os.fsdecode(event.src_path)).name.startswith(self.prefix):
            self.event.set()


@contextmanager
def scratch_made(folder: Path, prefix: str = "warmd-", *, recursive: bool = False) -> Iterator[threading.Event]:
    """An event set when warmd makes a scratch folder in `folder` (its TMPDIR): a uv child is about to run.
    `recursive`: also in the folders below it (uv's own `.tmp*`, in the TMPDIR warmd gives it)."""
    handler, observer = _Made(prefix), Observer()
    observer.schedule(handler, str(folder), recursive=recursive)
    observer.start()
    try:
        yield handler.event
    finally:
        observer.stop()
        observer.join(5)


def uv_children() -> list[int]:
    """The pids of this process's uv children (what /proc says now)."""
    me = str(os.getpid())
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if stat[stat.rindex(")") + 2:].split()[1] == me and cmd.endswith(b"uv"):
            found.append(int(entry.name))
    return found
