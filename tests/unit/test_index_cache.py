"""Memory replicas over one store: each replica's FAISS indexes are a cache that every search checks
against the user's version, so a write through one replica is found through another at once; loads run
per user; a start on PostgreSQL loads nothing; persona writes that must happen once happen once across
replicas. Every store test runs on SQLite and on PostgreSQL (a real server: tests/postgres.py); a
"replica" is a `MemoryService` with its own store handle and its own index, as in another process."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from memory.backends import open_store
from memory.index import EpisodicIndex
from memory.records import InteractionIn, PersonaVersion
from memory.service import MemoryService
from memory.store import Store, UserVectors
from personaagent.settings import MemorySettings, Settings, StoreSettings

DIM = 8


class FixedEmbedder:
    """The replicas' embedder: these tests hand every vector in themselves."""

    dim = DIM
    batch_size = 8

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def encode(self, texts: list[str]) -> np.ndarray:
        raise AssertionError("nothing is embedded in these tests")


class Rules:
    def initial(self, profile_text: str | None) -> tuple[str, str]:
        return "You are helpful.", "persona@test"

    def bound(self, text: str) -> str:
        return text


class CountingStore:
    """A store handle that counts the index's reads of it."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.version_reads = 0
        self.vector_reads: list[int | None] = []

    def user_version(self, user_id: str) -> int | None:
        self.version_reads += 1
        return self._store.user_version(user_id)

    def user_vectors(self, user_id: str, after_id: int | None = None) -> UserVectors:
        self.vector_reads.append(after_id)
        return self._store.user_vectors(user_id, after_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else ""
    return Settings(data_dir=tmp_path, store=StoreSettings(url=url))


Replica = Callable[..., MemoryService]


@pytest.fixture
def replica(settings: Settings) -> Iterator[Replica]:
    """Opens a memory replica on the test's database (each call: another one)."""
    opened: list[MemoryService] = []

    def open_(**limits: Any) -> MemoryService:
        store = CountingStore(open_store(settings))
        service = MemoryService(
            store,  # type: ignore[arg-type]
            FixedEmbedder(),  # type: ignore[arg-type]
            EpisodicIndex(DIM, "cpu", max_users=limits.pop("index_cache_users", 100)),
            MemorySettings(device="cpu", **limits),
            persona_rules=Rules(),
        )
        opened.append(service)
        return service

    yield open_
    for service in opened:
        service.close()


