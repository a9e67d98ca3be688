"""One SQLite file in WAL mode behind one connection and a lock: what the store, the documents and the
alignment jobs each open. Durable on return: `synchronous=FULL` and explicit transactions."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class SQLiteFile:
    def __init__(self, path: Path, schema: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        # One connection shared by threads (the lock serializes it); autocommit outside `transaction()`.
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.executescript(schema)

    def add_missing_columns(self, table: str, columns: dict[str, str]) -> None:
        """Columns added to `table` after files were written with the older schema (SQLite has no
        ADD COLUMN IF NOT EXISTS). `columns`: name -> declaration, e.g. "INTEGER NOT NULL DEFAULT 0"."""
        with self.transaction() as conn:
            present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            for name, declaration in columns.items():
                if name not in present:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")

    @staticmethod
    def sql(text: str) -> str:
        """A statement shared with PostgreSQL (written with `?` placeholders), as SQLite takes it: as is."""
        return text

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """All or nothing, committed (to disk) before the block's caller goes on."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One statement in its own transaction; the number of rows it changed."""
        with self._lock:
            return self._conn.execute(sql, params).rowcount

    def close(self) -> None:
        with self._lock:
            self._conn.close()
