"""sd_notify without libsystemd: how the daemon tells systemd it is ready, alive, reloading or stopping."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

from loguru import logger


class Notifier:
    """sd_notify(3) without libsystemd: datagrams to $NOTIFY_SOCKET; a no-op outside systemd."""

    def __init__(self, env: Mapping[str, str] = os.environ) -> None:
        path = env.get("NOTIFY_SOCKET", "")
        # A leading '@' names a socket in the abstract namespace (a NUL byte on the wire).
        self._address = ("\0" + path[1:]) if path.startswith("@") else path
        self._env = dict(env)
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        """True when systemd is listening for notifications."""
        return bool(self._address)

    def ready(self) -> None:
        """Tell systemd start-up is done (Type=notify waits for this)."""
        self._send("READY=1")

    def status(self, text: str) -> None:
        """Set the one-line status `systemctl status` shows."""
        self._send("STATUS=" + " ".join(text.splitlines()))

    def stopping(self) -> None:
        """Tell systemd a clean shutdown has begun."""
        self._send("STOPPING=1")

    def reloading(self) -> None:
        """Tell systemd the config is being reloaded (send ready() when done)."""
        # systemd >= 253 wants the monotonic time of the reload beside RELOADING=1.
        self._send(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def watchdog(self) -> None:
        """Pet the watchdog; call at least every watchdog_interval() seconds."""
        self._send("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings (half of WatchdogSec), or None when there is no watchdog."""
        usec = self._env.get("WATCHDOG_USEC")
        if not self.enabled or not usec:
            return None
        pid = self._env.get("WATCHDOG_PID")
        if pid and pid != str(os.getpid()):
            return None  # the watchdog belongs to another process (e.g. our parent)
        try:
            value = int(usec)
        except ValueError:
            return None
        return value / 2 / 1_000_000 if value > 0 else None

    def close(self) -> None:
        """Close the socket (further messages open a new one)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _send(self, message: str) -> None:
        if not self._address:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # A full socket queue (systemd busy, or nobody reading) must not stall the daemon.
                self._sock.setblocking(False)
            self._sock.sendto(message.encode("utf-8", "replace"), self._address)
        except OSError as exc:
            # Losing a notification must never take the daemon down; systemd's timeouts say it.
            logger.debug("sd_notify {!r} failed: {}", message.split("=", 1)[0], exc)
            self.close()
