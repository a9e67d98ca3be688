"""Alignment jobs, persisted so job state survives restarts: in their own SQLite file (one alignment
replica), or in the shared PostgreSQL database (`store.url`, any number of replicas).

A worker takes jobs with `claim`, which hands each job to it under a lease (`lease_until`, counted in
`attempts`); the worker renews its leases while the jobs run and ends each with `finish`, which only the
lease's holder can do. A job whose worker died keeps its lease until it runs out, then any worker may
claim it again; past `max_attempts` claims it ends `failed` instead. On PostgreSQL, claimers skip the rows
another claimer has locked (`FOR UPDATE SKIP LOCKED`), so concurrent workers never take the same job and
never wait for each other. A job that runs twice (its first worker was only slow) finishes once; its
persona write is conditional on the persona version it began from, so it also writes at most once.

At most one job per user is open (queued or running): a unique index decides, so two replicas that
queue the same user together get the same job.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from abc import ABC, abstractmethod
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, Field

from memory.records import utcnow
from personaagent.settings import Settings
from personaagent.sqlite import SQLiteFile

if TYPE_CHECKING:  # psycopg is imported only where a PostgreSQL store is configured
    from personaagent.postgres import PostgresDatabase

JobState = Literal["queued", "running", "done", "failed"]
Finished = Literal["done", "failed"]


class AlignmentJob(BaseModel):
    id: str
    user_id: str
    state: JobState
    reason: str = Field(description="forced, feedback, import")
    created_at: datetime
    updated_at: datetime
    result: dict[str, Any] | None = None
    error: str | None = None
    attempts: int = Field(0, description="times a worker took the job (more than 1: a worker died on it)")


def new_worker_id() -> str:
    """A name for one scheduler: host, process and a random part (two schedulers in one process differ)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _new_job_id() -> str:
    return f"align-{uuid.uuid4().hex[:16]}"


def _out_of_attempts(attempts: int) -> str:
    return f"its worker stopped before finishing it, {attempts} times (store.job_max_attempts)"


class JobQueue(Protocol):
    """What the scheduler needs from the job store (both backends)."""

    lease_s: float

    def create(self, user_id: str, reason: str) -> AlignmentJob: ...
    def open_or_create(self, user_id: str, reason: str) -> tuple[AlignmentJob, bool]: ...
    def get(self, job_id: str) -> AlignmentJob | None: ...
    def open_job_for(self, user_id: str) -> AlignmentJob | None: ...
    def queued(self) -> list[AlignmentJob]: ...
    def claim(self, worker: str, limit: int) -> list[AlignmentJob]: ...
    def renew(self, worker: str, job_ids: list[str]) -> int: ...
    def finish(
        self,
        job_id: str,
        worker: str,
        state: Finished,
        result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> bool: ...
    def delete_user(self, user_id: str) -> int: ...
    def delete_finished_before(self, cutoff: datetime) -> int: ...
    def close(self) -> None: ...


JOBS_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, user_id TEXT NOT NULL, state TEXT NOT NULL,
    reason TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL, result TEXT, error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0, worker TEXT, lease_until TEXT);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_open_per_user ON jobs(user_id) WHERE state IN ('queued', 'running');
