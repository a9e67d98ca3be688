"""One FAISS flat inner-product index with the caller's ids beside it: the only vector index in memory.

Positions -> ids live in a NumPy array, which works the same on CPU and GPU (GPU flat indexes have no
`add_with_ids`); it grows by doubling, so appends are amortized O(1) (an import of n rows in small adds
copies O(n) ids, not O(n^2)). Every add, search and reset holds the index's lock: FAISS releases the GIL
while it searches and `add` reallocates the vectors a search reads (a GPU index is not thread-safe even for
reads); a flat top-k over one user's vectors takes ~0.02 ms, far less than a reader-writer lock saves.
"""

from __future__ import annotations

import threading
from typing import Any

import faiss
import numpy as np


def gpu_count() -> int:
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


class FlatVectorIndex:
    """Exact top-k by inner product over (id, vector) rows; ids are the caller's int64 row ids."""

    def __init__(self, dim: int, gpu_resources: Any | None = None) -> None:
        self.dim = dim
        self._index = (
            faiss.GpuIndexFlatIP(gpu_resources, dim) if gpu_resources is not None else faiss.IndexFlatIP(dim)
        )
        self._ids = np.zeros(0, dtype=np.int64)  # capacity >= ntotal; positions past ntotal are unused
        self._lock = threading.Lock()

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        new_ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        with self._lock:
            n = int(self._index.ntotal)
            if n + len(new_ids) > len(self._ids):
                grown = np.zeros(max(2 * len(self._ids), n + len(new_ids), 16), dtype=np.int64)
                grown[:n] = self._ids[:n]
                self._ids = grown  # a search's view of the old buffer stays valid
            self._ids[n : n + len(new_ids)] = new_ids  # past every position a finished search read
            self._index.add(vectors)

    def search(self, queries: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
        """Top-k (id, score) per query row, best first."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        with self._lock:
            if self._index.ntotal == 0:
                return [[] for _ in range(len(queries))]
            scores, positions = self._index.search(queries, min(k, int(self._index.ntotal)))
            ids = self._ids[: int(self._index.ntotal)]  # the positions' ids, as of this search
        return [
            [(int(ids[p]), float(s)) for p, s in zip(row_pos, row_scores, strict=True) if p >= 0]
            for row_pos, row_scores in zip(positions, scores, strict=True)
        ]

    def reset(self) -> None:
        with self._lock:
            self._index.reset()
            self._ids = np.zeros(0, dtype=np.int64)

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)
