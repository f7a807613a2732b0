"""What warmd records as it works, each in one transaction, and how much of each history it keeps."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..base import AheadReport, FileStamp, HeaderCheck, Outcome, Owner, ProjectReport, WheelReport
from .connection import Connection

HEADER_HISTORY = 20  # header checks kept per URL (rows carrying a warning are always kept)
OUTCOME_HISTORY = 50  # outcome changes kept per project
ACTIVITIES = ("queued", "warming")
WHEEL_STATES = ("cold", "fetching", "warm", "unproven", "failed", "skipped")


class Writes(Connection):
    """State's writes: runs, activity, wheel states, header checks, look-aheads, links, verified sizes."""

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
              r.skipped.url, r.skipped.index, r.state,
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
                (h.url, h.status, h.cache_control, h.etag, h.last_modified, h.content_length, h.method,
                 h.checked_at or time.time(), h.error, warning),
            )
            # History is for spotting change, not an archive: keep the recent rows and every warning.
            db.execute(
                "DELETE FROM headers WHERE url=?1 AND warning IS NULL AND id NOT IN "
                "(SELECT id FROM headers WHERE url=?1 ORDER BY checked_at DESC, id DESC LIMIT ?2)",
                (h.url, HEADER_HISTORY),
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

    def forget_ahead_files(self, shas: Iterable[str]) -> None:
        """Stop tracking these warmed-ahead wheels (a lock adopted them, or they were dropped)."""
        with self._tx() as db:
            db.executemany("DELETE FROM ahead_files WHERE sha256=?", [(s,) for s in shas])

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

    def forget_project(self, path: Path) -> None:
        """Drop a project, its pins and wheel states (header history stays: it is per URL)."""
        with self._tx() as db:
            db.execute("DELETE FROM projects WHERE path=?", (str(path),))

    def uv_cache_lost(self, reason: str) -> int:
        """uv's cache lost its files (`uv cache clean`): no project is `warm` until a run proves it
        again (its outcome is cleared, its warm wheels turn cold with `reason`); returns the projects."""
        with self._tx() as db:
            db.execute("UPDATE wheels SET state='cold', reason=?, warm_since=NULL, updated_at=? WHERE state='warm'",
                       (reason, time.time()))
            return db.execute("UPDATE projects SET outcome=NULL, reason=NULL WHERE outcome='warm'").rowcount


def _wheel_json(w: WheelReport) -> dict:
    p = w.pin
    return {"name": p.name, "version": p.version, "index": p.index, "url": p.wheel.url,
            "filename": p.wheel.filename, "sha256": p.wheel.sha256, "size": p.wheel.size, "python": p.python,
            "platform": p.platform, "state": w.state, "reason": w.reason}
