"""Stored Responses-API responses: what `previous_response_id`, `GET /v1/responses/{id}` and
`.../input_items` read. One table in the memory database file, beside `users`, so a response lives exactly
as long as the user it belongs to.

A stored response belongs to the API key that created it and, when it was personalized, to its user and
that user's generation (see `memory.store`: a delete increments it). It is visible only through the same
key and, for a user's response, only while the user is that same incarnation: a response written by a
request that outlived its user's DELETE is refused inside its own write, and a row left behind by a crash
between the user's delete and the response delete is never read again (its generation is gone).
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, Field

from memory.records import utcnow
from personaagent.sqlite import SQLiteFile

if TYPE_CHECKING:  # psycopg is imported only where a PostgreSQL store is configured
    from memory.store import Store
    from personaagent.postgres import PostgresDatabase

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    user_id TEXT,
    generation INTEGER,
    api_key TEXT,
    input_items TEXT NOT NULL,
    response TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_user ON responses(user_id);
"""


class StoredResponse(BaseModel):
    """One response as stored: the Response object as sent, and the conversation it answered."""

    id: str
    user_id: str | None = Field(None, description="the user it was personalized for; None: the plain model")
    generation: int | None = Field(
        None, description="the user's generation when the request began; None: the current one at the write"
    )
    api_key: str | None = Field(None, description="name of the API key that created it; None: open server")
    input_items: list[dict[str, Any]] = Field(
        description="every input item it answered, those of the previous responses it continued included"
    )
    response: dict[str, Any] = Field(description="the Response object as the client got it")
    created_at: datetime = Field(default_factory=utcnow)


class ResponseScope(BaseModel):
    """Who is asking: a stored response is visible to the API key that created it and, unless `any_user`
    (an admin key, or an open server, reading by id), only for its own user (None: a plain response)."""

    api_key: str | None
    user_id: str | None = None
    any_user: bool = False


class ResponseStore(Protocol):
    def save(self, record: StoredResponse) -> bool:
        """Store a response; False (nothing written) when its user is gone or is a newer incarnation."""

    def get(self, response_id: str, scope: ResponseScope) -> StoredResponse | None:
        """The response when `scope` may see it; None otherwise (unknown, another key or user)."""

    def delete(self, response_id: str, scope: ResponseScope) -> bool:
        """Delete the response when `scope` may see it."""

    def delete_user(self, user_id: str) -> int:
        """Every response of the user (their erasure); how many there were."""

    def close(self) -> None: ...


# The user's generation as `memory.store` keeps it: 0 until the first delete; no row when there is no user.
_CURRENT_GENERATION = (
    "SELECT COALESCE((SELECT g.generation FROM user_generations g WHERE g.user_id = u.user_id), 0)"
    " FROM users u WHERE u.user_id = ?"
)