def _vectors(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _write(service: MemoryService, user: str, n: int, seed: int) -> list[int]:
    items = [InteractionIn(input=f"{user} note {seed}-{i}") for i in range(n)]
    return service.add_interactions_sync(user, items, "import", _vectors(n, seed))


def _found(service: MemoryService, user: str) -> set[int]:
    """Every id a search of the user returns (k past anything these tests store)."""
    return {hit.interaction.id for hit in service.search_vectors(user, _vectors(1, 99), 100)[0]}


def _reads(service: MemoryService) -> CountingStore:
    return service.store  # type: ignore[return-value]


def test_a_write_through_one_replica_is_found_through_the_other_at_once(replica: Replica) -> None:
    a, b = replica(), replica()
    first = _write(a, "ann", 3, 1)
    assert _found(b, "ann") == set(first)  # b never saw the write: a cold load from the store
    assert b.index.cache_loads == 1
    more = _write(a, "ann", 2, 2)  # b's cached index is now behind
    assert _found(b, "ann") == set(first + more)
    # Caught up with the two new rows only, not loaded again.
    assert (b.index.cache_loads, b.index.cache_catch_ups) == (1, 1)
    assert _reads(b).vector_reads == [None, max(first)]
    mine = _write(b, "ann", 1, 3)  # and back the other way, through the replica that has it cached
    assert _found(a, "ann") == _found(b, "ann") == set(first + more + mine)


def test_a_warm_search_reads_one_version_and_no_vectors(replica: Replica) -> None:
    a = replica()
    _write(a, "bo", 4, 1)
    _found(a, "bo")  # the first search loads
    reads = _reads(a)
    before_versions, before_loads = reads.version_reads, list(reads.vector_reads)
    for _ in range(5):
        _found(a, "bo")
    assert reads.version_reads - before_versions == 5 and reads.vector_reads == before_loads
    assert a.index.cache_hits >= 5


def test_a_user_deleted_and_created_again_through_another_replica_is_reloaded_whole(
    replica: Replica,
) -> None:
    a, b = replica(), replica()
    old = _write(a, "cy", 3, 1)
    assert _found(b, "cy") == set(old)
    assert a.delete_user("cy")
    assert _found(b, "cy") == set() and not b.index.has_user("cy")  # gone at once, from b's cache too
    new = _write(a, "cy", 2, 2)
    assert _found(b, "cy") == set(new)
    assert a.delete_user("cy")
    again = _write(a, "cy", 2, 3)  # deleted and created again between two of b's searches
    found = _found(b, "cy")
    assert found == set(again) and found.isdisjoint(old + new)  # nothing of the old incarnation stays
    assert b.index.cache_catch_ups == 0  # a new generation is never appended to the old index


def test_nothing_of_a_refused_write_reaches_a_cache(replica: Replica) -> None:
    a, b = replica(max_items_per_user=3), replica()
    ids = _write(a, "dee", 3, 1)
    assert _found(b, "dee") == set(ids)
    with pytest.raises(Exception, match="max_items_per_user"):
        _write(a, "dee", 1, 2)
    assert _found(b, "dee") == set(ids) and _found(a, "dee") == set(ids)


def test_a_start_on_postgresql_loads_no_index_and_on_sqlite_at_most_the_cache(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("memory.service.Embedder", FixedEmbedder)
    writer = open_store(settings)
    users = [f"u{i}" for i in range(5)]
    for n, user in enumerate(users):
        writer.add_interactions(user, [InteractionIn(input="x")], _vectors(1, n), "import")
    writer.close()
    small_cache = settings.model_copy(
        update={"memory": settings.memory.model_copy(update={"index_cache_users": 3, "device": "cpu"})}
    )
    service = MemoryService.open(small_cache)
    try:
        cached = service.index.users()
        assert cached == ([] if settings.store.postgres else users[:3])
        assert len(_found(service, "u4")) == 1  # every user still answers, loaded on first use
    finally:
        service.close()


class BlockingSource:
    """A store whose load of one user's vectors waits for an event (a large cold history)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.loading = threading.Event()

    def user_version(self, user_id: str) -> int | None:
        return 1

    def user_vectors(self, user_id: str, after_id: int | None = None) -> UserVectors:
        if user_id == "cold":
            self.loading.set()
            assert self.release.wait(30)
        return UserVectors(version=1, generation=0, ids=np.arange(3), vectors=_vectors(3, len(user_id)))


def test_one_cold_users_load_does_not_hold_up_the_others() -> None:
    source = BlockingSource()
    index = EpisodicIndex(DIM, "cpu", source=source)
    query = _vectors(1, 5)
    assert len(index.search("warm", query, 3)[0]) == 3
    with ThreadPoolExecutor(2) as pool:
        cold = pool.submit(index.search, "cold", query, 3)
        assert source.loading.wait(10)
        started = time.monotonic()
        other = pool.submit(index.search, "other", query, 3)  # another cold user loads meanwhile
        assert len(index.search("warm", query, 3)[0]) == 3
        assert len(other.result(timeout=5)[0]) == 3
        assert time.monotonic() - started < 5 and not cold.done() and index.loading() == 1
        source.release.set()
        assert len(cold.result(timeout=10)[0]) == 3


# -- persona writes that must happen once, across replicas ---------------------------------------------


def test_of_alignments_based_on_one_version_through_several_replicas_one_writes(replica: Replica) -> None:
    replicas = [replica() for _ in range(6)]
    _write(replicas[0], "eve", 1, 1)
    base = asyncio.run(replicas[0].persona_for("eve"))
    assert base is not None
    start = threading.Barrier(len(replicas))

    def align(n: int) -> PersonaVersion | None:
        start.wait()
        return replicas[n].set_persona_if_current("eve", f"aligned {n}", base.version, {"job_id": f"j{n}"})

    with ThreadPoolExecutor(len(replicas)) as pool:
        written = [v for v in pool.map(align, range(len(replicas))) if v is not None]
    history = replicas[1].persona_history("eve") or []
    assert len(written) == 1 and [p.reason for p in history] == ["init", "alignment"]
    assert history[-1].text == written[0].text and history[-1].parent == base.version


def test_a_users_first_chats_on_two_replicas_store_one_first_persona(replica: Replica) -> None:
    a, b = replica(), replica()
    both_read = threading.Barrier(2)

    class MeetingRules(Rules):
        def initial(self, profile_text: str | None) -> tuple[str, str]:
            both_read.wait(10)  # each replica has found no persona before either writes one
            return super().initial(profile_text)

    a.persona_rules = b.persona_rules = MeetingRules()
    with ThreadPoolExecutor(2) as pool:
        first = list(pool.map(lambda svc: asyncio.run(svc.ensure_persona("fay")), (a, b)))
    stored = a.persona_history("fay") or []
    assert [p.version for p in stored] == [1] and [p.version for p in first] == [1, 1]
