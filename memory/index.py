"""Episodic memory index: one flat inner-product index (`memory.vectors`) per user, a cache of the store.

Design (see the memory issue's measurements): a per-user `IndexFlatIP` answers a top-k in ~0.02 ms for
hundreds of vectors, and isolation is structural -- a search only ever touches the asking user's index,
so it can never return another user's memory. We deliberately do not use one shared index filtered by
`IDSelector`: FAISS's classic GPU indexes accept a selector but ignore it and implement no `remove_ids`,
and filtering after a global search (mem0's approach) returns too few or foreign results.

With a `source` (the store), the indexes are a per-replica cache that is never trusted on its own: every
search first reads the user's version (`user_version`, one primary-key read). The same version as the
cached index: the index is current. Another one: the rows written since (by this replica or any other)
are appended (`user_vectors(after_id=...)`), or, when the user's generation changed (deleted and created
again), the index is loaded anew. So a write through one replica is found by a search through any other
at once, and several memory replicas need no messages between them. Writes do not touch the cache: the
next search of the user reads what they added, which costs one small read and avoids any ordering
question between writers.

Bounded memory: at most `max_users` indexes stay in RAM, least recently used evicted first; an evicted
or never-loaded user's index loads from the store on their next search (eviction changes latency, never
results). Loads run under a per-user lock, never under the cache's: one cold user with a large history
does not hold up the searches of the others. Without a source (unit tests, benchmarks), `add` builds the
indexes and nothing is checked.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, Protocol

import faiss
import numpy as np

from memory.vectors import FlatVectorIndex, gpu_count


class UserVectorsLike(Protocol):
    """`memory.store.UserVectors` (not imported: the store module imports nothing of the index)."""

    version: int | None
    generation: int
    ids: np.ndarray
    vectors: np.ndarray


class VectorSource(Protocol):
    """What the cache reads from the store (`memory.store.Store` has both)."""

    def user_version(self, user_id: str) -> int | None: ...
    def user_vectors(self, user_id: str, after_id: int | None = None) -> UserVectorsLike: ...


class _UserIndex(FlatVectorIndex):
    """A user's index and what it was loaded from: the user's version and generation then, and the highest
    id it holds (rows after it are what a catch-up reads; ids of one user grow in commit order)."""

    version: int | None = None
    generation: int = 0
    loaded_up_to: int = -1


@dataclass
class _KeyLock:
    lock: threading.Lock
    holders: int = 0


class _PerUserLocks:
    """One lock per user, kept only while someone holds or waits for it (so the map stays small)."""

    def __init__(self) -> None:
        self._locks: dict[str, _KeyLock] = {}
        self._guard = threading.Lock()

    @contextmanager
    def hold(self, user_id: str) -> Iterator[None]:
        with self._guard:
            entry = self._locks.get(user_id)
            if entry is None:
                entry = self._locks[user_id] = _KeyLock(threading.Lock())
            entry.holders += 1
        try:
            with entry.lock:
                yield
        finally:
            with self._guard:
                entry.holders -= 1
                if entry.holders == 0:
                    del self._locks[user_id]

    def __len__(self) -> int:
        return len(self._locks)


class EpisodicIndex:
    def __init__(
        self,
        dim: int,
        device: Literal["auto", "cpu", "gpu"] = "auto",
        max_users: int = 10_000,
        source: VectorSource | None = None,
    ) -> None:
        self.dim = dim
        self.max_users = max_users
        self.source = source
        gpus = gpu_count()
        if device == "gpu" and gpus == 0:
            raise RuntimeError("memory.device is 'gpu' but faiss reports no GPU")
        self.on_gpu = device == "gpu" or (device == "auto" and gpus > 0)
        self._gpu_resources = faiss.StandardGpuResources() if self.on_gpu else None
        self._users: OrderedDict[str, _UserIndex] = OrderedDict()  # least recently used first
        self._users_lock = threading.Lock()  # the user -> index map only; loads hold a per-user lock
        self._loading = _PerUserLocks()
        # Reads of the cache, for the memory deployment's metrics (plain counts: no metrics library here).
        self.cache_hits = 0  # the cached index was current
        self.cache_loads = 0  # a user's index was loaded from the store (first use, eviction, a re-creation)
        self.cache_catch_ups = 0  # rows written since (through any replica) were appended to a cached index

    @property
    def device(self) -> str:
        return "gpu" if self.on_gpu else "cpu"

    # -- the map ---------------------------------------------------------------------------------------

    def _cached(self, user_id: str) -> _UserIndex | None:
        with self._users_lock:
            index = self._users.get(user_id)
            if index is not None:
                self._users.move_to_end(user_id)
            return index

    def _insert_locked(self, user_id: str, index: _UserIndex) -> None:
        """Under `_users_lock`: cache the user's index, evicting the least recently used past the cap. An
        evicted index is dropped, not reset: a search that holds it still finishes on it."""
        self._users[user_id] = index
        self._users.move_to_end(user_id)
        while len(self._users) > self.max_users:
            self._users.popitem(last=False)

    def _insert(self, user_id: str, index: _UserIndex) -> None:
        with self._users_lock:
            self._insert_locked(user_id, index)

    def _drop(self, user_id: str, only: _UserIndex | None = None) -> None:
        """Forget the user's index (`only`: if it is still this one); its vectors are freed at once."""
        with self._users_lock:
            index = self._users.get(user_id)
            if index is None or (only is not None and index is not only):
                return
            del self._users[user_id]
        index.reset()

    # -- the versioned cache -----------------------------------------------------------------------

    def _new_index(self, vectors: UserVectorsLike) -> _UserIndex:
        index = _UserIndex(self.dim, self._gpu_resources)
        index.add(vectors.ids, vectors.vectors)
        index.version = vectors.version
        index.generation = vectors.generation
        index.loaded_up_to = int(vectors.ids.max()) if len(vectors.ids) else -1
        return index

    def _current(self, user_id: str) -> _UserIndex | None:
        """The user's index as of now in the store (None: no such user, or nothing stored for them)."""
        assert self.source is not None
        version = self.source.user_version(user_id)  # the one read a warm search costs
        if version is None:
            self._drop(user_id)
            return None
        index = self._cached(user_id)
        if index is not None and index.version == version:
            self.cache_hits += 1
            return index
        with self._loading.hold(user_id):
            index = self._cached(user_id)  # another search may have brought it up to date meanwhile
            if index is not None and index.version is not None and index.version >= version:
                self.cache_hits += 1  # versions only grow: it is at least as new as what we read
                return index
            return self._refresh(user_id, index)

    def _refresh(self, user_id: str, cached: _UserIndex | None) -> _UserIndex | None:
        """Under the user's loading lock: catch the cached index up, or load it whole."""
        assert self.source is not None
        if cached is not None:
            newer = self.source.user_vectors(user_id, after_id=cached.loaded_up_to)
            if newer.version is None:
                self._drop(user_id, cached)
                return None
            if newer.generation == cached.generation:
                if len(newer.ids):  # rows first, then the version: a reader that sees it sees them
                    cached.add(newer.ids, newer.vectors)
                    cached.loaded_up_to = int(newer.ids.max())
                cached.version = newer.version
                self.cache_catch_ups += 1
                return cached
            self._drop(user_id, cached)  # deleted and created again: nothing of the old one may stay
        whole = self.source.user_vectors(user_id)
        if whole.version is None or len(whole.ids) == 0:
            return None  # nothing to cache: a user without rows costs no slot
        index = self._new_index(whole)
        self._insert(user_id, index)
        self.cache_loads += 1
        return index

    def warm(self, user_id: str) -> bool:
        """Load the user's index now (a start that fills the cache ahead); False when nothing is stored."""
        if self.source is None:
            return False
        return self._current(user_id) is not None

    # -- the API the service uses ----------------------------------------------------------------

    def add(self, user_id: str, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Rows just committed to the store. With a source, nothing to do: the next search of the user
        sees the new version and reads them (in commit order, whoever wrote them). Without one, they are
        the index."""
        if self.source is not None or len(ids) == 0:
            return
        with self._users_lock:
            index = self._users.get(user_id)
            if index is None:
                index = _UserIndex(self.dim, self._gpu_resources)
            self._insert_locked(user_id, index)
        index.add(np.asarray(ids, dtype=np.int64), vectors)

    def search(self, user_id: str, queries: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
        """Top-k (interaction id, score) per query row, from this user's vectors only."""
        index = self._current(user_id) if self.source is not None else self._cached(user_id)
        if index is None:
            return [[] for _ in range(len(np.asarray(queries).reshape(-1, self.dim)))]
        return index.search(queries, k)

    def remove_user(self, user_id: str) -> None:
        self._drop(user_id)

    def clear(self) -> None:
        for user_id in self.users():
            self._drop(user_id)

    def has_user(self, user_id: str) -> bool:
        return user_id in self._users

    def total(self) -> int:
        return sum(index.ntotal for index in list(self._users.values()))

    def users(self) -> list[str]:
        return list(self._users)

    def loading(self) -> int:
        """Users whose index is being loaded or caught up right now."""
        return len(self._loading)
