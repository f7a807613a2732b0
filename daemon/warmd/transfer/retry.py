"""Which download failures are worth another attempt, and how long to wait before it."""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass

from ..base import scrub


def retry_after(value: str | None, cap: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), capped."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), cap)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, min(when.timestamp() - time.time(), cap))


def why(exc: BaseException) -> str:
    """One line saying what failed, without credentials."""
    return scrub(str(exc)).replace("\n", " ") or type(exc).__name__


@dataclass(frozen=True)
class RetryPolicy:
    """How many attempts a range gets and the exponential backoff between them."""

    retries: int = 8
    backoff: float = 0.5
    max_backoff: float = 30.0

    def delay(self, failures: int, hint: float | None = None) -> float:
        """Seconds to wait before attempt `failures + 1`: the server's hint, else jittered backoff."""
        if hint is not None:
            return min(hint, self.max_backoff)
        ceiling = min(self.max_backoff, self.backoff * 2 ** (failures - 1))
        return random.uniform(ceiling / 2, ceiling)  # jitter: parallel connections do not retry in lockstep
