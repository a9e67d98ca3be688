"""The `Store` on PostgreSQL (`store.url`), shared by every memory replica on every node.

Same semantics as `SQLiteStore` (read `memory.store`'s docstring): one transaction per write, committed
before the method returns; quotas, generations and version numbers decided inside the write. Where SQLite
serializes every write on its one connection, here each write that touches a user first locks that
user's row (`SELECT ... FOR UPDATE`), so the writes of one user run one at a time across all replicas (a
quota cannot be passed by two writes together, version numbers never collide, ids of one user grow in
commit order) while different users write in parallel. Embeddings are bytea (float32), read in binary.
The queries shared with SQLite are in `memory.store.SQLStoreBase`; this module holds what differs.

Timestamps are `timestamptz`; an imported timestamp without a zone is taken as UTC.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import numpy as np
import psycopg
from psycopg.rows import DictRow
from psycopg.types.json import Json

from memory.records import Interaction, InteractionIn, Source, utcnow
from memory.store import SQLStoreBase, vector_bytes
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


def _aware(value: datetime | None) -> datetime:
    if value is None:
        return utcnow()
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _completion_id(metadata: dict[str, Any]) -> str | None:
    """The chat completion an interaction answered, kept in a column of its own: feedback finds it by an
    index, and no JSON is parsed on the server (json's ->> fails on any \u0000 anywhere in the value)."""
    value = metadata.get("completion_id")
    return value if isinstance(value, str) and "\x00" not in value else None


class PostgresStore(SQLStoreBase):
    """`Store` on a PostgreSQL database (a `PostgresDatabase` pool). Thread-safe. The queries it shares
    with `SQLiteStore` are in `SQLStoreBase`; here are the PostgreSQL hooks and what differs."""

    _db: PostgresDatabase
    _FOR_UPDATE = " FOR UPDATE"  # the writes of one user run one at a time across all replicas
    _INTERACTION_BYTES = "octet_length(input) + octet_length(COALESCE(output, ''))"
    _BY_COMPLETION = "completion_id = ?"  # its own indexed column (`_completion_id`)

    def __init__(self, db: PostgresDatabase) -> None:
        self._db = db
        db.migrate("store", STORE_MIGRATIONS)

    @staticmethod
    def _text(value: str | None) -> str | None:
        if value is not None and "\x00" in value:  # SQLite stores it; PostgreSQL text cannot
            raise ValueError("text with a NUL character (U+0000) cannot be stored")
        return value

    @staticmethod
    def _to_json(value: Any) -> Json:
        return Json(value)

    @staticmethod
    def _from_json(value: Any) -> Any:
        return value  # json columns come back parsed

    @staticmethod
    def _in(values: Sequence[Any]) -> tuple[str, list[Any]]:
        return "= ANY(?)", [list(values)]  # one array parameter: one statement for any number of values

    def _query(self, sql: str, params: Sequence[Any] = (), *, binary: bool = False) -> list[DictRow]:
        return self._db.query(self._db.sql(sql), params, binary=binary)

    @contextmanager
    def _snapshot(self) -> Iterator[psycopg.Cursor[DictRow]]:
        # A pooled connection is not one snapshot by itself: a read-only repeatable-read transaction is.
        # Binary, so the embeddings travel as bytes.
        with self._db.connection() as conn, conn.transaction(), conn.cursor(binary=True) as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield cur

    # Users are created and versioned apart from SQLite: the version is a sequence (the column's default),
    # and a user deleted between the insert and the lock is created anew.

    def _new_version(self, conn: Conn) -> tuple[str, tuple[Any, ...]]:
        return "nextval('user_versions')", ()

    def _ensure_user(self, conn: Conn, user_id: str) -> int:
        """An explicit start (import, new chat): create the user if missing, lock it; its generation."""
        conn.execute(
            "INSERT INTO users(user_id, created_at) VALUES (%s, now()) ON CONFLICT (user_id) DO NOTHING",
            (user_id,),
        )
        if not self._lock_user(conn, user_id):  # deleted between the two statements: create it anew
            return self._ensure_user(conn, user_id)
        return self._generation(conn, user_id)

    # Inserted apart from SQLite: one pipelined batch with RETURNING, and the completion id in a column.

    def _interaction_rows(
        self, user_id: str, items: Sequence[InteractionIn], embeddings: np.ndarray, source: Source
    ) -> list[tuple[Any, ...]]:
        now = utcnow()
        return [
            (user_id, self._text(item.input), self._text(item.output), _aware(item.timestamp),
             Json(item.metadata), _completion_id(item.metadata), source, now, vector_bytes(vector))
            for item, vector in zip(items, embeddings, strict=True)
        ]  # fmt: skip

    def _insert_interactions(self, conn: Conn, rows: list[tuple[Any, ...]]) -> list[int]:
        ids: list[int] = []
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
        return ids

    def attach_truth(
        self, user_id: str, expected_output: str, *, completion_id: str | None, input_text: str | None
    ) -> Interaction | None:
        if "\x00" in (completion_id or "") + (input_text or ""):
            return None  # no stored text holds one (and PostgreSQL refuses it as a parameter)
        return super().attach_truth(
            user_id, expected_output, completion_id=completion_id, input_text=input_text
        )

    def current_personas(self) -> dict[str, str]:
        rows = self._db.query(  # DISTINCT ON is PostgreSQL's: one index scan, no join
            "SELECT DISTINCT ON (user_id) user_id, text FROM personas ORDER BY user_id, version DESC"
        )
        return {r["user_id"]: r["text"] for r in rows}
