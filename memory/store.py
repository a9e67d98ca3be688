"""Durable per-user store (the source of truth): the `Store` protocol and its SQLite implementation, the
embedded default. `memory/pg_store.py` implements the same protocol on PostgreSQL for several replicas
(`store.url`); `memory/backends.py` picks one. The queries the two run alike are written once, in
`SQLStoreBase`.

Every write runs in one transaction and is committed before the method returns, so an API that
acknowledges after calling it never acknowledges a write that a crash could lose (WAL, synchronous=FULL).
Embeddings are stored beside each interaction: the FAISS index is derived data that can be rebuilt from
the database alone, without re-embedding.

Delete is final: every user id has a generation (`user_generations`, kept after the delete; it holds only
the id and a counter) that a delete increments. Only an explicit start (an import, a new chat) creates a
user; every other write names the generation its operation began with and is refused (`UserDeleted`)
inside its own transaction when the user is gone or is a newer incarnation, so an operation that began
before a DELETE never re-creates the user.

Every user row carries a version: a number drawn from one store-wide counter when the user is created and
again by every write that changes what their index holds (adding interactions). Drawn store-wide, a
number never repeats, not even for a user deleted and created again, so a per-replica index cache that
remembers the version it loaded can tell with one primary-key read (`user_version`) whether it is current.
"""

from __future__ import annotations

import json
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np

from memory.records import (
    Interaction,
    InteractionIn,
    PersonaChanged,
    PersonaVersion,
    Profile,
    Source,
    StorageQuotaExceeded,
    UserDeleted,
    UserRecord,
    utcnow,
)
from personaagent.sqlite import SQLiteFile

