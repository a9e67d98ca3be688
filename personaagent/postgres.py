"""One PostgreSQL database behind a psycopg connection pool: what the store, the documents and the
alignment jobs open when `store.url` is set (the twin of `personaagent/sqlite.py`).

Durable on return: every write runs in `transaction()`, which commits before the block's caller goes on.
Connections run in autocommit, so a plain read is one round trip, without BEGIN/COMMIT around it.

Schema migrations are a short ordered list of SQL scripts per component (store, documents, jobs), applied
at start by `migrate` inside one transaction under a transaction-level advisory lock, with the versions
applied so far in `schema_migrations`: replicas that start together queue on the lock, and the first one
migrates while the others then find nothing left to do. Not alembic: a few tables and no ORM (alembic
needs SQLAlchemy, an env.py and a versions folder per component), and the migration must run on the pool's
own connection, in the same transaction as `pg_advisory_xact_lock`, so a crash mid-way leaves nothing
half applied. Per component rather than one list: each component owns its tables in its own layer
(`personaagent/` may not import memory or alignment), and a process migrates only what it opens (the
alignment deployment never touches the memory tables).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from personaagent.settings import StoreSettings

logger = logging.getLogger(__name__)

# pg_advisory_xact_lock key of every migration ("personaagent-schema" in ASCII, truncated to 63 bits).
MIGRATION_LOCK_KEY = 0x706572736F6E61


class StoreUnavailable(RuntimeError):
    """The database cannot be reached (down, failing over, or no free connection in time): transient."""


def redacted(url: str) -> str:
    """host:port/dbname of a connection URL: what logs and errors may show (never the password)."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparsable store.url>"
    return f"{params.get('host') or 'localhost'}:{params.get('port') or 5432}/{params.get('dbname') or ''}"


def _configure(conn: psycopg.Connection[Any]) -> None:
    # Timestamps come back in UTC whatever the server's default zone is.
    conn.execute("SET TIME ZONE 'UTC'")


class PostgresDatabase:
    """A connection pool on `settings.url`, opened (and reached) on construction."""

    def __init__(self, settings: StoreSettings, name: str = "personaagent") -> None:
        url = settings.url.get_secret_value()
        self.where = redacted(url)
        self._pool: ConnectionPool[psycopg.Connection[DictRow]] = ConnectionPool(
            url,
            kwargs={
                "autocommit": True,
                "row_factory": dict_row,
                "connect_timeout": max(1, math.ceil(settings.connect_timeout_s)),
                "application_name": name,
            },
            min_size=settings.pool_min_size,
            max_size=settings.pool_max_size,
            timeout=settings.connect_timeout_s,
            configure=_configure,
            # A connection the server dropped (restart, failover) is replaced before a request gets it.
            check=ConnectionPool.check_connection,
            name=name,
            open=False,
        )
        try:
            self._pool.open(wait=True, timeout=settings.connect_timeout_s)
        except PoolTimeout as exc:
            self._pool.close()
            raise StoreUnavailable(
                f"no connection to PostgreSQL at {self.where} within {settings.connect_timeout_s:g} s "
                "(store.url, store.connect_timeout_s)"
            ) from exc
        logger.info("store: PostgreSQL at %s (pool %s)", self.where, name)

    @staticmethod
    def sql(text: str) -> str:
        """A statement shared with SQLite (written with its `?` placeholders), as psycopg takes it: each `?`
        becomes `%s`. Shared statements hold no literal `?` or `%` (values travel only as parameters)."""
        return text.replace("?", "%s")

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[DictRow]]:
        """A pooled connection in autocommit; connection failures surface as `StoreUnavailable`."""
        try:
            with self._pool.connection() as conn:
                yield conn
        except PoolTimeout as exc:
            raise StoreUnavailable(f"no free connection to PostgreSQL at {self.where}") from exc
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"PostgreSQL at {self.where}: {exc}") from exc

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[DictRow]]:
        """All or nothing, committed before the block's caller goes on."""
        with self.connection() as conn, conn.transaction():
            yield conn

    def query(self, sql: str, params: Sequence[Any] = (), *, binary: bool = False) -> list[DictRow]:
        """Rows of one read. `binary`: bytea columns travel as bytes, not hex text (embeddings)."""
        with self.connection() as conn:
            return conn.execute(sql, params, binary=binary).fetchall()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One statement in its own transaction; the number of rows it changed."""
        with self.connection() as conn:
            return conn.execute(sql, params).rowcount

    def migrate(self, component: str, migrations: Sequence[str]) -> int:
        """Apply `component`'s migrations not applied yet, in order; how many ran. Append-only: a shipped
        entry is never edited (databases out there have run it), a change is a new entry."""
        with self.transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (component TEXT NOT NULL, version INTEGER NOT"
                " NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY (component, version))"
            )
            row = conn.execute(
                "SELECT COALESCE(MAX(version), 0) AS v FROM schema_migrations WHERE component = %s",
                (component,),
            ).fetchone()
            applied = int(row["v"]) if row else 0
            if applied > len(migrations):
                logger.warning(
                    "schema %s is at version %d, newer than this code's %d: running on it unchanged",
                    component, applied, len(migrations),
                )  # fmt: skip
            for version in range(applied + 1, len(migrations) + 1):
                conn.execute(migrations[version - 1])  # no parameters: several statements may follow
                conn.execute(
                    "INSERT INTO schema_migrations(component, version) VALUES (%s, %s)", (component, version)
                )
        ran = max(0, len(migrations) - applied)
        if ran:
            logger.info("schema %s migrated from version %d to %d", component, applied, len(migrations))
        return ran

    def close(self) -> None:
        """Idempotent: the store and the documents of one memory replica share a database."""
        self._pool.close()
