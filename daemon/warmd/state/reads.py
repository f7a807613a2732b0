"""What warmd reads back: answers the engine asks for as it works, `warmd status`'s snapshot in one transaction."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from ..base import AheadReport, FileStamp, HeaderCheck, Pin, SafeUrl, Upgrade, WheelFile, WheelReport
from .connection import Connection
from .records import AheadFile, Snapshot, StoredProject, StoredSkip, StoredWheel


class Reads(Connection):
    """State's reads: each under the lock, the snapshot in one transaction of its own."""

    def last_headers(self, url: str, *, successful: bool = True) -> HeaderCheck | None:
        """The latest check of `url` (by default the latest that got a 2xx answer)."""
        q = "SELECT * FROM headers WHERE url=?"
        if successful:
            q += " AND status BETWEEN 200 AND 299"
        with self._lock:
            row = self._db.execute(q + " ORDER BY checked_at DESC, id DESC LIMIT 1", (SafeUrl(url),)).fetchone()
        return _header(row) if row else None

    def index_headers(self, index: str | None, urls: Iterable[str] = ()) -> HeaderCheck | None:
        """The latest 2xx answer recorded for `urls` or any file a pin of `index` names (a header check
        or a download's first answer), whatever project pins it: what warmd has seen of that index's files."""
        wanted = {str(SafeUrl(u)) for u in urls}  # the state holds URLs without credentials
        with self._lock:
            if index is not None:
                rows = self._db.execute("SELECT url FROM pins WHERE rtrim(idx, '/') = ?", (str(SafeUrl(index)).rstrip("/"),))
                wanted |= {r[0] for r in rows}
            found = [self._db.execute(
                "SELECT * FROM headers WHERE url=? AND status BETWEEN 200 AND 299 ORDER BY checked_at DESC, id DESC "
                "LIMIT 1", (u,)).fetchone() for u in sorted(wanted)]
        answers = [_header(r) for r in found if r is not None]
        return max(answers, key=lambda h: h.checked_at) if answers else None

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

    def pinned_sizes(self) -> dict[str, int]:
        """sha256 -> size of every file a recorded pin gives a size for, each file once (however many
        projects pin it: one row per file, not per pin)."""
        # From one distinct sha256 to the next by the index (pins_sha256_size), a seek each: a GROUP BY
        # reads every pin, and this runs after every project's run, so a daemon's runs cost grew with
        # projects x pins (bench row 13: 7 % of the daemon's samples late in a 5,000-project start).
        with self._lock:
            rows = self._db.execute(
                "WITH RECURSIVE files(sha) AS ("
                " SELECT MIN(sha256) FROM pins"
                " UNION ALL SELECT (SELECT MIN(sha256) FROM pins WHERE sha256 > files.sha) FROM files WHERE sha IS NOT NULL)"
                " SELECT sha, (SELECT MAX(size) FROM pins WHERE sha256 = files.sha) FROM files WHERE sha IS NOT NULL"
            ).fetchall()
        return {r[0]: r[1] for r in rows if r[1] is not None}

    def ahead_files(self) -> list[AheadFile]:
        """Every wheel the look-ahead warmed that is still tracked, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT sha256, filename, size, project, warmed_at FROM ahead_files "
                                    "ORDER BY warmed_at, sha256").fetchall()
        return [AheadFile(r[0], r[1], r[2], Path(r[3]), r[4]) for r in rows]

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
                projects, pins, since, headers, warnings = self._snapshot_rows()
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
            safe = url  # stored without credentials (writes.py, migration 6)
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
                        ahead={Path(r[0]): _ahead(r) for r in ahead})

    def _snapshot_rows(self) -> tuple[list, list, dict[str, float], dict, dict[str, list[tuple[float, str]]]]:
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
        warnings: dict[str, list[tuple[float, str]]] = {}
        for url, at, warning in self._db.execute(
            "SELECT url, checked_at, warning FROM headers WHERE warning IS NOT NULL ORDER BY checked_at"
        ):
            warnings.setdefault(url, []).append((at, warning))
        return projects, pins, since, latest, warnings


def _header(row: tuple) -> HeaderCheck:
    _, url, status, cc, etag, lm, length, method, at, error, _warning = row
    return HeaderCheck(url=url, status=status, cache_control=cc, etag=etag, last_modified=lm,
                       content_length=length, method=method, checked_at=at, error=error)


def _ahead(r: tuple) -> AheadReport:
    project, lock_sha, at, outcome, reason, upgrades, wheels = r
    try:
        ups, whs = json.loads(upgrades), json.loads(wheels)
    except ValueError:  # written by Writes.record_ahead only; unreadable means another writer: show no detail
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
