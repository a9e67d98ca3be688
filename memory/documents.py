"""Operator-loaded document collection (the on-prem stand-in for the paper's web search).

Files (text/Markdown in a folder, or JSONL with a `text` field) are chunked, embedded, stored in SQLite
with their vectors, and searched through their own FAISS index, shared by every user.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from memory.embedder import Embedder
from memory.records import DocumentHit
from memory.vectors import FlatVectorIndex
from personaagent.sqlite import SQLiteFile

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


class DocumentIndex:
    """Chunks in SQLite (source of truth, with vectors), searched through one flat vector index."""

    def __init__(self, db_path: Path, dim: int) -> None:
        self._db = SQLiteFile(db_path, DOCUMENTS_SCHEMA)
        self.dim = dim
        self._vectors = FlatVectorIndex(dim)
        self._reload = threading.Lock()  # two loads' reloads must not swap in an older read last
        self.reload()

    def reload(self) -> int:
        with self._reload:
            rows = self._db.query("SELECT id, embedding FROM documents ORDER BY id")
            vectors = FlatVectorIndex(self.dim)
            if rows:
                vectors.add(
                    np.asarray([r[0] for r in rows], dtype=np.int64),
                    np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows]),
                )
            self._vectors = vectors  # one reference swap: a search sees the old or the new collection whole
            return len(rows)

    def load(self, path: Path, embedder: Embedder, *, max_files: int, replace: bool = False) -> int:
        chunks = [(src, c) for src, text in read_documents(path, max_files) for c in chunk_text(text)]
        vectors = embedder.encode([c for _, c in chunks]) if chunks else np.zeros((0, self.dim), np.float32)
        with self._db.transaction() as conn:
            if replace:
                conn.execute("DELETE FROM documents")
            conn.executemany(
                "INSERT INTO documents(source, text, embedding) VALUES (?, ?, ?)",
                [(s, c, v.tobytes()) for (s, c), v in zip(chunks, vectors, strict=True)],
            )
        self.reload()
        return len(chunks)

    def search(self, vectors: np.ndarray, k: int) -> list[DocumentHit]:
        chosen = self._vectors.search(vectors, k)[0]  # one query
        if not chosen:
            return []
        rows = {
            r[0]: r
            for r in self._db.query(
                f"SELECT id, source, text FROM documents WHERE id IN ({','.join('?' * len(chosen))})",
                [i for i, _ in chosen],
            )
        }
        return [DocumentHit(source=rows[i][1], text=rows[i][2], score=s) for i, s in chosen if i in rows]

    def count(self) -> int:
        return self._vectors.ntotal

    def close(self) -> None:
        self._db.close()
