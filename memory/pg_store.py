"""The `Store` on PostgreSQL (`store.url`), shared by every memory replica on every node.

Same semantics as `SQLiteStore` (read `memory.store`'s docstring): one transaction per write, committed
before the method returns; quotas, generations and version numbers decided inside the write. Where SQLite
serializes every write on its one connection, here each write that touches a user first locks that
user's row (`SELECT ... FOR UPDATE`), so the writes of one user run one at a time across all replicas (a
quota cannot be passed by two writes together, version numbers never collide, ids of one user grow in
commit order) while different users write in parallel. Embeddings are bytea (float32), read in binary.

Timestamps are `timestamptz`; an imported timestamp without a zone is taken as UTC.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import psycopg
from psycopg.rows import DictRow
from psycopg.types.json import Json

from memory.records import (
    Interaction,
    InteractionIn,
    PersonaChanged,
    PersonaVersion,
    Profile,
    Source,
    UserDeleted,
    UserRecord,
    utcnow,
)
from memory.store import UserVectors, check_quota, vector_bytes, vectors_from_bytes
from personaagent.postgres import PostgresDatabase

logger = logging.getLogger(__name__)

Conn = psycopg.Connection[DictRow]

# Append-only (personaagent.postgres.PostgresDatabase.migrate): a schema change is a new entry.
STORE_MIGRATIONS: list[str] = [
    """
    CREATE SEQUENCE user_versions;
    CREATE TABLE users (
        user_id TEXT PRIMARY KEY,
        created_at TIMESTAMPTZ NOT NULL,
        interactions_since_profile INTEGER NOT NULL DEFAULT 0,
        ground_truth_since_alignment INTEGER NOT NULL DEFAULT 0,
        version BIGINT NOT NULL DEFAULT nextval('user_versions')
    );
    CREATE TABLE interactions (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
        input TEXT NOT NULL,
        output TEXT,
        timestamp TIMESTAMPTZ NOT NULL,
        metadata JSON NOT NULL,
        completion_id TEXT,
        source TEXT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL,
        embedding BYTEA NOT NULL
    );
    CREATE INDEX interactions_user ON interactions(user_id, id);
    CREATE INDEX interactions_completion ON interactions(user_id, completion_id)
        WHERE completion_id IS NOT NULL;
    CREATE TABLE profiles (
        user_id TEXT NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
        version INTEGER NOT NULL,
        text TEXT NOT NULL,
        interactions_covered INTEGER NOT NULL,
        prompt TEXT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (user_id, version)
    );
    CREATE TABLE personas (
        user_id TEXT NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
        version INTEGER NOT NULL,
        text TEXT NOT NULL,
        reason TEXT NOT NULL,
        parent INTEGER,
        created_at TIMESTAMPTZ NOT NULL,
        details JSON NOT NULL,
        PRIMARY KEY (user_id, version)
    );
    CREATE TABLE user_generations (
        user_id TEXT PRIMARY KEY,
        generation BIGINT NOT NULL
    );
    """,
]

_INTERACTION = "id, user_id, input, output, timestamp, metadata, source, created_at"
_USER = "user_id, created_at, interactions_since_profile, ground_truth_since_alignment"


def _aware(value: datetime | None) -> datetime:
    if value is None:
        return utcnow()
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _text(value: str | None) -> str | None:
    if value is not None and "\x00" in value:  # SQLite stores it; PostgreSQL text cannot
        raise ValueError("text with a NUL character (U+0000) cannot be stored")
    return value


def _completion_id(metadata: dict[str, Any]) -> str | None:
    """The chat completion an interaction answered, kept in a column of its own: feedback finds it by an
    index, and no JSON is parsed on the server (json's ->> fails on any \u0000 anywhere in the value)."""
    value = metadata.get("completion_id")
    return value if isinstance(value, str) and "\x00" not in value else None


def _interaction(row: DictRow) -> Interaction:
    return Interaction(**row)


class PostgresStore:
    """`Store` on a PostgreSQL database (a `PostgresDatabase` pool). Thread-safe."""

    def __init__(self, db: PostgresDatabase) -> None:
        self._db = db
        db.migrate("store", STORE_MIGRATIONS)

    # -- users -------------------------------------------------------------------------------------

    @staticmethod
    def _generation(conn: Conn, user_id: str) -> int:
        row = conn.execute(
            "SELECT generation FROM user_generations WHERE user_id = %s", (user_id,)
        ).fetchone()
        return int(row["generation"]) if row else 0

    @staticmethod
    def _lock_user(conn: Conn, user_id: str) -> bool:
        """Lock the user's row to the end of the transaction (every write of the user takes it first, so
        they run one at a time); False when there is no such user."""
        row = conn.execute("SELECT 1 FROM users WHERE user_id = %s FOR UPDATE", (user_id,)).fetchone()
        return row is not None

    def _ensure_user(self, conn: Conn, user_id: str) -> int:
        """An explicit start (import, new chat): create the user if missing, lock it; its generation."""
        conn.execute(
            "INSERT INTO users(user_id, created_at) VALUES (%s, now()) ON CONFLICT (user_id) DO NOTHING",
            (user_id,),
        )
        if not self._lock_user(conn, user_id):  # deleted between the two statements: create it anew
            return self._ensure_user(conn, user_id)
        return self._generation(conn, user_id)

    def _require_user(self, conn: Conn, user_id: str, generation: int | None) -> None:
        """Any other write: the user must exist (locked now) and, given `generation`, be the incarnation
        the write's operation began with."""
        if not self._lock_user(conn, user_id) or (
            generation is not None and self._generation(conn, user_id) != generation
        ):
            raise UserDeleted(f"user '{user_id}' was deleted")

    def open_user(self, user_id: str) -> int:
        with self._db.transaction() as conn:
            return self._ensure_user(conn, user_id)

    def user_generation(self, user_id: str) -> int | None:
        rows = self._db.query(  # one statement: the row and its generation from one snapshot
            "SELECT COALESCE((SELECT g.generation FROM user_generations g WHERE g.user_id = u.user_id), 0)"
            " AS generation FROM users u WHERE u.user_id = %s",
            (user_id,),
        )
        return int(rows[0]["generation"]) if rows else None

    def user_version(self, user_id: str) -> int | None:
        rows = self._db.query("SELECT version FROM users WHERE user_id = %s", (user_id,))
        return int(rows[0]["version"]) if rows else None

    def user_vectors(self, user_id: str, after_id: int | None = None) -> UserVectors:
        with self._db.connection() as conn:
            # One snapshot for the three reads: a write committed between them is in all or in none.
            with conn.transaction(), conn.cursor(binary=True) as cur:
                cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                user = cur.execute("SELECT version FROM users WHERE user_id = %s", (user_id,)).fetchone()
                generation = self._generation(conn, user_id)
                rows = cur.execute(
                    "SELECT id, embedding FROM interactions WHERE user_id = %s AND id > %s ORDER BY id",
                    (user_id, -1 if after_id is None else after_id),
                ).fetchall()
        return UserVectors(
            version=int(user["version"]) if user else None,
            generation=generation,
            ids=np.fromiter((r["id"] for r in rows), dtype=np.int64, count=len(rows)),
            vectors=vectors_from_bytes([r["embedding"] for r in rows]),
        )

    def get_user(self, user_id: str) -> UserRecord | None:
        rows = self._db.query(f"SELECT {_USER} FROM users WHERE user_id = %s", (user_id,))
        return UserRecord(**rows[0]) if rows else None

    def ensure_user(self, user_id: str) -> UserRecord:
        with self._db.transaction() as conn:
            self._ensure_user(conn, user_id)
            row = conn.execute(f"SELECT {_USER} FROM users WHERE user_id = %s", (user_id,)).fetchone()
        assert row is not None
        return UserRecord(**row)

    def list_user_ids(self) -> list[str]:
        return [r["user_id"] for r in self._db.query("SELECT user_id FROM users ORDER BY user_id")]

    def delete_user(self, user_id: str) -> bool:
        with self._db.transaction() as conn:
            if not self._lock_user(conn, user_id):  # a write under way finishes first, then all of it goes
                return False
            for table in ("interactions", "profiles", "personas", "users"):
                conn.execute(f"DELETE FROM {table} WHERE user_id = %s", (user_id,))
            conn.execute(  # writes begun before this delete name the old generation: they will be refused
                "INSERT INTO user_generations(user_id, generation) VALUES (%s, 1) ON CONFLICT (user_id)"
                " DO UPDATE SET generation = user_generations.generation + 1",
                (user_id,),
            )
        return True

    # -- interactions ------------------------------------------------------------------------------

    def add_interactions(
        self,
        user_id: str,
        items: Sequence[InteractionIn],
        embeddings: np.ndarray,
        source: Source,
        quota: tuple[int, int] | None = None,
        generation: int | None = None,
    ) -> list[int]:
        if len(items) != len(embeddings):
            raise ValueError("one embedding per interaction")
        now = utcnow()
        rows = [
            (user_id, _text(item.input), _text(item.output), _aware(item.timestamp), Json(item.metadata),
             _completion_id(item.metadata), source, now, vector_bytes(vector))
            for item, vector in zip(items, embeddings, strict=True)
        ]  # fmt: skip
        ids: list[int] = []
        with self._db.transaction() as conn:
            if generation is None:
                self._ensure_user(conn, user_id)
            else:
                self._require_user(conn, user_id, generation)
            if quota is not None:
                held = conn.execute(
                    "SELECT COUNT(*) AS n, COALESCE(SUM(octet_length(input) + octet_length(COALESCE(output,"
                    " ''))), 0) AS size FROM interactions WHERE user_id = %s",
                    (user_id,),
                ).fetchone()
                assert held is not None
                check_quota(user_id, (int(held["n"]), int(held["size"])), items, *quota)
            if rows:
                with conn.cursor() as cur:  # one pipelined batch, ids in the order of the rows
                    cur.executemany(
                        "INSERT INTO interactions(user_id, input, output, timestamp, metadata, completion_id,"
                        " source, created_at, embedding) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                        rows,
                        returning=True,
                    )
                    while True:
                        row = cur.fetchone()
                        assert row is not None
                        ids.append(int(row["id"]))
                        if not cur.nextset():
                            break
            with_truth = sum(1 for item in items if item.output is not None)
            conn.execute(
                "UPDATE users SET interactions_since_profile = interactions_since_profile + %s,"
                " ground_truth_since_alignment = ground_truth_since_alignment + %s,"
                " version = nextval('user_versions') WHERE user_id = %s",
                (len(items), with_truth, user_id),
            )
        return ids

    def get_interactions(self, ids: Sequence[int]) -> list[Interaction]:
        if not ids:
            return []
        rows = self._db.query(f"SELECT {_INTERACTION} FROM interactions WHERE id = ANY(%s)", (list(ids),))
        by_id = {r["id"]: _interaction(r) for r in rows}
        return [by_id[i] for i in ids if i in by_id]

    def list_interactions(self, user_id: str, limit: int | None = None) -> list[Interaction]:
        rows = self._db.query(
            f"SELECT {_INTERACTION} FROM interactions WHERE user_id = %s ORDER BY id DESC LIMIT %s",
            (user_id, limit),  # LIMIT NULL: no limit
        )
        return [_interaction(r) for r in rows]

    def user_embeddings(self, user_id: str) -> tuple[np.ndarray, np.ndarray]:
        rows = self._db.query(
            "SELECT id, embedding FROM interactions WHERE user_id = %s ORDER BY id", (user_id,), binary=True
        )
        ids = np.fromiter((r["id"] for r in rows), dtype=np.int64, count=len(rows))
        return ids, vectors_from_bytes([r["embedding"] for r in rows])

    def iter_embeddings(self) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        for user_id in self.list_user_ids():
            ids, vectors = self.user_embeddings(user_id)
            if len(ids):
                yield user_id, ids, vectors

    # -- ground truth (alignment) -------------------------------------------------------------------

    def ground_truth(self, user_id: str, n: int) -> list[Interaction]:
        rows = self._db.query(
            f"SELECT {_INTERACTION} FROM interactions WHERE user_id = %s AND output IS NOT NULL"
            " ORDER BY timestamp DESC, id DESC LIMIT %s",
            (user_id, n),
        )
        return [_interaction(r) for r in rows]

    def attach_truth(
        self, user_id: str, expected_output: str, *, completion_id: str | None, input_text: str | None
    ) -> Interaction | None:
        if "\x00" in (completion_id or "") + (input_text or ""):
            return None  # no stored text holds one (and PostgreSQL refuses it as a parameter)
        with self._db.transaction() as conn:
            if not self._lock_user(conn, user_id):
                return None
            if completion_id is not None:
                row = conn.execute(
                    "SELECT id, output FROM interactions WHERE user_id = %s AND completion_id = %s"
                    " ORDER BY id LIMIT 1",
                    (user_id, completion_id),
                ).fetchone()
            else:
                row = conn.execute(
                    "SELECT id, output FROM interactions WHERE user_id = %s AND input = %s"
                    " ORDER BY id DESC LIMIT 1",
                    (user_id, input_text),
                ).fetchone()
            if row is None:
                return None
            updated = conn.execute(
                f"UPDATE interactions SET output = %s WHERE id = %s RETURNING {_INTERACTION}",
                (_text(expected_output), row["id"]),
            ).fetchone()
            if row["output"] is None:  # one ground truth per interaction: a re-post corrects, never recounts
                conn.execute(
                    "UPDATE users SET ground_truth_since_alignment = ground_truth_since_alignment + 1"
                    " WHERE user_id = %s",
                    (user_id,),
                )
        return _interaction(updated) if updated else None

    def take_alignment_due(self, user_id: str, every: int) -> bool:
        return (
            self._db.execute(
                "UPDATE users SET ground_truth_since_alignment = 0"
                " WHERE user_id = %s AND ground_truth_since_alignment >= %s",
                (user_id, every),
            )
            > 0
        )

    def current_personas(self) -> dict[str, str]:
        rows = self._db.query(
            "SELECT DISTINCT ON (user_id) user_id, text FROM personas ORDER BY user_id, version DESC"
        )
        return {r["user_id"]: r["text"] for r in rows}

    # -- semantic memory ---------------------------------------------------------------------------

    @staticmethod
    def _next_version(conn: Conn, table: str, user_id: str) -> int:
        row = conn.execute(
            f"SELECT COALESCE(MAX(version), 0) + 1 AS v FROM {table} WHERE user_id = %s", (user_id,)
        ).fetchone()
        assert row is not None
        return int(row["v"])

    @staticmethod
    def _keep_newest(conn: Conn, table: str, user_id: str, version: int, keep: int | None) -> None:
        if keep is not None:
            conn.execute(
                f"DELETE FROM {table} WHERE user_id = %s AND version <= %s", (user_id, version - keep)
            )

    def add_profile(
        self,
        user_id: str,
        text: str,
        covered: int,
        prompt: str,
        keep: int | None = None,
        generation: int | None = None,
    ) -> Profile:
        now = utcnow()
        with self._db.transaction() as conn:
            self._require_user(conn, user_id, generation)
            version = self._next_version(conn, "profiles", user_id)
            conn.execute(
                "INSERT INTO profiles(user_id, version, text, interactions_covered, prompt, created_at)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                (user_id, version, _text(text), covered, prompt, now),
            )
            self._keep_newest(conn, "profiles", user_id, version, keep)
            conn.execute("UPDATE users SET interactions_since_profile = 0 WHERE user_id = %s", (user_id,))
        return Profile(
            user_id=user_id, version=version, text=text, interactions_covered=covered, created_at=now,
            prompt=prompt,
        )  # fmt: skip

    def list_profiles(self, user_id: str) -> list[Profile]:
        rows = self._db.query("SELECT * FROM profiles WHERE user_id = %s ORDER BY version", (user_id,))
        return [Profile(**r) for r in rows]

    def latest_profile(self, user_id: str) -> Profile | None:
        rows = self._db.query(
            "SELECT * FROM profiles WHERE user_id = %s ORDER BY version DESC LIMIT 1", (user_id,)
        )
        return Profile(**rows[0]) if rows else None

    # -- personas ----------------------------------------------------------------------------------

    def add_persona(
        self,
        user_id: str,
        text: str,
        reason: str,
        parent: int | None,
        details: dict[str, Any],
        keep: int | None = None,
        generation: int | None = None,
        expected_version: int | None = None,
    ) -> PersonaVersion:
        now = utcnow()
        with self._db.transaction() as conn:
            self._require_user(conn, user_id, generation)
            version = self._next_version(conn, "personas", user_id)
            if expected_version is not None and version - 1 != expected_version:
                raise PersonaChanged(
                    f"user '{user_id}' has persona version {version - 1}, not {expected_version}"
                )
            conn.execute(
                "INSERT INTO personas(user_id, version, text, reason, parent, created_at, details)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (user_id, version, _text(text), reason, parent, now, Json(details)),
            )
            self._keep_newest(conn, "personas", user_id, version, keep)
        return PersonaVersion(
            user_id=user_id, version=version, text=text, reason=reason, parent=parent, created_at=now,
            details=details,
        )  # type: ignore[arg-type]  # fmt: skip

    def list_personas(self, user_id: str) -> list[PersonaVersion]:
        rows = self._db.query("SELECT * FROM personas WHERE user_id = %s ORDER BY version", (user_id,))
        return [PersonaVersion(**r) for r in rows]

    def close(self) -> None:
        self._db.close()
