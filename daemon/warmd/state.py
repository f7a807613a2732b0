"""warmd's memory in SQLite: projects, their pins, each wheel's state, and header history."""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import WarmdError
from .headers import HeaderCheck, cache_verdict, index_page, redact
from .model import Pin, ProjectReport, WheelFile

STATE_FILE = "state.sqlite3"
HEADER_HISTORY = 20  # header checks kept per URL (rows carrying a warning are always kept)
WHEEL_STATES = ("cold", "fetching", "warm", "unproven", "failed")


@dataclass(frozen=True)
class WheelStatus:
    """One pinned wheel of a project as `warmd status` shows it."""

    name: str
    version: str
    filename: str
    sha256: str
    url: str  # credentials stripped
    python: str
    platform: str
    state: str
    reason: str | None
    size: int | None
    bytes_downloaded: int  # from the network, summed over every run
    bytes_reused: int  # taken from the store or a resumed partial in the last run
    bytes_saved: int  # what a fresh `uv sync` no longer downloads: the size of a warm wheel
    updated_at: float | None
    warnings: tuple[str, ...] = ()  # e.g. the ETag of the pinned file changed upstream


@dataclass(frozen=True)
class IndexStatus:
    """The header verdict of one index a project pins wheels from."""

    url: str
    verdict: str  # "kept", "not kept" (uv keeps nothing), or "unknown" (not checked yet)
    cache_control: str | None
    checked_at: float | None
    error: str | None


