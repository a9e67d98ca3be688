"""FAISS index under concurrent adds and searches on one user (threads, as the memory service runs them)."""

from __future__ import annotations

import math
import threading

import numpy as np

from memory.index import EpisodicIndex
from memory.store import UserVectors

DIM = 64


def test_concurrent_adds_and_searches_return_only_the_users_well_formed_rows() -> None:
    index = EpisodicIndex(DIM, "cpu")
    rng = np.random.default_rng(0)
    index.add("other", np.arange(10_000, 10_050), rng.standard_normal((50, DIM)).astype(np.float32))
    added: set[int] = set()
    bad: list[object] = []
    stop = threading.Event()

    def writer() -> None:
        for batch in range(1000):
            ids = np.arange(batch * 10, batch * 10 + 10)
            index.add(
                "hammered", ids, np.random.default_rng(batch).standard_normal((10, DIM)).astype(np.float32)
            )
            added.update(int(i) for i in ids)
        stop.set()

    def reader(seed: int) -> None:
        r = np.random.default_rng(seed)
        while not stop.is_set():
            try:
                rows = index.search("hammered", r.standard_normal((4, DIM)).astype(np.float32), 8)
            except Exception as exc:  # e.g. a position past the ids an unfinished add has not yet recorded
                bad.append(exc)
                continue
            for row in rows:
                for i, score in row:
                    if not (0 <= i < 10_000) or not math.isfinite(score):  # never "other"'s ids, never junk
                        bad.append((i, score))

    threads = [
        threading.Thread(target=writer),
        *(threading.Thread(target=reader, args=(s,)) for s in range(3)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not bad, bad[:5]
    assert len(added) == 10_000 and index.total() == 10_050
    hits = index.search("hammered", np.random.default_rng(9).standard_normal((1, DIM)).astype(np.float32), 5)
    assert len(hits[0]) == 5 and all(i in added for i, _ in hits[0])


def test_one_row_adds_grow_the_id_map_amortized_not_by_copying_it_each_time() -> None:
    """An import written row by row copied the whole id array per add (O(n^2)); the map doubles instead."""
    from memory.vectors import FlatVectorIndex

    index = FlatVectorIndex(DIM)
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((4000, DIM)).astype(np.float32)
    buffers: list[np.ndarray] = []  # kept alive, so each new buffer is a new object
    for i in range(len(vectors)):
        index.add(np.array([1000 + i]), vectors[i : i + 1])
        if not buffers or buffers[-1] is not index._ids:
            buffers.append(index._ids)
    assert len(buffers) <= 16, len(buffers)  # ~log2(4000) reallocations, not 4000
    for i in (0, 1, 1999, 3999):  # every row still answers with its own id
        assert index.search(vectors[i], 1)[0][0][0] == 1000 + i
    assert index.ntotal == 4000


class StoredVectors:
    """A `VectorSource` over fixed rows: every user at version 1, generation 0."""

    def __init__(self, stored: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        self.stored = stored
        self.loads: list[str] = []

    def user_version(self, user_id: str) -> int | None:
        return 1 if user_id in self.stored else None

    def user_vectors(self, user_id: str, after_id: int | None = None) -> UserVectors:
        self.loads.append(user_id)
        ids, vectors = self.stored[user_id]
        return UserVectors(version=1, generation=0, ids=ids, vectors=vectors)


def test_an_evicted_users_index_reloads_from_the_store() -> None:
    rng = np.random.default_rng(2)
    source = StoredVectors(
        {
            u: (np.arange(n * 10, n * 10 + 5), rng.standard_normal((5, DIM)).astype(np.float32))
            for n, u in enumerate("abc")
        }
    )
    index = EpisodicIndex(DIM, "cpu", max_users=2, source=source)
    query = rng.standard_normal((1, DIM)).astype(np.float32)
    first = {u: index.search(u, query, 3) for u in "abc"}
    assert index.users() == ["b", "c"] and source.loads == ["a", "b", "c"]
    assert index.search("a", query, 3) == first["a"] and source.loads[-1] == "a"  # reloaded, same top-k
    assert index.search("nobody", query, 3) == [[]] and "nobody" not in index.users()
