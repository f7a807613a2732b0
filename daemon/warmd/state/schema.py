"""The tables of the state database, and the migrations that bring a file any older warmd wrote up to them."""

from __future__ import annotations

import sqlite3
from typing import Callable

from ..base import SafeUrl, WarmdError


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
    # instead of measuring again; trusted for transfer.links.LINK_TTL after it was found.
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


def _v6(db: sqlite3.Connection) -> None:
    # The state holds every URL in one form, without user:password (base.urls.SafeUrl, as the
    # values come in): earlier versions kept a pin's wheel URL and the indexes as the lock wrote
    # them and redacted on reading. The file may be read by others (backups, `status --json`).
    for table, column in (("pins", "url"), ("pins", "idx"), ("skipped", "url"), ("skipped", "idx"),
                          ("headers", "url")):
        rows = db.execute(f"SELECT rowid, {column} FROM {table} WHERE {column} LIKE '%@%'").fetchall()
        for rowid, url in rows:
            db.execute(f"UPDATE {table} SET {column}=? WHERE rowid=?", (str(SafeUrl(url)), rowid))


def _v7(db: sqlite3.Connection) -> None:
    # A host's measured verdict is no longer kept across processes: no bench row showed it buying
    # anything (each run measures from an empty state), and a fast host's remembered verdict handed
    # uv files warmd had begun downloading (ARCHITECTURE.md, "Every byte once").
    db.execute("DROP TABLE IF EXISTS links")


def _v8(db: sqlite3.Connection) -> None:
    # The total cap asks the size of every pinned file, each once, on every run (State.pinned_sizes):
    # without an index that query sorted every pin, a daemon's largest cost per run at 5,000 projects.
    db.execute("CREATE INDEX IF NOT EXISTS pins_sha256_size ON pins(sha256, size)")


# Index i migrates a database at user_version i to i + 1; append, never edit.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_v1, _v2, _v3, _v4, _v5, _v6, _v7, _v8)
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