@dataclass(frozen=True)
class ProjectStatus:
    """One project as `warmd status` shows it."""

    path: Path
    lock: Path | None
    variant: str | None
    python: tuple[str, ...]
    last_check: float | None
    error: str | None
    wheels: tuple[WheelStatus, ...]
    indexes: tuple[IndexStatus, ...]
    flags: tuple[str, ...]  # one-line warnings worth the user's attention

    @property
    def bytes_saved(self) -> int:
        """Bytes of warm wheels a fresh `uv sync` will not download."""
        return sum(w.bytes_saved for w in self.wheels)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (paths as strings)."""
        d = asdict(self)
        d["path"] = str(self.path)
        d["project"] = d["path"]  # the key `warmd status` prints
        d["headers"] = [f"{i.url}: {i.verdict}" + (f" (Cache-Control: {i.cache_control})" if i.cache_control else "")
                        for i in self.indexes]
        d["lock"] = str(self.lock) if self.lock else None
        d["python"] = list(self.python)
        d["flags"] = list(self.flags)
        d["bytes_saved"] = self.bytes_saved
        for w in d["wheels"]:
            w["warnings"] = list(w["warnings"])
        return d


def _v1(db: sqlite3.Connection) -> None:
    _script(
        db,
        """
        CREATE TABLE projects (
            path TEXT PRIMARY KEY,
            lock TEXT,
            variant TEXT,
            python TEXT NOT NULL DEFAULT '',
            last_run REAL,
            error TEXT
        );
        CREATE TABLE pins (
            project TEXT NOT NULL REFERENCES projects(path) ON DELETE CASCADE,
            sha256 TEXT NOT NULL,
            python TEXT NOT NULL,
            platform TEXT NOT NULL,
            name TEXT NOT NULL,
            version TEXT NOT NULL,
            idx TEXT NOT NULL,
            url TEXT NOT NULL,
            filename TEXT NOT NULL,
            size INTEGER,
            since REAL NOT NULL,
            PRIMARY KEY (project, sha256, python, platform)
        );
        CREATE TABLE wheels (
            project TEXT NOT NULL REFERENCES projects(path) ON DELETE CASCADE,
            sha256 TEXT NOT NULL,
            state TEXT NOT NULL,
            reason TEXT,
            bytes_downloaded INTEGER NOT NULL DEFAULT 0,
            bytes_reused INTEGER NOT NULL DEFAULT 0,
            size INTEGER,
            updated_at REAL NOT NULL,
            warm_since REAL,
            PRIMARY KEY (project, sha256)
        );
        CREATE TABLE headers (
            id INTEGER PRIMARY KEY,
            url TEXT NOT NULL,
            status INTEGER,
            cache_control TEXT,
            etag TEXT,
            last_modified TEXT,
            content_length INTEGER,
            method TEXT NOT NULL,
            checked_at REAL NOT NULL,
            error TEXT,
            warning TEXT
        );
        CREATE INDEX headers_url ON headers(url, checked_at);
        """
    )


def _script(db: sqlite3.Connection, sql: str) -> None:
    # executescript() would COMMIT first; statements one by one stay inside migrate()'s transaction.
    for stmt in sql.split(";"):
        if stmt.strip():
            db.execute(stmt)


# Index i migrates a database at user_version i to i + 1; append, never edit.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_v1,)
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(db: sqlite3.Connection) -> int:
    """Bring the schema up to SCHEMA_VERSION in one transaction; returns the version found before."""
    db.execute("BEGIN IMMEDIATE")  # a second process starting now waits, then finds the work done
    try:
        found = db.execute("PRAGMA user_version").fetchone()[0]
        if found > SCHEMA_VERSION:
            raise WarmdError(
                f"state database has schema {found}, newer than this warmd understands ({SCHEMA_VERSION}); "
                "upgrade warmd or point state-dir elsewhere"
            )
        for version in range(found, SCHEMA_VERSION):
            MIGRATIONS[version](db)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return found


class State:
    """Thread-safe access to the state database; many processes may open it at once."""

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

    @classmethod
    def open(cls, state_dir: Path) -> State:
        """Open (creating if needed, mode 0700) `state_dir/state.sqlite3`."""
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return cls(state_dir / STATE_FILE)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    @property
    def schema_version(self) -> int:
        """The schema version of the open database."""
        with self._lock:
            return self._db.execute("PRAGMA user_version").fetchone()[0]

    def _tx(self) -> _Tx:
        return _Tx(self)

    # --- writes -------------------------------------------------------------------------

    def record_report(self, report: ProjectReport) -> None:
        """Store one run's outcome: the project row, its pins (replaced), each wheel's state."""
        now = time.time()
        project = str(report.project)
        with self._tx() as db:
            db.execute(
                "INSERT INTO projects(path, lock, variant, python, last_run, error) VALUES (?,?,?,?,?,?) "
                "ON CONFLICT(path) DO UPDATE SET lock=excluded.lock, variant=excluded.variant, "
                "python=excluded.python, last_run=excluded.last_run, error=excluded.error",
                (project, str(report.lock), report.variant, ",".join(report.python), now, report.error),
            )
            if report.error is not None and not report.wheels:
                return  # a lock that cannot be read says nothing about the pins we knew
            since = {
                (r[0], r[1], r[2]): r[3]
                for r in db.execute("SELECT sha256, python, platform, since FROM pins WHERE project=?", (project,))
            }
            db.execute("DELETE FROM pins WHERE project=?", (project,))
            keep = []
            for w in report.wheels:
                p = w.pin
                key = (p.wheel.sha256, p.python, p.platform)
                db.execute(
                    "INSERT OR REPLACE INTO pins VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    # "" for a wheel pinned by direct URL: the column predates them and is NOT NULL.
                    (project, *key, p.name, p.version, p.index or "", p.wheel.url, p.wheel.filename,
                     p.wheel.size, since.get(key, now)),
                )
                keep.append(p.wheel.sha256)
                size = p.wheel.size or (w.bytes_downloaded + w.bytes_reused) or None
                db.execute(
                    "INSERT INTO wheels(project, sha256, state, reason, bytes_downloaded, bytes_reused, size, "
                    "updated_at, warm_since) VALUES (?,?,?,?,?,?,?,?,?) "
                    "ON CONFLICT(project, sha256) DO UPDATE SET state=excluded.state, reason=excluded.reason, "
                    "bytes_downloaded=wheels.bytes_downloaded + excluded.bytes_downloaded, "
                    "bytes_reused=excluded.bytes_reused, "
                    "size=coalesce(excluded.size, wheels.size), updated_at=excluded.updated_at, "
                    "warm_since=CASE WHEN excluded.state='warm' THEN coalesce(wheels.warm_since, excluded.updated_at) "
                    "ELSE NULL END",
                    (project, p.wheel.sha256, w.state, w.reason, w.bytes_downloaded, w.bytes_reused, size, now,
                     now if w.state == "warm" else None),
                )
            # Wheels the lock no longer pins are forgotten with their pins.
            db.execute(
                f"DELETE FROM wheels WHERE project=? AND sha256 NOT IN ({','.join('?' * len(keep))})",
                (project, *keep),
            )

    def set_wheel_state(self, project: Path, sha256: str, state: str, reason: str | None = None) -> None:
        """Live update of one wheel's state (e.g. "fetching") between full reports."""
        if state not in WHEEL_STATES:
            raise ValueError(f"unknown wheel state {state!r}")
        now = time.time()
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO projects(path) VALUES (?)", (str(project),))
            db.execute(
                "INSERT INTO wheels(project, sha256, state, reason, updated_at) VALUES (?,?,?,?,?) "
                "ON CONFLICT(project, sha256) DO UPDATE SET state=excluded.state, reason=excluded.reason, "
                "updated_at=excluded.updated_at, "
                "warm_since=CASE WHEN excluded.state='warm' THEN coalesce(wheels.warm_since, excluded.updated_at) "
                "ELSE NULL END",
                (str(project), sha256, state, reason, now),
            )

    def record_headers(self, h: HeaderCheck, warning: str | None = None) -> None:
        """Append one header check (with the warning `compare` gave, if any) to the history."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO headers(url, status, cache_control, etag, last_modified, content_length, method, "
                "checked_at, error, warning) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (redact(h.url), h.status, h.cache_control, h.etag, h.last_modified, h.content_length, h.method,
                 h.checked_at or time.time(), h.error, warning),
            )
            # History is for spotting change, not an archive: keep the recent rows and every warning.
            db.execute(
                "DELETE FROM headers WHERE url=?1 AND warning IS NULL AND id NOT IN "
                "(SELECT id FROM headers WHERE url=?1 ORDER BY checked_at DESC, id DESC LIMIT ?2)",
                (redact(h.url), HEADER_HISTORY),
            )

    def forget_project(self, path: Path) -> None:
        """Drop a project, its pins and wheel states (header history stays: it is per URL)."""
        with self._tx() as db:
            db.execute("DELETE FROM projects WHERE path=?", (str(path),))

    # --- reads --------------------------------------------------------------------------

    def last_headers(self, url: str, *, successful: bool = True) -> HeaderCheck | None:
        """The latest check of `url` (by default the latest that got a 2xx answer)."""
        q = "SELECT * FROM headers WHERE url=?"
        if successful:
            q += " AND status BETWEEN 200 AND 299"
        with self._lock:
            row = self._db.execute(q + " ORDER BY checked_at DESC, id DESC LIMIT 1", (redact(url),)).fetchone()
        return _header(row) if row else None

    def projects(self) -> list[Path]:
        """Every project warmd has recorded."""
        with self._lock:
            return [Path(r[0]) for r in self._db.execute("SELECT path FROM projects ORDER BY path")]

    def all_pins(self) -> list[tuple[Path, Pin]]:
        """Every (project, pin) recorded."""
        with self._lock:
            rows = self._db.execute(
                "SELECT project, sha256, python, platform, name, version, idx, url, filename, size FROM pins "
                "ORDER BY project, name, version, python, platform"
            ).fetchall()
        return [(Path(r[0]), _pin(r[1:])) for r in rows]

    def wheel_state(self, project: Path, sha256: str) -> str | None:
        """The recorded state of one wheel of one project, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT state FROM wheels WHERE project=? AND sha256=?", (str(project), sha256)
            ).fetchone()
        return row[0] if row else None

    def status(self) -> list[ProjectStatus]:
        """Everything `warmd status` shows, one entry per project."""
        with self._lock:
            self._db.execute("BEGIN")  # one snapshot for all the reads below, however busy the writer
            try:
                projects, pins, latest, warnings = self._status_rows()
            finally:
                self._db.execute("COMMIT")
        by_project: dict[str, list[tuple]] = {}
        for r in pins:
            by_project.setdefault(r[0], []).append(r)
        out = []
        for path, lock, variant, python, last_run, error in projects:
            wheels = []
            index_urls: dict[str, None] = {}
            flags: list[str] = []
            for r in by_project.get(path, []):
                (_, sha, py, plat, name, version, idx, url, filename, psize, since,
                 state, reason, down, reused, wsize, updated) = r
                safe = redact(url)
                # A moved file stays flagged for as long as the lock pins it: never silently re-trusted.
                warns = tuple(w for at, w in warnings.get(safe, []) if at >= since)
                size = psize or wsize
                state = state or "cold"
                wheels.append(WheelStatus(
                    name=name, version=version, filename=filename, sha256=sha, url=safe, python=py,
                    platform=plat, state=state, reason=reason, size=size, bytes_downloaded=down or 0,
                    bytes_reused=reused or 0, bytes_saved=(size or 0) if state == "warm" else 0,
                    updated_at=updated, warnings=warns,
                ))
                for w in warns:
                    if w not in flags:
                        flags.append(w)
                if idx:
                    index_urls.setdefault(idx, None)
                if (h := latest.get(safe)) is not None and h[1] is not None and 200 <= h[1] < 300 \
                        and cache_verdict(h[2]) == "not kept":
                    note = f"{safe}: answers Cache-Control {h[2]!r}: uv keeps no copy, warmd's warm copy is the only one"
                    if note not in flags:
                        flags.append(note)
            indexes = []
            for idx in index_urls:
                page = redact(index_page(idx))
                h = latest.get(page)
                if h is None:
                    indexes.append(IndexStatus(url=redact(idx), verdict="unknown", cache_control=None,
                                               checked_at=None, error=None))
                else:
                    verdict = cache_verdict(h[2]) if h[1] is not None and 200 <= h[1] < 300 else "unknown"
                    indexes.append(IndexStatus(url=redact(idx), verdict=verdict, cache_control=h[2],
                                               checked_at=h[3], error=h[4]))
                    if verdict == "not kept":
                        flags.append(f"index {redact(idx)} answers no-store/no-cache: uv will not keep its wheels")
            out.append(ProjectStatus(
                path=Path(path), lock=Path(lock) if lock else None, variant=variant,
                python=tuple(p for p in (python or "").split(",") if p), last_check=last_run, error=error,
                wheels=tuple(wheels), indexes=tuple(indexes), flags=tuple(flags),
            ))
        return out

    def _status_rows(self) -> tuple[list, list, dict, dict[str, list[tuple[float, str]]]]:
        projects = self._db.execute(
            "SELECT path, lock, variant, python, last_run, error FROM projects ORDER BY path"
        ).fetchall()
        pins = self._db.execute(
            "SELECT p.project, p.sha256, p.python, p.platform, p.name, p.version, p.idx, p.url, p.filename, "
            "p.size, p.since, w.state, w.reason, w.bytes_downloaded, w.bytes_reused, w.size, w.updated_at "
            "FROM pins p LEFT JOIN wheels w ON w.project=p.project AND w.sha256=p.sha256 "
            "ORDER BY p.project, p.name, p.version, p.python, p.platform"
        ).fetchall()
        latest = {
            r[0]: r for r in self._db.execute(
                "SELECT url, status, cache_control, checked_at, error FROM headers h WHERE id = "
                "(SELECT id FROM headers WHERE url=h.url ORDER BY checked_at DESC, id DESC LIMIT 1)"
            )
        }
        warnings: dict[str, list[tuple[float, str]]] = {}
        for url, at, warning in self._db.execute(
            "SELECT url, checked_at, warning FROM headers WHERE warning IS NOT NULL ORDER BY checked_at"
        ):
            warnings.setdefault(url, []).append((at, warning))
        return projects, pins, latest, warnings



class _Tx:
    """BEGIN IMMEDIATE ... COMMIT under the State's lock; ROLLBACK on error."""

    def __init__(self, state: State) -> None:
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


def _header(row: tuple) -> HeaderCheck:
    _, url, status, cc, etag, lm, length, method, at, error, _warning = row
    return HeaderCheck(url=url, status=status, cache_control=cc, etag=etag, last_modified=lm,
                       content_length=length, method=method, checked_at=at, error=error)


def _pin(r: tuple) -> Pin:
    sha, py, plat, name, version, idx, url, filename, size = r
    return Pin(name=name, version=version, index=idx or None, wheel=WheelFile(url=url, filename=filename, sha256=sha,
               size=size), python=py, platform=plat)


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
