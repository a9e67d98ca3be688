"""Operator-loaded document collection (the on-prem stand-in for the paper's web search).

Files (text/Markdown in a folder, or JSONL with a `text` field) are chunked, embedded, stored with their
vectors (in the SQLite file, or in PostgreSQL when `store.url` is set), and searched through their own
FAISS index, shared by every user.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from pydantic import BaseModel

from memory.embedder import Embedder
from memory.records import DocumentHit
from memory.store import vector_bytes, vectors_from_bytes
from memory.vectors import FlatVectorIndex
from personaagent.sqlite import SQLiteFile

if TYPE_CHECKING:  # psycopg is imported only where a PostgreSQL store is configured
    from personaagent.postgres import PostgresDatabase

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".rst"}


class DocumentChunk(BaseModel):
    source: str
    text: str


def chunk_text(text: str, max_chars: int = 800, overlap: int = 100) -> list[str]:
    """Paragraph-aware chunks of at most `max_chars`, overlapping a little so facts are not cut apart."""
    paragraphs = [p.strip() for p in text.replace("\r\n", "\n").split("\n\n") if p.strip()]
    chunks: list[str] = []
    current = ""
    for para in paragraphs:
        while len(para) > max_chars:
            head, para = para[:max_chars], para[max_chars - overlap :]
            if current:
                chunks.append(current)
                current = ""
            chunks.append(head)
        if len(current) + len(para) + 2 > max_chars and current:
            chunks.append(current)
            current = current[-overlap:] + "\n\n" + para if overlap else para
        else:
            current = f"{current}\n\n{para}" if current else para
    if current:
        chunks.append(current)
    return chunks


def read_documents(path: Path, max_files: int) -> Iterator[tuple[str, str]]:
    """(source, text) for a folder of text/Markdown files or a JSONL file."""
    if path.is_file() and path.suffix == ".jsonl":
        with path.open() as fh:
            for n, line in enumerate(fh):
                if not line.strip():
                    continue
                record = json.loads(line)
                if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                    raise ValueError(f"{path}:{n + 1}: each line needs a string field 'text'")
                yield str(record.get("source") or record.get("id") or f"{path.name}:{n + 1}"), record["text"]
        return
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        if len(files) > max_files:
            raise ValueError(f"{len(files)} files exceed the limit of {max_files} documents per load")
        for file in files:
            yield str(file.relative_to(path)), file.read_text(errors="replace")
        return
    raise ValueError(f"{path}: expected a folder of .txt/.md files or a .jsonl file")


DOCUMENTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (id INTEGER PRIMARY KEY AUTOINCREMENT, source TEXT NOT NULL,
    text TEXT NOT NULL, embedding BLOB NOT NULL);
"""

# Append-only (personaagent.postgres.PostgresDatabase.migrate): a schema change is a new entry.
DOCUMENTS_MIGRATIONS: list[str] = [
    """
    CREATE TABLE documents (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, source TEXT NOT NULL,
        text TEXT NOT NULL, embedding BYTEA NOT NULL);
    """,
]


