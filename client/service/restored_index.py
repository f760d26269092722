"""Read-only view of a site daemon's results, for the trainer.

    index = RestoredIndex(state_dir)
    hit = index.lookup(path_or_sha256)   # (restored_png, provenance) or None
    if hit is None:
        reason = index.why_not(path_or_sha256)   # e.g. "quarantined: file is empty (zero bytes)"

Opens the journal read-only (never creates or changes anything), so it is safe beside a running
daemon. Paths are looked up by content (sha256), the daemon's job id.
"""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Any

from festa.client.service.journal import JOURNAL_NAME, connect, counts, row_to_job
from festa.client.service.storage import sha256_file

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class RestoredIndexError(RuntimeError):
    """The state folder holds no daemon journal."""


class RestoredIndex:
    """Look up restored images and provenance by input path or sha256."""

    def __init__(self, state_dir: str | Path) -> None:
        path = Path(state_dir) / JOURNAL_NAME
        if not path.is_file():
            raise RestoredIndexError(f"no restoration journal at {path}")
        self._conn = connect(path, readonly=True)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> RestoredIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def key(sha256_or_path: str | Path) -> str:
        """The sha256 of a path's content, or the argument itself when it already is one."""
        text = str(sha256_or_path)
        if isinstance(sha256_or_path, str) and _SHA256.match(text.lower()):
            return text.lower()
        return sha256_file(sha256_or_path)

    def _row(self, sha: str) -> sqlite3.Row | None:
        return self._conn.execute("SELECT * FROM jobs WHERE sha256 = ?", (sha,)).fetchone()

    def lookup(self, sha256_or_path: str | Path) -> tuple[Path, dict[str, Any]] | None:
        """(restored 16-bit PNG, provenance) when the input was restored, else None."""
        try:
            sha = self.key(sha256_or_path)
        except OSError:
            return None
        row = self._row(sha)
        if row is None or row["status"] != "restored":
            return None
        png, prov = Path(row["result_png"]), Path(row["result_json"])
        if not png.is_file() or not prov.is_file():
            return None
        return png, json.loads(prov.read_text())

    def why_not(self, sha256_or_path: str | Path) -> str:
        """Why `lookup` gives nothing (for the trainer's fallback log); '' when it would hit."""
        try:
            sha = self.key(sha256_or_path)
        except OSError as exc:
            return f"cannot read input: {exc.strerror or exc}"
        row = self._row(sha)
        if row is None:
            return "not submitted to the restoration service"
        job = row_to_job(row)
        if job.status == "quarantined":
            return f"quarantined: {job.reason}"
        if job.status in ("pending", "running"):
            return f"restoration {job.status}"
        if self.lookup(sha) is None:
            return "restored output missing on disk"
        return ""

    def counts(self) -> dict[str, int]:
        """{restored, pending (incl. running), quarantined} plus running and submissions."""
        return counts(self._conn)
