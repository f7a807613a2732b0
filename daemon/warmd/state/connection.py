"""One SQLite connection that threads share and other processes read beside (WAL); the transactions writes run in."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from .schema import migrate


class Connection:
    """One connection to the state database, in WAL and migrated, shared under a lock (State's base)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        # One connection shared under a lock: writes are small, and `warmd status` reads
        # from its own process through WAL without blocking us.
        self._db = sqlite3.connect(path, timeout=10.0, check_same_thread=False, isolation_level=None)
        try:
            self._db.execute("PRAGMA busy_timeout = 10000")
            _wal(self._db)
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.execute("PRAGMA foreign_keys = ON")
            migrate(self._db)
        except BaseException:
            self._db.close()
            raise

    def close(self, *, wait: bool = True) -> None:
        """Close the connection; `wait=False` lets the process end before SQLite's last checkpoint has.

        The last connection's close copies the WAL into the database and fsyncs both. After an
        import that wrote gigabytes into uv's cache, an fsync waits for the filesystem to write
        them back first (0.5-0.7 s measured at the end of a torch-sized `prefetch`, longer than
        the rest of its tail). Every transaction is in the WAL already (synchronous = NORMAL): a
        process that ends mid-checkpoint loses none of them, and the next open finishes it.
        """
        if wait:
            with self._lock:
                self._db.close()
            return

        def close() -> None:
            with self._lock:
                self._db.close()

        threading.Thread(target=close, name="warmd-state-close", daemon=True).start()

    @property
    def schema_version(self) -> int:
        """The schema version of the open database."""
        with self._lock:
            return self._db.execute("PRAGMA user_version").fetchone()[0]

    def _tx(self) -> _Tx:
        return _Tx(self)


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT under the State's lock; ROLLBACK on error."""

    def __init__(self, state: Connection) -> None:
        self.state = state

    def __enter__(self) -> sqlite3.Connection:
        self.state._lock.acquire()
        try:
            self.state._db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.state._lock.release()
            raise
        return self.state._db

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            self.state._db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self.state._lock.release()


def _wal(db: sqlite3.Connection, attempts: int = 100) -> None:
    """Switch to WAL; two warmd processes opening a new state file at once can see SQLITE_BUSY here
    without the busy timeout being applied, so wait for the other one's schema and try again."""
    for attempt in range(attempts):
        try:
            db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.1)