if TYPE_CHECKING:  # psycopg is imported only where a PostgreSQL store is configured
    from personaagent.postgres import PostgresDatabase

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    user_id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    interactions_since_profile INTEGER NOT NULL DEFAULT 0,
    ground_truth_since_alignment INTEGER NOT NULL DEFAULT 0,
    version INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS version_counter (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO version_counter(id, value) VALUES (1, 0);
CREATE TABLE IF NOT EXISTS interactions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
    input TEXT NOT NULL,
    output TEXT,
    timestamp TEXT NOT NULL,
    metadata TEXT NOT NULL,
    source TEXT NOT NULL,
    created_at TEXT NOT NULL,
    embedding BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS interactions_user ON interactions(user_id, id);
CREATE TABLE IF NOT EXISTS profiles (
    user_id TEXT NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
    version INTEGER NOT NULL,
    text TEXT NOT NULL,
    interactions_covered INTEGER NOT NULL,
    prompt TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (user_id, version)
);
CREATE TABLE IF NOT EXISTS personas (
    user_id TEXT NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
    version INTEGER NOT NULL,
    text TEXT NOT NULL,
    reason TEXT NOT NULL,
    parent INTEGER,
    created_at TEXT NOT NULL,
    details TEXT NOT NULL,
    PRIMARY KEY (user_id, version)
);
CREATE TABLE IF NOT EXISTS user_generations (
    user_id TEXT PRIMARY KEY,
    generation INTEGER NOT NULL
);
"""


class UserVectors(NamedTuple):
    """What a user's index is loaded from, read in one snapshot: the user's `version` (None: no such
    user), `generation`, and the ids and vectors of their interactions in id order.

    Ids of one user grow in commit order (writes of one user are serialized), so an index that loaded up
    to id N catches up with the rows after N, as long as the generation is the one it loaded: a changed
    generation means a delete happened in between, and only a full load is right then."""

    version: int | None
    generation: int
    ids: np.ndarray
    vectors: np.ndarray


class Store(Protocol):
    """What the memory service needs from a database."""

    def add_interactions(
        self,
        user_id: str,
        items: Sequence[InteractionIn],
        embeddings: np.ndarray,
        source: Source,
        quota: tuple[int, int] | None = None,
        generation: int | None = None,
    ) -> list[int]: ...
    def get_user(self, user_id: str) -> UserRecord | None: ...
    def ensure_user(self, user_id: str) -> UserRecord: ...
    def open_user(self, user_id: str) -> int: ...
    def user_generation(self, user_id: str) -> int | None: ...
    def user_version(self, user_id: str) -> int | None: ...
    def user_vectors(self, user_id: str, after_id: int | None = None) -> UserVectors: ...
    def list_user_ids(self) -> list[str]: ...
    def get_interactions(self, ids: Sequence[int]) -> list[Interaction]: ...
    def list_interactions(self, user_id: str, limit: int | None = None) -> list[Interaction]: ...
    def user_embeddings(self, user_id: str) -> tuple[np.ndarray, np.ndarray]: ...
    def iter_embeddings(self) -> Iterator[tuple[str, np.ndarray, np.ndarray]]: ...
    def add_profile(
        self,
        user_id: str,
        text: str,
        covered: int,
        prompt: str,
        keep: int | None = None,
        generation: int | None = None,
    ) -> Profile: ...
    def latest_profile(self, user_id: str) -> Profile | None: ...
    def list_profiles(self, user_id: str) -> list[Profile]: ...
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
    ) -> PersonaVersion: ...
    def list_personas(self, user_id: str) -> list[PersonaVersion]: ...
    def delete_user(self, user_id: str) -> bool: ...
    def ground_truth(self, user_id: str, n: int) -> list[Interaction]: ...
    def attach_truth(
        self, user_id: str, expected_output: str, *, completion_id: str | None, input_text: str | None
    ) -> Interaction | None: ...
    def take_alignment_due(self, user_id: str, every: int) -> bool: ...
    def current_personas(self) -> dict[str, str]: ...
    def close(self) -> None: ...


def _item_bytes(item: InteractionIn) -> int:
    return len(item.input.encode()) + len((item.output or "").encode())


def check_quota(
    user_id: str, held: tuple[int, int], items: Sequence[InteractionIn], max_items: int, max_bytes: int
) -> None:
    """`held`: (interactions, UTF-8 bytes) the user holds, read inside the write's transaction."""
    count, size = held
    new_bytes = sum(_item_bytes(i) for i in items)
    if count + len(items) > max_items:
        raise StorageQuotaExceeded(
            f"user '{user_id}' holds {count} interactions; {len(items)} more would pass the limit of "
            f"{max_items} (memory.max_items_per_user)"
        )
    if size + new_bytes > max_bytes:
        raise StorageQuotaExceeded(
            f"user '{user_id}' holds {size} bytes of interactions; {new_bytes} more would pass the limit of "
            f"{max_bytes} (memory.max_bytes_per_user)"
        )


def vector_bytes(vector: np.ndarray) -> bytes:
    """How an embedding is stored: float32, native byte order (what `vectors_from_bytes` reads)."""
    return np.asarray(vector, dtype=np.float32).tobytes()


def vectors_from_bytes(blobs: Sequence[bytes]) -> np.ndarray:
    """Stored embeddings as one (n, dim) float32 matrix; (0, 0) for none."""
    if not blobs:
        return np.zeros((0, 0), dtype=np.float32)
    return np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), -1)


# A sqlite3 or psycopg connection (or cursor): both run `execute(sql, params)` and give rows by column name.
SQLConn = Any


