"""What a person sees while wheels download: bars on a terminal, plain lines elsewhere."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TextIO

from ..base import ProgressEvent, human_bytes


@dataclass
class _Bar:
    filename: str
    total: int | None
    done: int = 0
    downloaded: int = 0
    started: float = field(default_factory=time.monotonic)
    state: str = "start"


class ProgressPrinter:
    """Consumes fetch ProgressEvents from any thread and draws them on `stream`."""

    def __init__(self, stream: TextIO = sys.stderr, *, tty: bool | None = None) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self._bars: dict[str, _Bar] = {}
        self._lines = 0
        self._lock = threading.Lock()

    def __call__(self, ev: ProgressEvent) -> None:
        with self._lock:
            bar = self._bars.get(ev.sha256)
            if bar is None:
                bar = self._bars[ev.sha256] = _Bar(ev.filename, ev.total)
            bar.total = ev.total or bar.total
            bar.done, bar.downloaded, bar.state = ev.done, ev.downloaded_this_run, ev.state
            if self.tty:
                self._draw()
            elif ev.state in ("start", "retry", "done", "failed"):
                self.stream.write(self._plain(bar, ev.message) + "\n")
                self.stream.flush()
            if ev.state in ("done", "failed") and self.tty:
                self._bars.pop(ev.sha256, None)
                self._lines_done(bar, ev.message)

    def _plain(self, bar: _Bar, message: str | None) -> str:
        size = human_bytes(bar.total) if bar.total else "size unknown"
        extra = f": {message}" if message else ""
        return f"{bar.state:>7} {bar.filename} ({size}){extra}"

    def _line(self, bar: _Bar) -> str:
        elapsed = max(time.monotonic() - bar.started, 1e-3)
        rate = bar.downloaded / elapsed
        if bar.total:
            pct = bar.done / bar.total
            filled = int(pct * 24)
            eta = (bar.total - bar.done) / rate if rate > 0 else float("inf")
            eta_s = f"{eta:4.0f}s" if eta != float("inf") else "   ?s"
            return (f"{bar.filename[:48]:48} [{'#' * filled}{'.' * (24 - filled)}] "
                    f"{human_bytes(bar.done):>10}/{human_bytes(bar.total):<10} {human_bytes(rate)}/s ETA {eta_s}")
        return f"{bar.filename[:48]:48} {human_bytes(bar.done):>10} {human_bytes(rate)}/s"

    def _draw(self) -> None:
        out = "\x1b[F\x1b[K" * self._lines
        lines = [self._line(b) for b in self._bars.values()]
        out += "".join(line + "\n" for line in lines)
        self._lines = len(lines)
        self.stream.write(out)
        self.stream.flush()

    def _lines_done(self, bar: _Bar, message: str | None) -> None:
        self.stream.write("\x1b[F\x1b[K" * self._lines)
        self._lines = 0
        self.stream.write(self._plain(bar, message) + "\n")
        self._draw()
