"""Document collection: chunking, loading (folder and JSONL), limits, and search with the real embedder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memory.documents import DocumentIndex, chunk_text, read_documents
from memory.embedder import Embedder


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


def test_chunks_are_bounded_and_cover_the_text() -> None:
    text = "\n\n".join(f"Paragraph {i}. " + "word " * 60 for i in range(10))
    chunks = chunk_text(text, max_chars=500, overlap=50)
    assert all(len(c) <= 500 + 50 + 2 for c in chunks)
    for i in range(10):
        assert any(f"Paragraph {i}." in c for c in chunks)


def test_folder_and_jsonl_load_and_search(tmp_path: Path, embedder: Embedder) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "paris.md").write_text("# Paris\n\nThe Louvre is the world's most visited museum.")
    (folder / "ignored.bin").write_bytes(b"\x00\x01")
    jsonl = tmp_path / "facts.jsonl"
    jsonl.write_text(
        json.dumps({"id": "volcano", "text": "Mount Etna is an active volcano in Sicily."}) + "\n"
    )
    index = DocumentIndex(tmp_path / "docs.db", embedder.dim)
    assert index.load(folder, embedder, max_files=10) == 1
    assert index.load(jsonl, embedder, max_files=10) == 1
    hits = index.search(embedder.encode(["Which volcano is in Sicily?"]), k=2)
    assert hits[0].source == "volcano" and "Etna" in hits[0].text
    reopened = DocumentIndex(tmp_path / "docs.db", embedder.dim)
    assert reopened.count() == 2
    index.close()
    reopened.close()


def test_limits_and_bad_files(tmp_path: Path) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.txt").write_text("x")
    with pytest.raises(ValueError, match="exceed the limit"):
        list(read_documents(folder, max_files=2))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"no_text": 1}\n')
    with pytest.raises(ValueError, match="text"):
        list(read_documents(bad, max_files=10))
    with pytest.raises(ValueError):
        list(read_documents(tmp_path / "missing.pdf", max_files=10))
