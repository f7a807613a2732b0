"""warmd's memory in SQLite: projects, their pins, each wheel's state, outcomes, and header history.

It stores and reads; what a user is told from it is composed in status.py and outcomes.py.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..base import (
    AheadReport, FileStamp, HeaderCheck, Link, Outcome, Owner, Pin, ProjectReport, Upgrade, WarmdError, WheelFile,
    WheelReport, redact,
)

STATE_FILE = "state.sqlite3"
HEADER_HISTORY = 20  # header checks kept per URL (rows carrying a warning are always kept)
OUTCOME_HISTORY = 50  # outcome changes kept per project
LINK_ROWS_KEPT = 86400.0  # seconds a host's Link row stays (long past its use: fetch.LINK_TTL)
ACTIVITIES = ("queued", "warming")
WHEEL_STATES = ("cold", "fetching", "warm", "unproven", "failed", "skipped")


@dataclass(frozen=True)
class StoredWheel:
    """One pin of a project and what was last recorded of its wheel."""

    name: str
    version: str
    filename: str
    sha256: str
    index: str | None
    url: str  # credentials stripped
    python: str
    platform: str
    state: str  # as recorded: cold, fetching, warm, unproven, failed, skipped
    reason: str | None
    size: int | None
    bytes_downloaded: int
    bytes_reused: int
    updated_at: float | None
    since: float  # when the lock started pinning it
    warnings: tuple[str, ...] = ()  # header warnings about its file since then


@dataclass(frozen=True)
class StoredProject:
    """One project's row as recorded: the last outcome, the lock it is about, what is being done now."""

    path: Path
    lock: Path | None
    variant: str | None
    python: tuple[str, ...]
    last_run: float | None  # when the last outcome was recorded
    error: str | None
    outcome: str | None  # None: no outcome for the recorded lock (yet)
    reason: str | None
    retry: bool  # a failed outcome that waiting may mend
    failures: int  # failed outcomes in a row
    since: float | None  # when the outcome became what it is (the history)
    lock_stamp: FileStamp | None  # the uv.lock the outcome and pins are about
    uv_version: str | None  # the uv that gave the outcome
    activity: str | None  # "queued" / "warming", by activity_owner
    activity_since: float | None
    activity_owner: str | None  # owner.Owner tag of the process doing it
    retry_at: float | None  # when activity_owner retries failed work
    wheels: tuple[StoredWheel, ...]
    skipped: tuple[StoredSkip, ...] = ()  # what the last run left out, and why


@dataclass(frozen=True)
class StoredSkip:
    """A package of a project's plan that the last run did not warm, and why (model.SkippedReport),
    as it is recorded and as `warmd status` lists it."""

    name: str
    version: str
    python: str
    filename: str | None
    url: str | None  # credentials stripped
    index: str | None
    state: str  # "skipped", or for an unhashed wheel handed to uv on request: warm / failed / unproven
    reason: str


@dataclass(frozen=True)
class AheadFile:
    """A wheel the look-ahead warmed for a would-be lock: it counts against the budget until a lock adopts it."""

    sha256: str
    filename: str
    size: int | None
    project: Path  # the project whose would-be lock first wanted it
    warmed_at: float


@dataclass(frozen=True)
class Snapshot:
    """Everything `warmd status` is made from, read in one transaction."""

    projects: tuple[StoredProject, ...]
    headers: Mapping[str, HeaderCheck]  # URL -> its latest check
    good_headers: Mapping[str, HeaderCheck]  # URL -> its latest check answered with a 2xx
    ahead: Mapping[Path, AheadReport] = field(default_factory=dict)  # project -> its last look-ahead


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


