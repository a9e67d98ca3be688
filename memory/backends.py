"""Where memory's state lives, from one setting (`store.url`): the SQLite file under data_dir (empty) or
the shared PostgreSQL database. The one place that picks the backend for the store and the documents."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from memory.documents import DocumentIndex, PostgresDocumentRows
from memory.store import SQLiteStore, Store
from personaagent.settings import Settings

if TYPE_CHECKING:  # psycopg is imported only where a PostgreSQL store is configured
    from personaagent.postgres import PostgresDatabase

T = TypeVar("T")


def sqlite_path(settings: Settings) -> Path:
    return Path(settings.data_dir) / settings.memory.db_filename


def _on_postgres(settings: Settings, name: str, build: Callable[[PostgresDatabase], T]) -> T:
    """`build` over a new pool on `store.url` (migrating what it opens); the pool closes if it fails."""
    from personaagent.postgres import PostgresDatabase

    db = PostgresDatabase(settings.store, name=name)
    try:
        return build(db)
    except BaseException:
        db.close()
        raise


def _postgres_store(db: PostgresDatabase) -> Store:
    from memory.pg_store import PostgresStore

    return PostgresStore(db)


def open_memory_storage(settings: Settings, dim: int) -> tuple[Store, DocumentIndex]:
    """The store and the document index of a memory replica (on PostgreSQL: over one connection pool;
    closing either closes it)."""
    if not settings.store.postgres:
        return SQLiteStore(sqlite_path(settings)), DocumentIndex(sqlite_path(settings), dim)
    return _on_postgres(
        settings,
        "personaagent-memory",
        lambda db: (_postgres_store(db), DocumentIndex(PostgresDocumentRows(db), dim)),
    )


def open_store(settings: Settings) -> Store:
    if not settings.store.postgres:
        return SQLiteStore(sqlite_path(settings))
    return _on_postgres(settings, "personaagent-store", _postgres_store)


def open_documents(settings: Settings, dim: int) -> DocumentIndex:
    """The document index alone (`personaagent docs load`)."""
    if not settings.store.postgres:
        return DocumentIndex(sqlite_path(settings), dim)
    return _on_postgres(
        settings, "personaagent-documents", lambda db: DocumentIndex(PostgresDocumentRows(db), dim)
    )
