"""Where warmd's log lines go: one loguru sink on stderr (journald reads it under systemd)."""

from __future__ import annotations

import sys

from loguru import logger


def setup_logging(verbose: bool) -> None:
    """One loguru sink on stderr, one line per event, colour only on a terminal."""
    logger.remove()
    logger.add(
        sys.stderr,
        level="DEBUG" if verbose else "INFO",
        format=("{time:YYYY-MM-DD HH:mm:ss.SSS}" if verbose else "{time:YYYY-MM-DD HH:mm:ss}") + " {level: <7} {message}",
        colorize=sys.stderr.isatty(),
        backtrace=False,
        diagnose=False,  # diagnose prints local variables: URLs with credentials among them
    )
