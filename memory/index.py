"""Episodic memory index: one flat inner-product index (`memory.vectors`) per user.

Design (see the memory issue's measurements): a per-user `IndexFlatIP` answers a top-k in ~0.02 ms for
hundreds of vectors, and isolation is structural -- a search only ever touches the asking user's index,
so it can never return another user's memory. We deliberately do not use one shared index filtered by
`IDSelector`: FAISS's classic GPU indexes accept a selector but ignore it and implement no `remove_ids`,
and filtering after a global search (mem0's approach) returns too few or foreign results. Deleting a user
drops their index; deleting single rows rebuilds it.

Bounded memory: at most `max_users` indexes stay in RAM, least recently used evicted first. With a
`loader` (the store's per-user embeddings), an evicted or never-loaded user's index is rebuilt from the
database on its next search or add, so eviction changes latency, never results.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Literal

import faiss
import numpy as np

from memory.vectors import FlatVectorIndex, gpu_count

# user id -> (ids, vectors) of everything stored for the user, in id order
Loader = Callable[[str], tuple[np.ndarray, np.ndarray]]


class _UserIndex(FlatVectorIndex):
    """A user's index and the highest id its load read: rows up to it are in already (ids only grow)."""

    loaded_up_to: int = -1


class EpisodicIndex:
    def __init__(
        self,
        dim: int,
        device: Literal["auto", "cpu", "gpu"] = "auto",
        max_users: int = 10_000,
        loader: Loader | None = None,
    ) -> None:
        self.dim = dim
        self.max_users = max_users
        self.loader = loader
        gpus = gpu_count()
        if device == "gpu" and gpus == 0:
            raise RuntimeError("memory.device is 'gpu' but faiss reports no GPU")
        self.on_gpu = device == "gpu" or (device == "auto" and gpus > 0)
        self._gpu_resources = faiss.StandardGpuResources() if self.on_gpu else None
        self._users: OrderedDict[str, _UserIndex] = OrderedDict()  # least recently used first
        self._users_lock = threading.Lock()  # the user -> index map (and loads); each index locks itself

    @property
    def device(self) -> str:
        return "gpu" if self.on_gpu else "cpu"

    def _insert(self, user_id: str, index: _UserIndex) -> None:
        """Under `_users_lock`: cache the user's index, evicting the least recently used past the cap."""
        self._users[user_id] = index
        self._users.move_to_end(user_id)
        while len(self._users) > self.max_users:
            _, evicted = self._users.popitem(last=False)
            evicted.reset()

    def _get(self, user_id: str) -> _UserIndex | None:
        """The user's index, loaded from the store when not in RAM (None: nothing stored, or no loader)."""
        with self._users_lock:
            index = self._users.get(user_id)
            if index is not None:
                self._users.move_to_end(user_id)
                return index
            if self.loader is None:
                return None
            # Loaded under the map's lock: a concurrent add waits, then appends only rows newer than it.
            ids, vectors = self.loader(user_id)
            if len(ids) == 0:
                return None  # nothing to cache: a user without rows costs no slot
            index = _UserIndex(self.dim, self._gpu_resources)
            index.add(ids, vectors)
            index.loaded_up_to = int(ids.max())
            self._insert(user_id, index)
            return index

    def load(self, user_id: str, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Replace the user's index with everything stored for them (a rebuild)."""
        index = _UserIndex(self.dim, self._gpu_resources)
        index.add(ids, vectors)
        index.loaded_up_to = int(np.max(ids)) if len(ids) else -1
        with self._users_lock:
            old = self._users.pop(user_id, None)
            self._insert(user_id, index)
        if old is not None:
            old.reset()

    def add(self, user_id: str, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Rows just committed to the store. A user not in RAM is loaded from the store instead (which
        holds these rows already); without a loader, a new index starts from these rows."""
        if len(ids) == 0:
            return
        ids = np.asarray(ids, dtype=np.int64)
        if self.loader is not None:
            index = self._get(user_id)
            if index is None:
                return  # the rows are gone again (the user was deleted): nothing to index
        else:
            with self._users_lock:
                index = self._users.get(user_id)
                if index is None:
                    index = _UserIndex(self.dim, self._gpu_resources)
                    self._insert(user_id, index)
                else:
                    self._users.move_to_end(user_id)
        fresh = ids > index.loaded_up_to  # rows a load read already are not added twice
        if fresh.all():
            index.add(ids, vectors)
        elif fresh.any():
            index.add(ids[fresh], np.asarray(vectors).reshape(len(ids), -1)[fresh])

    def search(self, user_id: str, queries: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
        """Top-k (interaction id, score) per query row, from this user's vectors only."""
        index = self._get(user_id)
        if index is None:
            return [[] for _ in range(len(np.asarray(queries).reshape(-1, self.dim)))]
        return index.search(queries, k)

    def remove_user(self, user_id: str) -> None:
        with self._users_lock:
            index = self._users.pop(user_id, None)
        if index is not None:
            index.reset()

    def has_user(self, user_id: str) -> bool:
        return user_id in self._users

    def total(self) -> int:
        return sum(index.ntotal for index in list(self._users.values()))

    def users(self) -> list[str]:
        return list(self._users)