def _v2(db: sqlite3.Connection) -> None:
    # Outcomes with the lock they are about, what the daemon does now (owned by a process, so a
    # killed daemon's "warming" is not believed), and a history of outcome changes.
    _script(
        db,
        """
        ALTER TABLE projects ADD COLUMN outcome TEXT;
        ALTER TABLE projects ADD COLUMN reason TEXT;
        ALTER TABLE projects ADD COLUMN retry INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE projects ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE projects ADD COLUMN lock_sha256 TEXT;
        ALTER TABLE projects ADD COLUMN lock_inode INTEGER;
        ALTER TABLE projects ADD COLUMN lock_mtime_ns INTEGER;
        ALTER TABLE projects ADD COLUMN lock_size INTEGER;
        ALTER TABLE projects ADD COLUMN uv_version TEXT;
        ALTER TABLE projects ADD COLUMN activity TEXT;
        ALTER TABLE projects ADD COLUMN activity_since REAL;
        ALTER TABLE projects ADD COLUMN activity_owner TEXT;
        ALTER TABLE projects ADD COLUMN retry_at REAL;
        CREATE TABLE history (
            id INTEGER PRIMARY KEY,
            project TEXT NOT NULL REFERENCES projects(path) ON DELETE CASCADE,
            at REAL NOT NULL,
            outcome TEXT NOT NULL,
            reason TEXT,
            lock_sha256 TEXT
        );
        CREATE INDEX history_project ON history(project, id);
        """
    )


def _v3(db: sqlite3.Connection) -> None:
    # The upgrade look-ahead: each project's last one (its upgrades and new wheels as JSON, read
    # back whole), and the wheels it warmed, which count against its budget until a lock pins them.
    _script(
        db,
        """
        CREATE TABLE ahead (
            project TEXT PRIMARY KEY REFERENCES projects(path) ON DELETE CASCADE,
            lock_sha256 TEXT,
            checked_at REAL NOT NULL,
            outcome TEXT NOT NULL,
            reason TEXT,
            upgrades TEXT NOT NULL DEFAULT '[]',
            wheels TEXT NOT NULL DEFAULT '[]'
        );
        CREATE TABLE ahead_files (
            sha256 TEXT PRIMARY KEY,
            filename TEXT NOT NULL,
            size INTEGER,
            project TEXT NOT NULL,
            warmed_at REAL NOT NULL
        );
        """
    )


def _v4(db: sqlite3.Connection) -> None:
    # What each host was found to be like (model.Link), so that the next process starts from it
    # instead of measuring again; trusted for fetch.LINK_TTL after it was found.
    _script(
        db,
        """
        CREATE TABLE links (
            host TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            cache_control TEXT,
            stream_rate REAL NOT NULL,
            found_at REAL NOT NULL
        );
        """
    )


def _v5(db: sqlite3.Connection) -> None:
    # What each project's last run skipped (no sha256, an address nobody vouched for …), with the
    # reason; and the size of each file whose bytes warmd verified against its sha256: a fact of those
    # bytes, so it holds for every lock that pins the file (a size a lock or an index only claims is
    # not kept).
    _script(
        db,
        """
        CREATE TABLE skipped (
            project TEXT NOT NULL REFERENCES projects(path) ON DELETE CASCADE,
            name TEXT NOT NULL,
            version TEXT NOT NULL,
            python TEXT NOT NULL,
            filename TEXT,
            url TEXT,
            idx TEXT,
            state TEXT NOT NULL,
            reason TEXT NOT NULL
        );
        CREATE INDEX skipped_project ON skipped(project);
        CREATE TABLE verified_sizes (
            sha256 TEXT PRIMARY KEY,
            size INTEGER NOT NULL
        );
        """
    )


