"""Alignment jobs, persisted in their own SQLite file so job state survives restarts."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from memory.records import utcnow
from personaagent.sqlite import SQLiteFile

JobState = Literal["queued", "running", "done", "failed"]


class AlignmentJob(BaseModel):
    id: str
    user_id: str
    state: JobState
    reason: str = Field(description="forced, feedback, import")
    created_at: datetime
    updated_at: datetime
    result: dict[str, Any] | None = None
    error: str | None = None


JOBS_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, user_id TEXT NOT NULL, state TEXT NOT NULL,
    reason TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL, result TEXT, error TEXT);
"""


class JobStore:
    def __init__(self, path: Path) -> None:
        self._db = SQLiteFile(path, JOBS_SCHEMA)
        # Jobs that were running when the process died never finished: they go back to the queue.
        self._db.execute("UPDATE jobs SET state = 'queued' WHERE state = 'running'")

    def _row(self, row: Any) -> AlignmentJob:
        return AlignmentJob(
            id=row[0], user_id=row[1], state=row[2], reason=row[3], created_at=row[4], updated_at=row[5],
            result=json.loads(row[6]) if row[6] else None, error=row[7],
        )  # fmt: skip

    def create(self, user_id: str, reason: str) -> AlignmentJob:
        now = utcnow().isoformat()
        job_id = f"align-{uuid.uuid4().hex[:16]}"
        self._db.execute(
            "INSERT INTO jobs VALUES (?, ?, 'queued', ?, ?, ?, NULL, NULL)",
            (job_id, user_id, reason, now, now),
        )
        job = self.get(job_id)
        assert job is not None
        return job

    def get(self, job_id: str) -> AlignmentJob | None:
        rows = self._db.query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return self._row(rows[0]) if rows else None

    def open_job_for(self, user_id: str) -> AlignmentJob | None:
        rows = self._db.query(
            "SELECT * FROM jobs WHERE user_id = ? AND state IN ('queued', 'running') ORDER BY created_at LIMIT 1",
            (user_id,),
        )
        return self._row(rows[0]) if rows else None

    def delete_user(self, user_id: str) -> int:
        """Erase every job of the user (their answers, truths and candidate personas live in the results)."""
        return self._db.execute("DELETE FROM jobs WHERE user_id = ?", (user_id,))

    def delete_finished_before(self, cutoff: datetime) -> int:
        """Retention: finished (done or failed) jobs last updated before `cutoff` go."""
        return self._db.execute(
            "DELETE FROM jobs WHERE state IN ('done', 'failed') AND updated_at < ?", (cutoff.isoformat(),)
        )

    def queued(self) -> list[AlignmentJob]:
        rows = self._db.query("SELECT * FROM jobs WHERE state = 'queued' ORDER BY created_at")
        return [self._row(r) for r in rows]

    def update(
        self, job_id: str, state: JobState, result: dict[str, Any] | None = None, error: str | None = None
    ) -> None:
        self._db.execute(
            "UPDATE jobs SET state = ?, updated_at = ?, result = COALESCE(?, result), error = ? WHERE id = ?",
            (state, utcnow().isoformat(), json.dumps(result) if result is not None else None, error, job_id),
        )