"""
_COLUMNS = "id, user_id, state, reason, created_at, updated_at, result, error, attempts"


def _job(row: Any) -> AlignmentJob:
    """A row of `_COLUMNS` (a sqlite3.Row or a psycopg dict row: both index by name)."""
    result = row["result"]
    return AlignmentJob(
        id=row["id"], user_id=row["user_id"], state=row["state"], reason=row["reason"],
        created_at=row["created_at"], updated_at=row["updated_at"],
        result=json.loads(result) if isinstance(result, str) else result, error=row["error"],
        attempts=row["attempts"],
    )  # fmt: skip


class SQLJobQueueBase(ABC):
    """The `JobQueue` methods that read and write alike on SQLite and PostgreSQL: each query written once,
    with `?` placeholders (`self._db.sql` turns them into the database's own). Queueing, claiming and
    leases stay with each backend: they are where one SQLite connection and many PostgreSQL replicas
    differ."""

    _db: SQLiteFile | PostgresDatabase
    lease_s: float
    max_attempts: int

    @abstractmethod
    def _now(self) -> tuple[str, tuple[Any, ...]]:
        """The SQL value of the current time, and its parameters (whose clock: see each backend)."""

    @staticmethod
    @abstractmethod
    def _to_json(value: dict[str, Any]) -> Any: ...

    @staticmethod
    def _ts(value: datetime) -> Any:
        """A timestamp as a parameter."""
        return value

    def get(self, job_id: str) -> AlignmentJob | None:
        rows = self._db.query(self._db.sql(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?"), (job_id,))
        return _job(rows[0]) if rows else None

    def open_job_for(self, user_id: str) -> AlignmentJob | None:
        rows = self._db.query(
            self._db.sql(
                f"SELECT {_COLUMNS} FROM jobs WHERE user_id = ? AND state IN ('queued', 'running')"
                " ORDER BY created_at LIMIT 1"
            ),
            (user_id,),
        )
        return _job(rows[0]) if rows else None

    def queued(self) -> list[AlignmentJob]:
        rows = self._db.query(f"SELECT {_COLUMNS} FROM jobs WHERE state = 'queued' ORDER BY created_at")
        return [_job(r) for r in rows]

    def _fail_out_of_attempts(self, conn: Any, job_id: str, attempts: int) -> None:
        """In `claim`'s transaction: the job was claimed `max_attempts` times and never finished; it fails."""
        now, at = self._now()
        conn.execute(
            self._db.sql(
                "UPDATE jobs SET state = 'failed', error = ?, worker = NULL, lease_until = NULL,"
                f" updated_at = {now} WHERE id = ?"
            ),
            (_out_of_attempts(attempts), *at, job_id),
        )

    def finish(
        self,
        job_id: str,
        worker: str,
        state: Finished,
        result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> bool:
        """End a running job held by `worker`; False (nothing written) when another worker holds it now,
        it ended already, or it is gone (its user was deleted)."""
        now, at = self._now()
        changed = self._db.execute(
            self._db.sql(
                f"UPDATE jobs SET state = ?, updated_at = {now}, result = COALESCE(?, result), error = ?,"
                " worker = NULL, lease_until = NULL WHERE id = ? AND worker = ? AND state = 'running'"
            ),
            (state, *at, self._to_json(result) if result is not None else None, error, job_id, worker),
        )
        return changed > 0

    def delete_user(self, user_id: str) -> int:
        """Erase every job of the user (their answers, truths and candidate personas live in the results)."""
        return self._db.execute(self._db.sql("DELETE FROM jobs WHERE user_id = ?"), (user_id,))

    def delete_finished_before(self, cutoff: datetime) -> int:
        """Retention: finished (done or failed) jobs last updated before `cutoff` go."""
        return self._db.execute(
            self._db.sql("DELETE FROM jobs WHERE state IN ('done', 'failed') AND updated_at < ?"),
            (self._ts(cutoff),),
        )

    def close(self) -> None:
        self._db.close()


class JobStore(SQLJobQueueBase):
    """`JobQueue` on a SQLite file: one process owns it, so a lease only matters within that process.
    Times are this process's clock, stored as ISO text."""

    _db: SQLiteFile

    def __init__(self, path: Path, lease_s: float = 60, max_attempts: int = 3) -> None:
        self._db = SQLiteFile(path, JOBS_SCHEMA)
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self._db.add_missing_columns(  # files written before 2026-12
            "jobs", {"attempts": "INTEGER NOT NULL DEFAULT 0", "worker": "TEXT", "lease_until": "TEXT"}
        )
        # Jobs that were running when the process died never finished, and no other process can be
        # running them: back to the queue now, without waiting for their leases.
        self._db.execute(
            "UPDATE jobs SET state = 'queued', worker = NULL, lease_until = NULL WHERE state = 'running'"
        )

    def _now(self) -> tuple[str, tuple[Any, ...]]:
        return "?", (utcnow().isoformat(),)

    @staticmethod
    def _to_json(value: dict[str, Any]) -> str:
        return json.dumps(value)

    @staticmethod
    def _ts(value: datetime) -> str:
        return value.isoformat()

    # Queueing, claiming and leases stay apart from PostgreSQL: the file's one connection runs each
    # transaction alone, so nothing can queue or claim in between (PostgreSQL needs the unique index, row
    # locks and SKIP LOCKED for that), and leases are on this process's clock (PostgreSQL's: the server's).

    def create(self, user_id: str, reason: str) -> AlignmentJob:
        now = utcnow().isoformat()
        job_id = _new_job_id()
        self._db.execute(
            "INSERT INTO jobs(id, user_id, state, reason, created_at, updated_at) VALUES (?, ?, 'queued', ?, ?, ?)",
            (job_id, user_id, reason, now, now),
        )
        job = self.get(job_id)
        assert job is not None
        return job

    def open_or_create(self, user_id: str, reason: str) -> tuple[AlignmentJob, bool]:
        """The user's open job, else a new queued one: (job, created)."""
        with self._db.transaction():  # the file's one connection: nothing comes between these
            existing = self.open_job_for(user_id)
            if existing is not None:
                return existing, False
            return self.create(user_id, reason), True

    def claim(self, worker: str, limit: int) -> list[AlignmentJob]:
        """Up to `limit` queued jobs (or running ones whose lease ran out), oldest first, now `running`
        under `worker`'s lease."""
        now = utcnow()
        until = (now + timedelta(seconds=self.lease_s)).isoformat()
        with self._db.transaction() as conn:
            rows = conn.execute(
                "SELECT id, attempts FROM jobs WHERE state = 'queued' OR (state = 'running' AND lease_until < ?)"
                " ORDER BY created_at LIMIT ?",
                (now.isoformat(), limit),
            ).fetchall()
            for job_id, attempts in rows:
                if attempts >= self.max_attempts:
                    self._fail_out_of_attempts(conn, job_id, attempts)
                else:
                    conn.execute(
                        "UPDATE jobs SET state = 'running', worker = ?, lease_until = ?, attempts = attempts + 1,"
                        " updated_at = ? WHERE id = ?",
                        (worker, until, now.isoformat(), job_id),
                    )
            taken = [job_id for job_id, attempts in rows if attempts < self.max_attempts]
        jobs = [self.get(job_id) for job_id in taken]
        return [job for job in jobs if job is not None]

    def renew(self, worker: str, job_ids: list[str]) -> int:
        """Extend `worker`'s leases on these running jobs; how many it still held."""
        if not job_ids:
            return 0
        until = (utcnow() + timedelta(seconds=self.lease_s)).isoformat()
        marks = ",".join("?" * len(job_ids))
        return self._db.execute(
            f"UPDATE jobs SET lease_until = ? WHERE worker = ? AND state = 'running' AND id IN ({marks})",
            (until, worker, *job_ids),
        )


# Append-only (personaagent.postgres.PostgresDatabase.migrate): a schema change is a new entry.
JOBS_MIGRATIONS: list[str] = [
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed')),
        reason TEXT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL,
        updated_at TIMESTAMPTZ NOT NULL,
        result JSON,
        error TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        worker TEXT,
        lease_until TIMESTAMPTZ
    );
    CREATE UNIQUE INDEX jobs_open_per_user ON jobs(user_id) WHERE state IN ('queued', 'running');
    CREATE INDEX jobs_claimable ON jobs(created_at) WHERE state IN ('queued', 'running');
    CREATE INDEX jobs_user ON jobs(user_id);
    """,
]


class PostgresJobStore(SQLJobQueueBase):
    """`JobQueue` in the shared PostgreSQL database: any number of schedulers claim from it. Leases are
    measured on the database's clock (`now()`), so replicas' clocks need not agree."""

    _db: PostgresDatabase

    def __init__(self, db: PostgresDatabase, lease_s: float = 60, max_attempts: int = 3) -> None:
        self._db = db
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        db.migrate("jobs", JOBS_MIGRATIONS)

    def _now(self) -> tuple[str, tuple[Any, ...]]:
        return "now()", ()

    @staticmethod
    def _to_json(value: dict[str, Any]) -> Any:
        from psycopg.types.json import Json

        return Json(value)

    # Queueing, claiming and leases stay apart from SQLite: replicas queue and claim together, so the
    # unique index decides who queues (ON CONFLICT) and claimers lock the rows they take, skipping those
    # another claimer holds (FOR UPDATE SKIP LOCKED).

    def _insert(self, user_id: str, reason: str) -> AlignmentJob | None:
        """A new queued job; None when the user has an open one already (the unique index decides)."""
        rows = self._db.query(
            "INSERT INTO jobs(id, user_id, state, reason, created_at, updated_at)"
            " VALUES (%s, %s, 'queued', %s, now(), now())"
            " ON CONFLICT (user_id) WHERE state IN ('queued', 'running') DO NOTHING"
            f" RETURNING {_COLUMNS}",
            (_new_job_id(), user_id, reason),
        )
        return _job(rows[0]) if rows else None

    def create(self, user_id: str, reason: str) -> AlignmentJob:
        job = self._insert(user_id, reason)
        if job is None:
            raise ValueError(f"user '{user_id}' has an open alignment job already")
        return job

    def open_or_create(self, user_id: str, reason: str) -> tuple[AlignmentJob, bool]:
        for _ in range(10):  # the open job may end between the refused insert and the read
            job = self._insert(user_id, reason)
            if job is not None:
                return job, True
            existing = self.open_job_for(user_id)
            if existing is not None:
                return existing, False
        raise RuntimeError(f"could not queue an alignment for user '{user_id}'")

    def claim(self, worker: str, limit: int) -> list[AlignmentJob]:
        lease = timedelta(seconds=self.lease_s)
        with self._db.transaction() as conn:
            candidates = conn.execute(
                "SELECT id, attempts FROM jobs WHERE state = 'queued' OR (state = 'running' AND lease_until"
                " < now()) ORDER BY created_at LIMIT %s FOR UPDATE SKIP LOCKED",
                (limit,),
            ).fetchall()
            spent = [r["id"] for r in candidates if r["attempts"] >= self.max_attempts]
            for row in candidates:
                if row["id"] in spent:
                    self._fail_out_of_attempts(conn, row["id"], row["attempts"])
            taken = [r["id"] for r in candidates if r["id"] not in spent]
            if not taken:
                return []
            rows = conn.execute(
                "UPDATE jobs SET state = 'running', worker = %s, lease_until = now() + %s,"
                f" attempts = attempts + 1, updated_at = now() WHERE id = ANY(%s) RETURNING {_COLUMNS}",
                (worker, lease, taken),
            ).fetchall()
        return sorted((_job(r) for r in rows), key=lambda job: job.created_at)

    def renew(self, worker: str, job_ids: list[str]) -> int:
        if not job_ids:
            return 0
        return self._db.execute(
            "UPDATE jobs SET lease_until = now() + %s WHERE worker = %s AND state = 'running' AND id = ANY(%s)",
            (timedelta(seconds=self.lease_s), worker, job_ids),
        )


def open_job_queue(settings: Settings) -> JobQueue:
    """The alignment jobs: `alignment_jobs.db` under data_dir, or the PostgreSQL database (`store.url`)."""
    store = settings.store
    if not store.postgres:
        return JobStore(
            Path(settings.data_dir) / "alignment_jobs.db", store.job_lease_s, store.job_max_attempts
        )
    from personaagent.postgres import PostgresDatabase

    db = PostgresDatabase(store, name="personaagent-alignment")
    try:
        return PostgresJobStore(db, store.job_lease_s, store.job_max_attempts)
    except BaseException:
        db.close()
        raise