# Index i migrates a database at user_version i to i + 1; append, never edit.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_v1, _v2, _v3, _v4, _v5)
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

    # --- writes -------------------------------------------------------------------------

    def record_report(self, report: ProjectReport, outcome: Outcome, *, uv_version: str | None = None) -> int:
        """Store one finished run: the project's outcome for its lock, its pins (replaced), each wheel's state.

        Clears what this process was doing for it; returns the failed outcomes in a row now.
        """
        now = time.time()
        project = str(report.project)
        me = Owner.me().tag
        with self._tx() as db:
            self._upsert_project(db, report, now)
            db.execute(
                "UPDATE projects SET last_run=?, error=?, outcome=?, reason=?, retry=?, "
                "failures=CASE WHEN ?='failed' THEN failures + 1 ELSE 0 END, uv_version=coalesce(?, uv_version), "
                "activity=CASE WHEN activity_owner=? THEN NULL ELSE activity END, "
                "retry_at=CASE WHEN activity_owner=? THEN NULL ELSE retry_at END WHERE path=?",
                (now, report.error, outcome.state, outcome.reason, int(outcome.retry), outcome.state, uv_version,
                 me, me, project),
            )
            last = db.execute("SELECT outcome, reason, lock_sha256 FROM history WHERE project=? ORDER BY id DESC "
                              "LIMIT 1", (project,)).fetchone()
            sha = report.stamp.sha256 if report.stamp else None
            if last != (outcome.state, outcome.reason, sha):
                db.execute("INSERT INTO history(project, at, outcome, reason, lock_sha256) VALUES (?,?,?,?,?)",
                           (project, now, outcome.state, outcome.reason, sha))
                db.execute("DELETE FROM history WHERE project=?1 AND id NOT IN "
                           "(SELECT id FROM history WHERE project=?1 ORDER BY id DESC LIMIT ?2)",
                           (project, OUTCOME_HISTORY))
            if not (report.error is not None and not report.wheels):
                # (a lock that cannot be read says nothing about the pins we knew)
                self._replace_pins(db, report, now)
                self._replace_skipped(db, report)
            return db.execute("SELECT failures FROM projects WHERE path=?", (project,)).fetchone()[0]

    def record_progress(self, report: ProjectReport) -> None:
        """Store the plan a run is warming now (pins, what uv has already): no outcome for it yet."""
        now = time.time()
        with self._tx() as db:
            self._upsert_project(db, report, now)
            db.execute(
                "UPDATE projects SET outcome=NULL, reason=NULL, activity='warming', "
                "activity_since=CASE WHEN activity='warming' AND activity_owner=?1 THEN activity_since ELSE ?2 END, "
                "activity_owner=?1, retry_at=NULL WHERE path=?3",
                (Owner.me().tag, now, str(report.project)),
            )
            self._replace_pins(db, report, now)

    def set_activity(self, project: Path, activity: str | None, *, retry_at: float | None = None) -> None:
        """Record what this process does for a project now ("queued", "warming", None) and when it retries."""
        if activity is not None and activity not in ACTIVITIES:
            raise ValueError(f"unknown activity {activity!r}")
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO projects(path) VALUES (?)", (str(project),))
            db.execute(
                "UPDATE projects SET activity=?1, "
                "activity_since=CASE WHEN activity IS ?1 AND activity_owner=?2 THEN activity_since ELSE ?3 END, "
                "activity_owner=?2, retry_at=?4 WHERE path=?5",
                (activity, Owner.me().tag, time.time(), retry_at, str(project)),
            )

    def clear_activity(self) -> int:
        """Forget what processes that are gone (or this one) said they were doing; returns the rows cleared."""
        me = Owner.me()
        with self._tx() as db:
            stale = []
            for path, tag in db.execute("SELECT path, activity_owner FROM projects WHERE activity_owner IS NOT NULL"):
                owner = Owner.from_tag(tag)
                if owner is None or owner == me or not owner.alive():
                    stale.append(path)
            for path in stale:
                db.execute("UPDATE projects SET activity=NULL, activity_since=NULL, activity_owner=NULL, "
                           "retry_at=NULL WHERE path=?", (path,))
            return len(stale)

    def _upsert_project(self, db: sqlite3.Connection, report: ProjectReport, now: float) -> None:
        stamp = report.stamp or FileStamp(None)
        db.execute(
            "INSERT INTO projects(path, lock, variant, python) VALUES (?,?,?,?) "
            "ON CONFLICT(path) DO UPDATE SET lock=excluded.lock, variant=excluded.variant, python=excluded.python",
            (str(report.project), str(report.lock), report.variant, ",".join(report.python)),
        )
        if report.stamp is not None:
            db.execute("UPDATE projects SET lock_sha256=?, lock_inode=?, lock_mtime_ns=?, lock_size=? WHERE path=?",
                       # "" for a lock that was not there: known to be missing, not unknown
                       (stamp.sha256 or "", stamp.inode, stamp.mtime_ns, stamp.size, str(report.project)))

    def _replace_pins(self, db: sqlite3.Connection, report: ProjectReport, now: float) -> None:
        project = str(report.project)
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

    def _replace_skipped(self, db: sqlite3.Connection, report: ProjectReport) -> None:
        project = str(report.project)
        db.execute("DELETE FROM skipped WHERE project=?", (project,))
        db.executemany(
            "INSERT INTO skipped(project, name, version, python, filename, url, idx, state, reason) "
            "VALUES (?,?,?,?,?,?,?,?,?)",
            [(project, r.skipped.name, r.skipped.version, r.skipped.python, r.skipped.filename,
              redact(r.skipped.url) if r.skipped.url else None, r.skipped.index, r.state,
              r.reason or r.skipped.reason) for r in report.skipped],
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

    def record_ahead(self, report: AheadReport) -> None:
        """Store a project's latest look-ahead (replacing the one before) and track the wheels it warmed."""
        upgrades = [{"name": u.name, "old": u.old, "new": u.new} for u in report.upgrades]
        wheels = [_wheel_json(w) for w in report.wheels]
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO projects(path) VALUES (?)", (str(report.project),))
            db.execute(
                "INSERT OR REPLACE INTO ahead(project, lock_sha256, checked_at, outcome, reason, upgrades, wheels) "
                "VALUES (?,?,?,?,?,?,?)",
                (str(report.project), report.lock_sha256, report.checked_at or time.time(), report.outcome,
                 report.reason, json.dumps(upgrades), json.dumps(wheels)),
            )
            for w in report.wheels:
                if w.state == "warm":  # the first look-ahead that warmed a file starts its age
                    db.execute("INSERT OR IGNORE INTO ahead_files(sha256, filename, size, project, warmed_at) "
                               "VALUES (?,?,?,?,?)", (w.pin.wheel.sha256, w.pin.wheel.filename, w.pin.wheel.size,
                                                      str(report.project), report.checked_at or time.time()))

    def ahead_files(self) -> list[AheadFile]:
        """Every wheel the look-ahead warmed that is still tracked, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT sha256, filename, size, project, warmed_at FROM ahead_files "
                                    "ORDER BY warmed_at, sha256").fetchall()
        return [AheadFile(r[0], r[1], r[2], Path(r[3]), r[4]) for r in rows]

    def forget_ahead_files(self, shas: Iterable[str]) -> None:
        """Stop tracking these warmed-ahead wheels (a lock adopted them, or they were dropped)."""
        with self._tx() as db:
            db.executemany("DELETE FROM ahead_files WHERE sha256=?", [(s,) for s in shas])

    def record_links(self, links: Mapping[str, Link]) -> None:
        """Keep what these hosts were found to be like (a newer Link replaces an older one)."""
        with self._tx() as db:
            db.executemany(
                "INSERT INTO links(host, kind, cache_control, stream_rate, found_at) VALUES (?,?,?,?,?) "
                "ON CONFLICT(host) DO UPDATE SET kind=excluded.kind, cache_control=excluded.cache_control, "
                "stream_rate=excluded.stream_rate, found_at=excluded.found_at WHERE excluded.found_at > links.found_at",
                [(h.lower(), l.kind, l.cache_control, l.stream_rate, l.at) for h, l in links.items()],
            )
            db.execute("DELETE FROM links WHERE found_at < ?", (time.time() - LINK_ROWS_KEPT,))

    def links(self) -> dict[str, Link]:
        """What each host was last found to be like (the engine decides how long that holds)."""
        with self._lock:
            rows = self._db.execute("SELECT host, kind, cache_control, stream_rate, found_at FROM links").fetchall()
        return {r[0]: Link(r[1], r[2], r[4], r[3]) for r in rows}

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

    def record_sizes(self, sizes: Mapping[str, int]) -> None:
        """Keep the size of files whose bytes were verified against their sha256 (sha256 -> bytes); those
        of files no project pins and no look-ahead holds any more go."""
        if not sizes:
            return
        with self._tx() as db:
            db.executemany("INSERT OR REPLACE INTO verified_sizes(sha256, size) VALUES (?,?)", list(sizes.items()))
            marks = ",".join("?" * len(sizes))
            db.execute(f"DELETE FROM verified_sizes WHERE sha256 NOT IN ({marks}) AND sha256 NOT IN "
                       "(SELECT sha256 FROM pins) AND sha256 NOT IN (SELECT sha256 FROM ahead_files)", list(sizes))

    def sizes(self, shas: Iterable[str]) -> dict[str, int]:
        """The size of each of these files, where warmd once verified its bytes (record_sizes). Never a
        size a lock or an index only claimed: a lock may pin any file by its sha256 with a wrong size,
        and an index's answer may be wrong."""
        wanted = list(dict.fromkeys(shas))
        out: dict[str, int] = {}
        with self._lock:
            for i in range(0, len(wanted), 500):
                part = wanted[i:i + 500]
                marks = ",".join("?" * len(part))
                out.update(self._db.execute(f"SELECT sha256, size FROM verified_sizes WHERE sha256 IN ({marks})",
                                            part).fetchall())
        return out

    def warm_sizes(self, project: Path) -> dict[tuple[str, str], int]:
        """(sha256, URL) -> the size on record for each pin of the project whose wheel was warm at its
        last run: the size its lock or its index gave (the wheel's, kept across runs that learned none),
        not verified by warmd (uv may have downloaded it), so for weighing only."""
        with self._lock:
            rows = self._db.execute(
                "SELECT p.sha256, p.url, coalesce(p.size, w.size) AS n FROM pins p JOIN wheels w ON "
                "w.project = p.project AND w.sha256 = p.sha256 WHERE p.project=? AND w.state='warm' AND n IS NOT NULL",
                (str(project),)).fetchall()
        return {(sha, url): size for sha, url, size in rows}

    def failures(self, project: Path) -> int:
        """The project's failed outcomes in a row (0 when the last one was not a failure)."""
        with self._lock:
            row = self._db.execute("SELECT failures FROM projects WHERE path=?", (str(project),)).fetchone()
        return row[0] if row else 0

    def wheel_state(self, project: Path, sha256: str) -> str | None:
        """The recorded state of one wheel of one project, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT state FROM wheels WHERE project=? AND sha256=?", (str(project), sha256)
            ).fetchone()
        return row[0] if row else None

    def warmed_ahead(self, sha256: str) -> bool:
        """True when the look-ahead warmed this file and no expiry has forgotten it yet."""
        with self._lock:
            row = self._db.execute("SELECT 1 FROM ahead_files WHERE sha256=?", (sha256,)).fetchone()
        return row is not None

    def history(self, project: Path) -> list[tuple[float, str, str | None, str | None]]:
        """The project's outcome changes, oldest first: (at, outcome, reason, lock sha256)."""
        with self._lock:
            return [tuple(r) for r in self._db.execute(  # type: ignore[misc]
                "SELECT at, outcome, reason, lock_sha256 FROM history WHERE project=? ORDER BY id", (str(project),))]

    def snapshot(self) -> Snapshot:
        """Every project with its pins, and the latest header checks, as of one moment."""
        with self._lock:
            self._db.execute("BEGIN")  # one snapshot for all the reads below, however busy the writer
            try:
                projects, pins, since, headers, good, warnings = self._snapshot_rows()
                skipped = self._db.execute("SELECT project, name, version, python, filename, url, idx, state, "
                                           "reason FROM skipped ORDER BY project, python, name").fetchall()
                ahead = self._db.execute("SELECT project, lock_sha256, checked_at, outcome, reason, upgrades, wheels "
                                         "FROM ahead").fetchall()
            finally:
                self._db.execute("COMMIT")
        by_project: dict[str, list[StoredWheel]] = {}
        for r in pins:
            (project, sha, py, plat, name, version, idx, url, filename, psize, pin_since,
             state, reason, down, reused, wsize, updated) = r
            safe = redact(url)
            by_project.setdefault(project, []).append(StoredWheel(
                name=name, version=version, filename=filename, sha256=sha, index=idx or None, url=safe, python=py,
                platform=plat, state=state or "cold", reason=reason, size=psize or wsize,
                bytes_downloaded=down or 0, bytes_reused=reused or 0, updated_at=updated, since=pin_since,
                # A moved file stays flagged for as long as the lock pins it: never silently re-trusted.
                warnings=tuple(w for at, w in warnings.get(safe, []) if at >= pin_since),
            ))
        left_out: dict[str, list[StoredSkip]] = {}
        for project, *row in skipped:
            left_out.setdefault(project, []).append(StoredSkip(*row))
        out = []
        for (path, lock, variant, python, last_run, error, outcome, reason, retry, failures, sha, inode, mtime,
             size, uv_version, activity, activity_since, owner, retry_at) in projects:
            out.append(StoredProject(
                path=Path(path), lock=Path(lock) if lock else None, variant=variant,
                python=tuple(p for p in (python or "").split(",") if p), last_run=last_run, error=error,
                outcome=outcome, reason=reason, retry=bool(retry), failures=failures or 0, since=since.get(path),
                lock_stamp=FileStamp(sha or None, inode or 0, mtime or 0, size or 0) if sha is not None else None,
                uv_version=uv_version, activity=activity, activity_since=activity_since, activity_owner=owner,
                retry_at=retry_at, wheels=tuple(by_project.get(path, ())), skipped=tuple(left_out.get(path, ())),
            ))
        return Snapshot(projects=tuple(out), headers={u: _header(r) for u, r in headers.items()},
                        good_headers={u: _header(r) for u, r in good.items()},
                        ahead={Path(r[0]): _ahead(r) for r in ahead})

    def _snapshot_rows(self) -> tuple[list, list, dict[str, float], dict, dict, dict[str, list[tuple[float, str]]]]:
        projects = self._db.execute(
            "SELECT path, lock, variant, python, last_run, error, outcome, reason, retry, failures, lock_sha256, "
            "lock_inode, lock_mtime_ns, lock_size, uv_version, activity, activity_since, activity_owner, retry_at "
            "FROM projects ORDER BY path"
        ).fetchall()
        pins = self._db.execute(
            "SELECT p.project, p.sha256, p.python, p.platform, p.name, p.version, p.idx, p.url, p.filename, "
            "p.size, p.since, w.state, w.reason, w.bytes_downloaded, w.bytes_reused, w.size, w.updated_at "
            "FROM pins p LEFT JOIN wheels w ON w.project=p.project AND w.sha256=p.sha256 "
            "ORDER BY p.project, p.name, p.version, p.python, p.platform"
        ).fetchall()
        # The outcome holds since its latest change (history rows are written only on a change).
        since = dict(self._db.execute("SELECT project, max(at) FROM history GROUP BY project").fetchall())
        latest = {r[1]: r for r in self._db.execute(
            "SELECT * FROM headers h WHERE id = "
            "(SELECT id FROM headers WHERE url=h.url ORDER BY checked_at DESC, id DESC LIMIT 1)")}
        good = {r[1]: r for r in self._db.execute(
            "SELECT * FROM headers h WHERE id = (SELECT id FROM headers WHERE url=h.url AND status BETWEEN 200 "
            "AND 299 ORDER BY checked_at DESC, id DESC LIMIT 1)")}
        warnings: dict[str, list[tuple[float, str]]] = {}
        for url, at, warning in self._db.execute(
            "SELECT url, checked_at, warning FROM headers WHERE warning IS NOT NULL ORDER BY checked_at"
        ):
            warnings.setdefault(url, []).append((at, warning))
        return projects, pins, since, latest, good, warnings


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


def _wheel_json(w: WheelReport) -> dict:
    p = w.pin
    return {"name": p.name, "version": p.version, "index": p.index, "url": redact(p.wheel.url),
            "filename": p.wheel.filename, "sha256": p.wheel.sha256, "size": p.wheel.size, "python": p.python,
            "platform": p.platform, "state": w.state, "reason": w.reason}


def _ahead(r: tuple) -> AheadReport:
    project, lock_sha, at, outcome, reason, upgrades, wheels = r
    try:
        ups, whs = json.loads(upgrades), json.loads(wheels)
    except ValueError:  # written by this module only; unreadable means another writer: show no detail
        ups, whs = [], []
    return AheadReport(
        project=Path(project), lock_sha256=lock_sha, outcome=outcome, reason=reason, checked_at=at,
        upgrades=tuple(Upgrade(u["name"], u.get("old"), u.get("new")) for u in ups),
        wheels=tuple(WheelReport(Pin(name=w["name"], version=w["version"], index=w.get("index"),
                                     wheel=WheelFile(url=w["url"], filename=w["filename"], sha256=w["sha256"],
                                                     size=w.get("size")),
                                     python=w["python"], platform=w["platform"]), w["state"], w.get("reason"))
                     for w in whs),
    )


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