class SQLiteResponseStore:
    """`ResponseStore` on the memory database file (it reads the store's `users` and `user_generations`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = SQLiteFile(path, SCHEMA)

    def save(self, record: StoredResponse) -> bool:
        with self._db.transaction() as conn:
            generation = record.generation
            if record.user_id is not None:
                row = conn.execute(_CURRENT_GENERATION, (record.user_id,)).fetchone()
                if row is None or (generation is not None and int(row[0]) != generation):
                    return False
                generation = int(row[0])
            conn.execute(
                "INSERT INTO responses(id, user_id, generation, api_key, input_items, response, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (record.id, record.user_id, generation, record.api_key, json.dumps(record.input_items),
                 json.dumps(record.response), record.created_at.isoformat()),
            )  # fmt: skip
        return True

    @staticmethod
    def _visible(scope: ResponseScope) -> tuple[str, list[Any]]:
        """The WHERE clause (after the id) that keeps what `scope` may not see out, with its parameters."""
        sql = (
            " AND r.api_key IS ?"
            # A user's response only while that incarnation of the user exists.
            " AND (r.user_id IS NULL OR r.generation = ("
            + _CURRENT_GENERATION.replace("?", "r.user_id")
            + "))"
        )
        params: list[Any] = [scope.api_key]
        if not scope.any_user:
            sql += " AND r.user_id IS ?"
            params.append(scope.user_id)
        return sql, params

    def get(self, response_id: str, scope: ResponseScope) -> StoredResponse | None:
        where, params = self._visible(scope)
        rows = self._db.query(f"SELECT r.* FROM responses r WHERE r.id = ?{where}", [response_id, *params])
        return _record(rows[0]) if rows else None

    def delete(self, response_id: str, scope: ResponseScope) -> bool:
        where, params = self._visible(scope)
        sql = f"DELETE FROM responses WHERE id IN (SELECT r.id FROM responses r WHERE r.id = ?{where})"
        return self._db.execute(sql, [response_id, *params]) > 0

    def delete_user(self, user_id: str) -> int:
        return self._db.execute("DELETE FROM responses WHERE user_id = ?", (user_id,))

    def close(self) -> None:
        self._db.close()


def _record(row: sqlite3.Row) -> StoredResponse:
    return StoredResponse(
        id=row["id"],
        user_id=row["user_id"],
        generation=row["generation"],
        api_key=row["api_key"],
        input_items=json.loads(row["input_items"]),
        response=json.loads(row["response"]),
        created_at=row["created_at"],
    )


# Append-only (`PostgresDatabase.migrate`): a schema change is a new entry.
POSTGRES_MIGRATIONS: list[str] = [
    """
    CREATE TABLE responses (
        id TEXT PRIMARY KEY,
        user_id TEXT,
        generation BIGINT,
        api_key TEXT,
        input_items JSON NOT NULL,
        response JSON NOT NULL,
        created_at TIMESTAMPTZ NOT NULL
    );
    CREATE INDEX responses_user ON responses(user_id);
    """,
]
_PG_GENERATION = (
    "SELECT COALESCE((SELECT g.generation FROM user_generations g WHERE g.user_id = u.user_id), 0)"
    " AS generation FROM users u WHERE u.user_id = {}"
)


class PostgresResponseStore:
    """`ResponseStore` on the PostgreSQL database of `memory.pg_store.PostgresStore` (its `users` and
    `user_generations`): every memory replica reads the responses any of them stored."""

    def __init__(self, db: PostgresDatabase) -> None:
        self._db = db
        db.migrate("responses", POSTGRES_MIGRATIONS)

    def save(self, record: StoredResponse) -> bool:
        with self._db.transaction() as conn:
            generation = record.generation
            if record.user_id is not None:
                # FOR SHARE: a concurrent delete of the user (which locks its row) goes first or after.
                row = conn.execute(
                    _PG_GENERATION.format("%s") + " FOR SHARE OF u", (record.user_id,)
                ).fetchone()
                if row is None or (generation is not None and int(row["generation"]) != generation):
                    return False
                generation = int(row["generation"])
            conn.execute(
                "INSERT INTO responses(id, user_id, generation, api_key, input_items, response, created_at)"
                " VALUES (%s, %s, %s, %s, %s::json, %s::json, %s)",
                (record.id, record.user_id, generation, record.api_key, json.dumps(record.input_items),
                 json.dumps(record.response), record.created_at),
            )  # fmt: skip
        return True

    @staticmethod
    def _visible(scope: ResponseScope) -> tuple[str, list[Any]]:
        sql = (
            " AND r.api_key IS NOT DISTINCT FROM %s"
            " AND (r.user_id IS NULL OR r.generation = (" + _PG_GENERATION.format("r.user_id") + "))"
        )
        params: list[Any] = [scope.api_key]
        if not scope.any_user:
            sql += " AND r.user_id IS NOT DISTINCT FROM %s"
            params.append(scope.user_id)
        return sql, params

    def get(self, response_id: str, scope: ResponseScope) -> StoredResponse | None:
        where, params = self._visible(scope)
        rows = self._db.query(f"SELECT r.* FROM responses r WHERE r.id = %s{where}", [response_id, *params])
        return StoredResponse(**rows[0]) if rows else None

    def delete(self, response_id: str, scope: ResponseScope) -> bool:
        where, params = self._visible(scope)
        sql = f"DELETE FROM responses WHERE id IN (SELECT r.id FROM responses r WHERE r.id = %s{where})"
        return self._db.execute(sql, [response_id, *params]) > 0

    def delete_user(self, user_id: str) -> int:
        return self._db.execute("DELETE FROM responses WHERE user_id = %s", (user_id,))

    def close(self) -> None:
        self._db.close()  # idempotent: the store beside it shares the pool


def responses_beside(store: Store) -> ResponseStore:
    """The response store in the database of `store`: a response belongs to that database's users."""
    from memory.store import SQLiteStore

    if isinstance(store, SQLiteStore):
        return SQLiteResponseStore(store.path)
    from memory.pg_store import PostgresStore

    if isinstance(store, PostgresStore):
        return PostgresResponseStore(store._db)  # the pool the store migrated and runs on
    raise TypeError(f"no response store for {type(store).__name__}")
