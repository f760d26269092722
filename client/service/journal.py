"""The job journal: one SQLite row per distinct input (by sha256), the daemon's crash-safe memory.

A job moves pending -> running -> restored | quarantined. `running` rows found at start-up were
in flight when the daemon died; `recover` settles them from what is on disk (see daemon.py).
The journal file is shared with `RestoredIndex` readers in other processes (WAL mode).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

JOURNAL_NAME = "journal.sqlite3"
STATUSES = ("pending", "running", "restored", "quarantined")

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    sha256 TEXT PRIMARY KEY,
    source_name TEXT NOT NULL,
    origin TEXT NOT NULL,
    blob TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'restored', 'quarantined')),
    attempts INTEGER NOT NULL DEFAULT 0,
    submitted_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    result_png TEXT,
    result_json TEXT,
    quarantine_path TEXT,
    reason TEXT,
    reason_kind TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, submitted_at);
CREATE TABLE IF NOT EXISTS submissions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sha256 TEXT NOT NULL,
    source_name TEXT NOT NULL,
    origin TEXT NOT NULL,
    submitted_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS seen_files (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class Job:
    """One journal row."""

    sha256: str
    source_name: str
    origin: str
    blob: str
    status: str
    attempts: int
    submitted_at: float
    updated_at: float
    result_png: str | None
    result_json: str | None
    quarantine_path: str | None
    reason: str | None
    reason_kind: str | None

    def public(self) -> dict[str, Any]:
        """The fields an API caller may see (no internal blob path)."""
        return {
            "job_id": self.sha256,
            "sha256": self.sha256,
            "source_name": self.source_name,
            "origin": self.origin,
            "status": self.status,
            "attempts": self.attempts,
            "submitted_at": self.submitted_at,
            "updated_at": self.updated_at,
            "reason": self.reason,
            "reason_kind": self.reason_kind,
        }


def connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
    """A connection to the journal at `path`; read-only ones never create or change it."""
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)
    else:
        conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
    conn.row_factory = sqlite3.Row
    return conn


def row_to_job(row: sqlite3.Row) -> Job:
    return Job(**{k: row[k] for k in row.keys()})


class Journal:
    """Thread-safe access to the daemon's SQLite job journal in `state_dir`."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / JOURNAL_NAME
        self._conn = connect(self.path)
        self._lock = threading.Lock()
        with self._lock:
            self._conn.executescript(SCHEMA)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def submit(self, sha256: str, source_name: str, origin: str, blob: Path) -> tuple[Job, bool]:
        """Record a submission; returns (job, created). A known sha256 is not queued again."""
        now = time.time()
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO submissions (sha256, source_name, origin, submitted_at) VALUES (?,?,?,?)",
                (sha256, source_name, origin, now),
            )
            row = conn.execute("SELECT * FROM jobs WHERE sha256 = ?", (sha256,)).fetchone()
            if row is not None:
                return row_to_job(row), False
            conn.execute(
                "INSERT INTO jobs (sha256, source_name, origin, blob, status, submitted_at, updated_at)"
                " VALUES (?,?,?,?, 'pending', ?, ?)",
                (sha256, source_name, origin, str(blob), now, now),
            )
            row = conn.execute("SELECT * FROM jobs WHERE sha256 = ?", (sha256,)).fetchone()
            return row_to_job(row), True

    def seen_file(self, path: str, size: int, mtime_ns: int) -> bool:
        """True when this exact file version (path, size, mtime) was already taken in."""
        with self._lock:
            row = self._conn.execute(
                "SELECT 1 FROM seen_files WHERE path = ? AND size = ? AND mtime_ns = ?",
                (path, size, mtime_ns),
            ).fetchone()
        return row is not None

    def mark_seen(self, path: str, size: int, mtime_ns: int, sha256: str) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO seen_files (path, size, mtime_ns, sha256) VALUES (?,?,?,?)",
                (path, size, mtime_ns, sha256),
            )

    def claim(self, limit: int) -> list[Job]:
        """Move up to `limit` of the oldest pending jobs to running (attempts + 1) and return them."""
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT sha256 FROM jobs WHERE status = 'pending' ORDER BY submitted_at, sha256 LIMIT ?",
                (limit,),
            ).fetchall()
            shas = [r["sha256"] for r in rows]
            now = time.time()
            for sha in shas:
                conn.execute(
                    "UPDATE jobs SET status = 'running', attempts = attempts + 1, updated_at = ?"
                    " WHERE sha256 = ?",
                    (now, sha),
                )
            return [
                row_to_job(conn.execute("SELECT * FROM jobs WHERE sha256 = ?", (s,)).fetchone())
                for s in shas
            ]

    def finish_restored(self, sha256: str, png: Path, provenance: Path) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE jobs SET status = 'restored', result_png = ?, result_json = ?, updated_at = ?"
                " WHERE sha256 = ?",
                (str(png), str(provenance), time.time(), sha256),
            )

    def finish_quarantined(self, sha256: str, copy: Path, reason: str, kind: str) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE jobs SET status = 'quarantined', quarantine_path = ?, reason = ?,"
                " reason_kind = ?, updated_at = ? WHERE sha256 = ?",
                (str(copy), reason, kind, time.time(), sha256),
            )

    def requeue(self, sha256: str) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE jobs SET status = 'pending', updated_at = ? WHERE sha256 = ?",
                (time.time(), sha256),
            )

    def get(self, sha256: str) -> Job | None:
        with self._lock:
            row = self._conn.execute("SELECT * FROM jobs WHERE sha256 = ?", (sha256,)).fetchone()
        return None if row is None else row_to_job(row)

    def jobs(self, status: str | None = None) -> list[Job]:
        with self._lock:
            if status is None:
                rows = self._conn.execute("SELECT * FROM jobs ORDER BY submitted_at").fetchall()
            else:
                rows = self._conn.execute(
                    "SELECT * FROM jobs WHERE status = ? ORDER BY submitted_at", (status,)
                ).fetchall()
        return [row_to_job(r) for r in rows]

    def counts(self) -> dict[str, int]:
        """Jobs per status plus the number of submissions (duplicates included)."""
        return counts(self._conn, self._lock)


def counts(conn: sqlite3.Connection, lock: threading.Lock | None = None) -> dict[str, int]:
    """Jobs per status (`pending` includes `running`) and total submissions."""
    with lock or threading.Lock():
        rows = conn.execute("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status").fetchall()
        submissions = conn.execute("SELECT COUNT(*) FROM submissions").fetchone()[0]
    by_status = {s: 0 for s in STATUSES}
    by_status.update({r["status"]: r["n"] for r in rows})
    return {
        "restored": by_status["restored"],
        "pending": by_status["pending"] + by_status["running"],
        "running": by_status["running"],
        "quarantined": by_status["quarantined"],
        "submissions": int(submissions),
    }
