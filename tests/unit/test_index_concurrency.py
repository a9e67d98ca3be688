"""FAISS index under concurrent adds and searches on one user (threads, as the memory service runs them)."""

from __future__ import annotations

import math
import threading

import numpy as np

from memory.index import EpisodicIndex

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
