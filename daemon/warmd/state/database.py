"""The State every warmd process opens: its writes and reads on one connection to `state_dir/state.sqlite3`.

It stores and reads; what a user is told from it is composed in status.py and outcomes.py.
"""

from __future__ import annotations

from pathlib import Path

from .reads import Reads
from .writes import Writes

STATE_FILE = "state.sqlite3"


class State(Writes, Reads):
    """Thread-safe access to the state database; many processes may open it at once."""

    @classmethod
    def open(cls, state_dir: Path) -> State:
        """Open (creating if needed, mode 0700) `state_dir/state.sqlite3`."""
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return cls(state_dir / STATE_FILE)