class SQLStoreBase(ABC):
    """The `Store` methods that read and write alike on SQLite and PostgreSQL: each query written once, with
    `?` placeholders (`self._db.sql` turns them into the database's own). What differs between the two is
    a hook here, set by `SQLiteStore` and `memory.pg_store.PostgresStore`: how a user is created and
    versioned, how a write locks its user, the row batch insert, and the value conversions."""

    _db: SQLiteFile | PostgresDatabase
    # Appended to the user row read that every write of a user begins with (`_lock_user`).
    _FOR_UPDATE = ""
    # UTF-8 bytes of an interaction's input and output, in SQL (the quota counts them).
    _INTERACTION_BYTES = ""
    # The condition that finds an interaction by the chat completion it answered (one `?`).
    _BY_COMPLETION = ""

    # -- hooks ---------------------------------------------------------------------------------------

    @staticmethod
    def _ts(value: datetime) -> Any:
        """A timestamp as stored."""
        return value

    @staticmethod
    def _text(value: str | None) -> str | None:
        """Text as stored (PostgreSQL refuses some that SQLite keeps)."""
        return value

    @staticmethod
    @abstractmethod
    def _to_json(value: Any) -> Any: ...

    @staticmethod
    @abstractmethod
    def _from_json(value: Any) -> Any: ...

    @staticmethod
    @abstractmethod
    def _in(values: Sequence[Any]) -> tuple[str, list[Any]]:
        """`column <this>` holds for the values: (SQL, its parameters)."""

    @abstractmethod
    def _snapshot(self) -> AbstractContextManager[SQLConn]:
        """Reads that see one state of the database: no write comes between them."""

    @abstractmethod
    def _ensure_user(self, conn: SQLConn, user_id: str) -> int:
        """An explicit start (import, new chat): create the user if missing; its generation."""

    @abstractmethod
    def _new_version(self, conn: SQLConn) -> tuple[str, tuple[Any, ...]]:
        """The SQL value of a user's next version (see the module docstring), and its parameters."""

    @abstractmethod
    def _interaction_rows(
        self, user_id: str, items: Sequence[InteractionIn], embeddings: np.ndarray, source: Source
    ) -> list[tuple[Any, ...]]:
        """The rows `_insert_interactions` writes, converted before the write's transaction begins."""

    @abstractmethod
    def _insert_interactions(self, conn: SQLConn, rows: list[tuple[Any, ...]]) -> list[int]:
        """Insert the rows; their ids, in order."""

    # -- statements ----------------------------------------------------------------------------------

    def _exec(self, conn: SQLConn, sql: str, params: Sequence[Any] = ()) -> Any:
        return conn.execute(self._db.sql(sql), params)

    def _query(self, sql: str, params: Sequence[Any] = (), *, binary: bool = False) -> list[Any]:
        """Rows of one read. `binary`: bytea as bytes (PostgreSQL; SQLite has nothing else)."""
        return self._db.query(self._db.sql(sql), params)

    # -- users -------------------------------------------------------------------------------------

    def _generation(self, conn: SQLConn, user_id: str) -> int:
        row = self._exec(
            conn, "SELECT generation FROM user_generations WHERE user_id = ?", (user_id,)
        ).fetchone()
        return int(row["generation"]) if row else 0

    def _lock_user(self, conn: SQLConn, user_id: str) -> bool:
        """Lock the user's row to the end of the transaction (every write of the user takes it first, so
        they run one at a time; on SQLite the file's one connection serializes every write already);
        False when there is no such user."""
        sql = f"SELECT 1 FROM users WHERE user_id = ?{self._FOR_UPDATE}"
        return self._exec(conn, sql, (user_id,)).fetchone() is not None

    def _require_user(self, conn: SQLConn, user_id: str, generation: int | None) -> None:
        """Any other write: the user must exist (locked now) and, given `generation`, be the incarnation
        the write's operation began with. Checked inside the write's transaction, so a DELETE cannot slip
        between the check and the write."""
        if not self._lock_user(conn, user_id) or (
            generation is not None and self._generation(conn, user_id) != generation
        ):
            raise UserDeleted(f"user '{user_id}' was deleted")

    def open_user(self, user_id: str) -> int:
        """Create the user if missing (an explicit start); the generation later writes must name."""
        with self._db.transaction() as conn:
            return self._ensure_user(conn, user_id)

    def user_generation(self, user_id: str) -> int | None:
        """The existing user's generation; None when there is no such user."""
        rows = self._query(  # one statement: the row and its generation from one snapshot
            "SELECT COALESCE((SELECT g.generation FROM user_generations g WHERE g.user_id = u.user_id), 0)"
            " AS generation FROM users u WHERE u.user_id = ?",
            (user_id,),
        )
        return int(rows[0]["generation"]) if rows else None

    def user_version(self, user_id: str) -> int | None:
        """The user's version (see the module docstring); None when there is no such user."""
        rows = self._query("SELECT version FROM users WHERE user_id = ?", (user_id,))
        return int(rows[0]["version"]) if rows else None

    def user_vectors(self, user_id: str, after_id: int | None = None) -> UserVectors:
        """The user's version, generation and stored vectors (those after `after_id`, if given), from one
        snapshot: what a per-replica index cache loads or catches up from."""
        with self._snapshot() as conn:
            user = self._exec(conn, "SELECT version FROM users WHERE user_id = ?", (user_id,)).fetchone()
            generation = self._generation(conn, user_id)
            rows = self._exec(
                conn,
                "SELECT id, embedding FROM interactions WHERE user_id = ? AND id > ? ORDER BY id",
                (user_id, -1 if after_id is None else after_id),
            ).fetchall()
        return UserVectors(
            version=int(user["version"]) if user else None,
            generation=generation,
            ids=np.fromiter((r["id"] for r in rows), dtype=np.int64, count=len(rows)),
            vectors=vectors_from_bytes([r["embedding"] for r in rows]),
        )

    _USER_COLUMNS = "user_id, created_at, interactions_since_profile, ground_truth_since_alignment"

    def get_user(self, user_id: str) -> UserRecord | None:
        rows = self._query(f"SELECT {self._USER_COLUMNS} FROM users WHERE user_id = ?", (user_id,))
        return UserRecord(**dict(rows[0])) if rows else None

    def ensure_user(self, user_id: str) -> UserRecord:
        with self._db.transaction() as conn:
            self._ensure_user(conn, user_id)
            sql = f"SELECT {self._USER_COLUMNS} FROM users WHERE user_id = ?"
            row = self._exec(conn, sql, (user_id,)).fetchone()
        assert row is not None
        return UserRecord(**dict(row))

    def list_user_ids(self) -> list[str]:
        return [r["user_id"] for r in self._query("SELECT user_id FROM users ORDER BY user_id")]

    def delete_user(self, user_id: str) -> bool:
        with self._db.transaction() as conn:
            if not self._lock_user(conn, user_id):  # a write under way finishes first, then all of it goes
                return False
            for table in ("interactions", "profiles", "personas", "users"):
                self._exec(conn, f"DELETE FROM {table} WHERE user_id = ?", (user_id,))
            self._exec(  # writes begun before this delete name the old generation: they will be refused
                conn,
                "INSERT INTO user_generations(user_id, generation) VALUES (?, 1) ON CONFLICT (user_id)"
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
        """Insert in one transaction. `quota`: (max items, max bytes) the user may hold afterwards; checked
        inside the transaction, so concurrent writes cannot pass it together. `generation` None: an
        explicit import, which creates the user; else (a chat write-back) the user's generation when the
        chat began, and `UserDeleted` if it changed."""
        if len(items) != len(embeddings):
            raise ValueError("one embedding per interaction")
        rows = self._interaction_rows(user_id, items, embeddings, source)
        with self._db.transaction() as conn:
            if generation is None:
                self._ensure_user(conn, user_id)
            else:
                self._require_user(conn, user_id, generation)
            if quota is not None:
                held = self._exec(
                    conn,
                    f"SELECT COUNT(*) AS n, COALESCE(SUM({self._INTERACTION_BYTES}), 0) AS size"
                    " FROM interactions WHERE user_id = ?",
                    (user_id,),
                ).fetchone()
                check_quota(user_id, (int(held["n"]), int(held["size"])), items, *quota)
            ids = self._insert_interactions(conn, rows)
            with_truth = sum(1 for item in items if item.output is not None)
            version, version_params = self._new_version(conn)
            self._exec(
                conn,
                "UPDATE users SET interactions_since_profile = interactions_since_profile + ?,"
                f" ground_truth_since_alignment = ground_truth_since_alignment + ?, version = {version}"
                " WHERE user_id = ?",
                (len(items), with_truth, *version_params, user_id),
            )
        return ids

    _COLUMNS = "id, user_id, input, output, timestamp, metadata, source, created_at"

    def _interaction(self, row: Any) -> Interaction:
        """A row of `_COLUMNS`."""
        return Interaction(**{**dict(row), "metadata": self._from_json(row["metadata"])})

    def get_interactions(self, ids: Sequence[int]) -> list[Interaction]:
        if not ids:
            return []
        among, params = self._in(ids)
        rows = self._query(f"SELECT {self._COLUMNS} FROM interactions WHERE id {among}", params)
        by_id = {r["id"]: self._interaction(r) for r in rows}
        return [by_id[i] for i in ids if i in by_id]

    def list_interactions(self, user_id: str, limit: int | None = None) -> list[Interaction]:
        sql = f"SELECT {self._COLUMNS} FROM interactions WHERE user_id = ? ORDER BY id DESC"
        params: list[Any] = [user_id]
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [self._interaction(r) for r in self._query(sql, params)]

    def user_embeddings(self, user_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of one user's interactions in id order: what their index is (re)loaded from."""
        rows = self._query(
            "SELECT id, embedding FROM interactions WHERE user_id = ? ORDER BY id", (user_id,), binary=True
        )
        ids = np.fromiter((r["id"] for r in rows), dtype=np.int64, count=len(rows))
        return ids, vectors_from_bytes([r["embedding"] for r in rows])

    def iter_embeddings(self) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        """(user_id, ids, vectors) per user: everything the index needs to rebuild itself."""
        for user_id in self.list_user_ids():
            ids, vectors = self.user_embeddings(user_id)
            if len(ids):
                yield user_id, ids, vectors

    # -- ground truth (alignment) -------------------------------------------------------------------

    def ground_truth(self, user_id: str, n: int) -> list[Interaction]:
        """The latest n interactions that have a known right answer, newest first."""
        rows = self._query(
            f"SELECT {self._COLUMNS} FROM interactions WHERE user_id = ? AND output IS NOT NULL"
            " ORDER BY timestamp DESC, id DESC LIMIT ?",
            (user_id, n),
        )
        return [self._interaction(r) for r in rows]

    def attach_truth(
        self, user_id: str, expected_output: str, *, completion_id: str | None, input_text: str | None
    ) -> Interaction | None:
        """Set the ground truth of the user's interaction found by completion id (or newest same input)."""
        with self._db.transaction() as conn:
            if not self._lock_user(conn, user_id):
                return None
            if completion_id is not None:
                sql = f"SELECT id, output FROM interactions WHERE user_id = ? AND {self._BY_COMPLETION}"
                row = self._exec(conn, sql + " ORDER BY id LIMIT 1", (user_id, completion_id)).fetchone()
            else:
                row = self._exec(
                    conn,
                    "SELECT id, output FROM interactions WHERE user_id = ? AND input = ? ORDER BY id DESC LIMIT 1",
                    (user_id, input_text),
                ).fetchone()
            if row is None:
                return None
            updated = self._exec(
                conn,
                f"UPDATE interactions SET output = ? WHERE id = ? RETURNING {self._COLUMNS}",
                (self._text(expected_output), row["id"]),
            ).fetchone()
            if row["output"] is None:  # one ground truth per interaction: a re-post corrects, never recounts
                self._exec(
                    conn,
                    "UPDATE users SET ground_truth_since_alignment = ground_truth_since_alignment + 1"
                    " WHERE user_id = ?",
                    (user_id,),
                )
        return self._interaction(updated) if updated else None

    def take_alignment_due(self, user_id: str, every: int) -> bool:
        """True (once) when K new ground truths have arrived since the last scheduling; resets the count."""
        changed = self._db.execute(
            self._db.sql(
                "UPDATE users SET ground_truth_since_alignment = 0"
                " WHERE user_id = ? AND ground_truth_since_alignment >= ?"
            ),
            (user_id, every),
        )
        return changed > 0

    # -- semantic memory ---------------------------------------------------------------------------

    def _next_version(self, conn: SQLConn, table: str, user_id: str) -> int:
        sql = f"SELECT COALESCE(MAX(version), 0) + 1 AS v FROM {table} WHERE user_id = ?"
        return int(self._exec(conn, sql, (user_id,)).fetchone()["v"])

    def _keep_newest(self, conn: SQLConn, table: str, user_id: str, version: int, keep: int | None) -> None:
        """Version retention: only the newest `keep` versions of the user's rows in `table` stay."""
        if keep is not None:
            sql = f"DELETE FROM {table} WHERE user_id = ? AND version <= ?"
            self._exec(conn, sql, (user_id, version - keep))

    def add_profile(
        self,
        user_id: str,
        text: str,
        covered: int,
        prompt: str,
        keep: int | None = None,
        generation: int | None = None,
    ) -> Profile:
        """A new profile version of an existing user (`UserDeleted` otherwise, or when `generation` is
        given and changed); `keep`: how many versions stay (the oldest beyond it go)."""
        now = utcnow()
        with self._db.transaction() as conn:
            self._require_user(conn, user_id, generation)
            version = self._next_version(conn, "profiles", user_id)
            self._exec(
                conn,
                "INSERT INTO profiles(user_id, version, text, interactions_covered, prompt, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (user_id, version, self._text(text), covered, prompt, self._ts(now)),
            )
            self._keep_newest(conn, "profiles", user_id, version, keep)
            self._exec(conn, "UPDATE users SET interactions_since_profile = 0 WHERE user_id = ?", (user_id,))
        return Profile(
            user_id=user_id, version=version, text=text, interactions_covered=covered, created_at=now,
            prompt=prompt,
        )  # fmt: skip

    def list_profiles(self, user_id: str) -> list[Profile]:
        rows = self._query("SELECT * FROM profiles WHERE user_id = ? ORDER BY version", (user_id,))
        return [Profile(**dict(r)) for r in rows]

    def latest_profile(self, user_id: str) -> Profile | None:
        rows = self._query(
            "SELECT * FROM profiles WHERE user_id = ? ORDER BY version DESC LIMIT 1", (user_id,)
        )
        return Profile(**dict(rows[0])) if rows else None

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
        """A new persona version of an existing user (`UserDeleted` otherwise, or when `generation` is
        given and changed); `keep`: how many versions stay (the oldest beyond it go). `expected_version`:
        written only while that version is the current one (0: none yet), else `PersonaChanged`; decided
        inside the write, so two writers based on one version (two replicas) cannot both write."""
        now = utcnow()
        with self._db.transaction() as conn:
            self._require_user(conn, user_id, generation)
            version = self._next_version(conn, "personas", user_id)
            if expected_version is not None and version - 1 != expected_version:
                raise PersonaChanged(
                    f"user '{user_id}' has persona version {version - 1}, not {expected_version}"
                )
            self._exec(
                conn,
                "INSERT INTO personas(user_id, version, text, reason, parent, created_at, details)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (user_id, version, self._text(text), reason, parent, self._ts(now), self._to_json(details)),
            )
            self._keep_newest(conn, "personas", user_id, version, keep)
        return PersonaVersion(
            user_id=user_id, version=version, text=text, reason=reason, parent=parent, created_at=now,
            details=details,
        )  # type: ignore[arg-type]  # fmt: skip

    def list_personas(self, user_id: str) -> list[PersonaVersion]:
        rows = self._query("SELECT * FROM personas WHERE user_id = ? ORDER BY version", (user_id,))
        return [PersonaVersion(**{**dict(r), "details": self._from_json(r["details"])}) for r in rows]

    def close(self) -> None:
        self._db.close()


class SQLiteStore(SQLStoreBase):
    """`Store` on one SQLite file in WAL mode. Thread-safe: one connection, serialized by a lock, so every
    write runs alone (no row locks needed)."""

    _INTERACTION_BYTES = "LENGTH(CAST(input AS BLOB)) + LENGTH(CAST(COALESCE(output, '') AS BLOB))"
    _BY_COMPLETION = "json_extract(metadata, '$.completion_id') = ?"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = SQLiteFile(path, SCHEMA)
        # Files written before 2026-12 have no version column yet.
        self._db.add_missing_columns("users", {"version": "INTEGER NOT NULL DEFAULT 0"})

    @staticmethod
    def _ts(value: datetime) -> str:
        return value.isoformat()

    @staticmethod
    def _to_json(value: Any) -> str:
        return json.dumps(value)

    @staticmethod
    def _from_json(value: Any) -> Any:
        return json.loads(value)

    @staticmethod
    def _in(values: Sequence[Any]) -> tuple[str, list[Any]]:
        return f"IN ({','.join('?' * len(values))})", list(values)  # no arrays in SQLite: one mark a value

    def _snapshot(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._db.transaction()  # the file's one connection: no write comes between these reads

    # Users are created and versioned apart from PostgreSQL: the version counter is a table here (SQLite
    # has no sequences), and the user row needs no lock (every write runs alone).

    @staticmethod
    def _next_user_version(conn: sqlite3.Connection) -> int:
        """A number from the store-wide counter: never handed out twice (see the module docstring)."""
        return int(conn.execute("UPDATE version_counter SET value = value + 1 RETURNING value").fetchone()[0])

    def _new_version(self, conn: sqlite3.Connection) -> tuple[str, tuple[Any, ...]]:
        return "?", (self._next_user_version(conn),)

    def _ensure_user(self, conn: sqlite3.Connection, user_id: str) -> int:
        created = conn.execute(
            "INSERT OR IGNORE INTO users(user_id, created_at) VALUES (?, ?)", (user_id, self._ts(utcnow()))
        ).rowcount
        if created:
            conn.execute(
                "UPDATE users SET version = ? WHERE user_id = ?", (self._next_user_version(conn), user_id)
            )
        return self._generation(conn, user_id)

    # Inserted apart from PostgreSQL: one statement a row for its id (sqlite3's executemany has no
    # RETURNING), and the completion id stays inside the metadata JSON (`_BY_COMPLETION` reads it there).

    def _interaction_rows(
        self, user_id: str, items: Sequence[InteractionIn], embeddings: np.ndarray, source: Source
    ) -> list[tuple[Any, ...]]:
        now = self._ts(utcnow())
        return [
            (user_id, item.input, item.output, self._ts(item.timestamp or utcnow()), json.dumps(item.metadata),
             source, now, vector_bytes(vector))
            for item, vector in zip(items, embeddings, strict=True)
        ]  # fmt: skip

    def _insert_interactions(self, conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> list[int]:
        sql = (
            "INSERT INTO interactions(user_id, input, output, timestamp, metadata, source, created_at,"
            " embedding) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        )
        return [int(conn.execute(sql, row).lastrowid or 0) for row in rows]

    def current_personas(self) -> dict[str, str]:
        rows = self._query(
            "SELECT p.user_id, p.text FROM personas p JOIN (SELECT user_id, MAX(version) AS v FROM personas"
            " GROUP BY user_id) m ON p.user_id = m.user_id AND p.version = m.v ORDER BY p.user_id"
        )
        return {r["user_id"]: r["text"] for r in rows}