class DocumentRows(Protocol):
    """Where the chunks and their vectors are stored (the source of truth of the index)."""

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of every chunk, in id order."""

    def store(self, chunks: Sequence[tuple[str, str]], vectors: np.ndarray, *, replace: bool) -> None:
        """Add (source, text) chunks with their vectors in one transaction; `replace`: instead of all."""

    def chunks(self, ids: Sequence[int]) -> dict[int, tuple[str, str]]:
        """id -> (source, text) of the chunks that still exist."""

    def close(self) -> None: ...


class SQLiteDocumentRows:
    def __init__(self, path: Path) -> None:
        self._db = SQLiteFile(path, DOCUMENTS_SCHEMA)

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        rows = self._db.query("SELECT id, embedding FROM documents ORDER BY id")
        return np.asarray([r[0] for r in rows], dtype=np.int64), vectors_from_bytes([r[1] for r in rows])

    def store(self, chunks: Sequence[tuple[str, str]], vectors: np.ndarray, *, replace: bool) -> None:
        with self._db.transaction() as conn:
            if replace:
                conn.execute("DELETE FROM documents")
            conn.executemany(
                "INSERT INTO documents(source, text, embedding) VALUES (?, ?, ?)",
                [(s, c, vector_bytes(v)) for (s, c), v in zip(chunks, vectors, strict=True)],
            )

    def chunks(self, ids: Sequence[int]) -> dict[int, tuple[str, str]]:
        marks = ",".join("?" * len(ids))
        rows = self._db.query(f"SELECT id, source, text FROM documents WHERE id IN ({marks})", list(ids))
        return {r[0]: (r[1], r[2]) for r in rows}

    def close(self) -> None:
        self._db.close()


class PostgresDocumentRows:
    """The documents table in the shared PostgreSQL database (`store.url`)."""

    def __init__(self, db: PostgresDatabase) -> None:
        self._db = db
        db.migrate("documents", DOCUMENTS_MIGRATIONS)

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        rows = self._db.query("SELECT id, embedding FROM documents ORDER BY id", binary=True)
        ids = np.asarray([r["id"] for r in rows], dtype=np.int64)
        return ids, vectors_from_bytes([r["embedding"] for r in rows])

    def store(self, chunks: Sequence[tuple[str, str]], vectors: np.ndarray, *, replace: bool) -> None:
        with self._db.transaction() as conn:
            if replace:
                conn.execute("DELETE FROM documents")
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO documents(source, text, embedding) VALUES (%s, %s, %s)",
                    [(s, c, vector_bytes(v)) for (s, c), v in zip(chunks, vectors, strict=True)],
                )

    def chunks(self, ids: Sequence[int]) -> dict[int, tuple[str, str]]:
        rows = self._db.query("SELECT id, source, text FROM documents WHERE id = ANY(%s)", (list(ids),))
        return {r["id"]: (r["source"], r["text"]) for r in rows}

    def close(self) -> None:
        self._db.close()


class DocumentIndex:
    """Chunks in the database (source of truth, with vectors), searched through one flat vector index.
    `rows`: a SQLite file's path, or any `DocumentRows` (PostgreSQL: `PostgresDocumentRows`)."""

    def __init__(self, rows: Path | DocumentRows, dim: int) -> None:
        self._rows: DocumentRows = SQLiteDocumentRows(rows) if isinstance(rows, Path) else rows
        self.dim = dim
        self._vectors = FlatVectorIndex(dim)
        self._reload = threading.Lock()  # two loads' reloads must not swap in an older read last
        self.reload()

    def reload(self) -> int:
        with self._reload:
            ids, stored = self._rows.vectors()
            vectors = FlatVectorIndex(self.dim)
            if len(ids):
                vectors.add(ids, stored)
            self._vectors = vectors  # one reference swap: a search sees the old or the new collection whole
            return len(ids)

    def load(self, path: Path, embedder: Embedder, *, max_files: int, replace: bool = False) -> int:
        chunks = [(src, c) for src, text in read_documents(path, max_files) for c in chunk_text(text)]
        vectors = embedder.encode([c for _, c in chunks]) if chunks else np.zeros((0, self.dim), np.float32)
        self._rows.store(chunks, vectors, replace=replace)
        self.reload()
        return len(chunks)

    def search(self, vectors: np.ndarray, k: int) -> list[DocumentHit]:
        chosen = self._vectors.search(vectors, k)[0]  # one query
        if not chosen:
            return []
        rows = self._rows.chunks([i for i, _ in chosen])
        return [DocumentHit(source=rows[i][0], text=rows[i][1], score=s) for i, s in chosen if i in rows]

    def count(self) -> int:
        return self._vectors.ntotal

    def close(self) -> None:
        self._rows.close()
