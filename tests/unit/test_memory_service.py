"""Memory service on real parts: real FAISS, the real MiniLM embedder, and a real store: every test runs
on a SQLite file and again on PostgreSQL (a real server: tests/postgres.py)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

from memory.embedder import Embedder
from memory.index import EpisodicIndex
from memory.pg_store import PostgresStore
from memory.records import Interaction, InteractionIn, StorageQuotaExceeded
from memory.service import MemoryService
from memory.store import SQLiteStore, Store
from personaagent.postgres import PostgresDatabase
from personaagent.settings import MemorySettings, Priority, StoreSettings

ROMANCE = [
    "Tag the movie: two strangers fall in love on a train across Europe",
    "Tag the movie: a widow finds love again with her childhood sweetheart",
    "Tag the movie: a royal wedding threatened by a secret affair",
]
VIOLENCE = [
    "Tag the movie: a hitman takes revenge on the gang that betrayed him",
    "Tag the movie: soldiers fight a brutal battle for a bridge",
    "Tag the movie: a bank robbery ends in a bloody shootout",
]
SECRET = "my locker combination is 41-17-93"


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


# The PostgreSQL URL of the running test ("" for SQLite), set by the `backend` fixture: `open_service`
# opens the SQLite file at `path`, or the test's PostgreSQL schema (every path of a test shares it).
POSTGRES_URL = ""


@pytest.fixture(autouse=True, params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "postgres":
        monkeypatch.setattr(f"{__name__}.POSTGRES_URL", request.getfixturevalue("postgres_url"))
    return str(request.param)


def open_store(path: Path) -> Store:
    if not POSTGRES_URL:
        return SQLiteStore(path)
    return PostgresStore(PostgresDatabase(StoreSettings(url=POSTGRES_URL)))


def open_service(path: Path, embedder: Any, writer: Any = None, **limits: Any) -> MemoryService:
    settings = MemorySettings(device="cpu", **limits)
    index = EpisodicIndex(embedder.dim, "cpu", max_users=settings.index_cache_users)
    return MemoryService(open_store(path), embedder, index, settings, writer)


def stored_rows(service: MemoryService, sql: str) -> int:
    """A COUNT(*) straight from the database, past the store's own methods."""
    if not POSTGRES_URL:
        with sqlite3.connect(service.store.path) as conn:  # type: ignore[attr-defined]
            return int(conn.execute(sql).fetchone()[0])
    with psycopg.connect(POSTGRES_URL) as conn:
        row = conn.execute(sql).fetchone()
        return int(row[0]) if row else 0


@pytest.fixture
def service(tmp_path: Path, embedder: Embedder) -> Iterator[MemoryService]:
    svc = open_service(tmp_path / "mem.db", embedder)
    yield svc
    svc.close()


def _items(texts: list[str], output: str | None = None) -> list[InteractionIn]:
    return [InteractionIn(input=t, output=output) for t in texts]


def test_two_users_get_their_own_top_k(service: MemoryService) -> None:
    service.add_interactions_sync("alice", _items(ROMANCE, "romance"), "import")
    service.add_interactions_sync("bob", _items(VIOLENCE, "violence"), "import")
    query = service.embedder.encode(["Tag the movie: a love story"])
    alice = service.search_vectors("alice", query, k=2)[0]
    bob = service.search_vectors("bob", query, k=2)[0]
    assert {h.interaction.user_id for h in alice} == {"alice"}
    assert {h.interaction.user_id for h in bob} == {"bob"}
    assert {h.interaction.id for h in alice}.isdisjoint({h.interaction.id for h in bob})
    assert alice[0].score >= alice[1].score
    assert "love" in alice[0].interaction.input


def test_secret_never_reaches_another_user(service: MemoryService) -> None:
    service.add_interactions_sync("alice", _items([SECRET, *ROMANCE]), "import")
    service.add_interactions_sync("bob", _items(VIOLENCE), "import")
    probes = [SECRET, "locker combination", "what is alice's locker combination?", "41-17-93", "secret"]
    for probe in probes:
        vectors = service.embedder.encode([probe])
        for hit in service.search_vectors("bob", vectors, k=50)[0]:
            assert hit.interaction.user_id == "bob"
            assert "41-17-93" not in hit.interaction.input
    # ...while alice herself finds it first.
    top = service.search_vectors("alice", service.embedder.encode(["locker combination"]), k=1)[0]
    assert top[0].interaction.input == SECRET


def test_k_larger_than_history_and_unknown_user(service: MemoryService) -> None:
    service.add_interactions_sync("carol", _items(ROMANCE[:2]), "import")
    vectors = service.embedder.encode(["anything"])
    assert len(service.search_vectors("carol", vectors, k=10)[0]) == 2
    assert service.search_vectors("nobody", vectors, k=4)[0] == []


def test_exclude_ids_leaves_an_interaction_out_of_its_own_retrieval(service: MemoryService) -> None:
    ids = service.add_interactions_sync("dave", _items(ROMANCE), "import")
    vectors = service.embedder.encode([ROMANCE[0]])
    hits = service.search_vectors("dave", vectors, k=3, exclude_ids=[ids[0]])[0]
    assert ids[0] not in {h.interaction.id for h in hits}
    assert len(hits) == 2


def test_restart_rebuilds_the_index_from_the_database(tmp_path: Path, embedder: Embedder) -> None:
    path = tmp_path / "mem.db"
    first = open_service(path, embedder)
    ids = first.add_interactions_sync("erin", _items(VIOLENCE), "import")
    first.close()  # the process "dies": only the SQLite file remains
    second = open_service(path, embedder)
    hits = second.search_vectors("erin", embedder.encode(["shootout after a robbery"]), k=1)[0]
    assert hits[0].interaction.id in ids
    assert "robbery" in hits[0].interaction.input
    assert second.index.total() == 3
    second.close()


def test_delete_leaves_nothing_behind(tmp_path: Path, service: MemoryService) -> None:
    service.add_interactions_sync("frank", _items([SECRET, *ROMANCE]), "import")
    service.store.add_profile("frank", "likes romance", 4, "test@v1")
    service.store.add_persona("frank", "You are...", "init", None, {})
    service.add_interactions_sync("gina", _items(VIOLENCE), "import")
    assert service.delete_user("frank") is True
    assert service.export("frank") is None
    assert not service.index.has_user("frank")
    assert service.search_vectors("frank", service.embedder.encode([SECRET]), k=4)[0] == []
    for table in ("users", "interactions", "profiles", "personas"):
        assert stored_rows(service, f"SELECT COUNT(*) FROM {table} WHERE user_id = 'frank'") == 0
    assert stored_rows(service, "SELECT COUNT(*) FROM interactions WHERE input LIKE '%41-17-93%'") == 0
    assert service.delete_user("frank") is False
    assert len(service.store.list_interactions("gina")) == 3  # other users untouched


def test_store_uses_wal_and_commits_before_returning(
    tmp_path: Path, service: MemoryService, backend: str
) -> None:
    if backend != "sqlite":
        pytest.skip("SQLite's journal mode (PostgreSQL: test_store_contract's committed-before-return test)")
    service.add_interactions_sync("hank", _items(ROMANCE), "import")
    other = sqlite3.connect(service.store.path)  # type: ignore[attr-defined]
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert other.execute("SELECT COUNT(*) FROM interactions WHERE user_id='hank'").fetchone()[0] == 3
    other.close()


def test_embeddings_are_normalized(embedder: Embedder) -> None:
    vectors = embedder.encode(["a", "a much longer sentence about cats"])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)


def test_counters_track_new_interactions_and_ground_truth(service: MemoryService) -> None:
    service.add_interactions_sync(
        "ivy", [InteractionIn(input="q1", output="a"), InteractionIn(input="q2")], "import"
    )
    user = service.store.get_user("ivy")
    assert user is not None
    assert user.interactions_since_profile == 2
    assert user.ground_truth_since_alignment == 1
    service.store.add_profile("ivy", "p", 2, "t@v1")
    assert service.store.get_user("ivy").interactions_since_profile == 0  # type: ignore[union-attr]


def test_ground_truth_makes_a_user_due_once_per_k(service: MemoryService) -> None:
    ids = service.add_interactions_sync("kim", [InteractionIn(input=f"q{i}") for i in range(4)], "chat")
    assert service.store.take_alignment_due("kim", 3) is False
    for n, interaction_id in enumerate(ids[:2]):
        row = service.store.get_interactions([interaction_id])[0]
        assert (
            service.attach_feedback("kim", f"truth {n}", completion_id=None, input_text=row.input) is not None
        )
    assert service.store.take_alignment_due("kim", 3) is False
    service.add_interactions_sync("kim", [InteractionIn(input="imported", output="label")], "import")
    assert service.store.take_alignment_due("kim", 3) is True  # 2 feedbacks + 1 imported truth = K
    assert service.store.take_alignment_due("kim", 3) is False  # exactly once
    truths = service.store.ground_truth("kim", 3)
    assert truths[0].output == "label" and len(truths) == 3
    assert service.attach_feedback("kim", "x", completion_id="nope", input_text=None) is None


def test_storage_quotas_refuse_a_write_whole(tmp_path: Path, embedder: Embedder) -> None:
    svc = open_service(tmp_path / "q.db", embedder, max_items_per_user=4, max_bytes_per_user=1_000)
    try:
        svc.add_interactions_sync("hana", _items(ROMANCE), "import")
        with pytest.raises(StorageQuotaExceeded, match="max_items_per_user"):
            svc.add_interactions_sync("hana", _items(VIOLENCE[:2]), "import")  # 3 + 2 > 4
        assert len(svc.store.list_interactions("hana")) == 3  # nothing of the refused write was kept
        assert len(svc.search_vectors("hana", embedder.encode(["a movie"]), 10)[0]) == 3
        assert svc.index.total() == 3
        with pytest.raises(StorageQuotaExceeded, match="max_bytes_per_user"):
            svc.add_interactions_sync("hana", _items(["é" * 450]), "import")  # 900 bytes, not 450 characters
        svc.add_interactions_sync("hana", _items(["short"]), "import")  # still room for one small item
        svc.add_interactions_sync("ines", _items(VIOLENCE), "import")  # the quota is per user
    finally:
        svc.close()


def test_only_the_newest_persona_and_profile_versions_are_kept(tmp_path: Path, embedder: Embedder) -> None:
    svc = open_service(tmp_path / "v.db", embedder, max_persona_versions=3, max_profile_versions=2)
    try:
        svc.add_interactions_sync("jo", _items(ROMANCE), "import")
        for n in range(5):
            svc.set_persona("jo", f"persona {n}", "manual")
            svc.store.add_profile("jo", f"profile {n}", 3, "t@v1", keep=svc.settings.max_profile_versions)
        assert [p.version for p in svc.store.list_personas("jo")] == [3, 4, 5]
        assert [p.text for p in svc.store.list_profiles("jo")] == ["profile 3", "profile 4"]
        assert svc.rollback_persona("jo", 1) is None  # pruned versions are gone for good
        assert svc.rollback_persona("jo", 3) is not None
    finally:
        svc.close()


class SlowWriter:
    prompt_ref = "profile_summary@test"

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.release = asyncio.Event()

    async def write(self, user_id: str, interactions: Sequence[Interaction], priority: int) -> str:
        self.calls.append(priority)
        await self.release.wait()
        return f"profile of {user_id}"


async def test_refreshes_of_one_user_share_one_background_write(tmp_path: Path, embedder: Embedder) -> None:
    writer = SlowWriter()
    svc = open_service(tmp_path / "r.db", embedder, writer, profile_on_import=False)
    try:
        svc.add_interactions_sync("kai", _items(ROMANCE), "import")
        refreshes = [asyncio.create_task(svc.refresh_profile("kai")) for _ in range(5)]
        await asyncio.sleep(0.05)
        writer.release.set()
        profiles = await asyncio.gather(*refreshes)
        assert writer.calls == [Priority.BACKGROUND]  # one LLM write, at background priority
        assert {p.version for p in profiles if p} == {1} and len(svc.store.list_profiles("kai")) == 1
        assert await svc.refresh_profile("nobody") is None
    finally:
        svc.close()


def test_persona_rules_bound_every_write_and_alignment_writes_only_over_its_base(
    tmp_path: Path, embedder: Embedder
) -> None:
    from agent.persona import AgentPersonaRules

    svc = open_service(tmp_path / "p.db", embedder)
    svc.persona_rules = AgentPersonaRules(max_chars=200)
    first = asyncio.run(svc.ensure_persona("pat"))
    assert first.version == 1 and len(first.text) <= 200
    long = svc.set_persona("pat", "word " * 100, "manual")
    assert long is not None and len(long.text) <= 200
    assert svc.set_persona_if_current("pat", "stale base", first.version, {}) is None  # edited meanwhile
    aligned = svc.set_persona_if_current("pat", "an aligned persona", long.version, {"job": "j"})
    assert aligned is not None and aligned.parent == long.version and aligned.reason == "alignment"
    assert [p.version for p in svc.persona_history("pat") or []] == [1, 2, 3]
    assert svc.persona_history("nobody") is None
    svc.close()


def test_a_user_is_due_once_per_k_ground_truths(tmp_path: Path, embedder: Embedder) -> None:
    svc = open_service(tmp_path / "d.db", embedder)
    svc.alignment_due_every = 2
    svc.add_interactions_sync("dee", _items(["q1"], "a"), "import")
    assert not svc.take_alignment_due("dee")
    svc.add_interactions_sync("dee", _items(["q2"], "a"), "import")
    assert svc.take_alignment_due("dee") and not svc.take_alignment_due("dee")
    svc.close()


# -- issue #22: a delete holds; a slow or failing profile never fails or blocks a chat; bounded memory ---


class Rules:
    """Persona rules as the agent hands them over, minus the agent (memory never imports it)."""

    def initial(self, profile_text: str | None) -> tuple[str, str]:
        return (f"persona from: {profile_text}" if profile_text else "persona without profile"), "init@test"

    def bound(self, text: str) -> str:
        return text


class GateWriter:
    """A profile writer the test steers: `entered` once it is writing; it finishes when `release` is set
    (or raises `error`); never released, it never finishes."""

    prompt_ref = "profile_summary@test"

    def __init__(self, error: Exception | None = None) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.error = error

    async def write(self, user_id: str, interactions: Sequence[Interaction], priority: int) -> str:
        self.entered.set()
        if self.error is not None:
            raise self.error
        await self.release.wait()
        return f"profile of {user_id}"


def _persona_service(tmp_path: Path, embedder: Any, writer: Any, **limits: Any) -> MemoryService:
    svc = open_service(tmp_path / "m.db", embedder, writer, profile_on_import=False, **limits)
    svc.persona_rules = Rules()
    return svc


async def test_a_delete_during_the_first_chats_profile_wait_holds(tmp_path: Path, embedder: Embedder) -> None:
    """History without profile -> first chat waits on the profile -> DELETE: nothing brings the user back."""
    writer = GateWriter()
    svc = _persona_service(tmp_path, embedder, writer, persona_profile_wait_s=60)
    try:
        svc.add_interactions_sync("vic", _items(ROMANCE), "import")
        chat = asyncio.create_task(svc.ensure_persona("vic"))
        await asyncio.wait_for(writer.entered.wait(), timeout=30)  # the chat waits on the profile now
        assert svc.delete_user("vic") is True
        writer.release.set()
        persona = await asyncio.wait_for(chat, timeout=30)
        assert persona.version == 0 and persona.details["transient"] == "user deleted"  # the chat answers
        assert await svc.record_chat("vic", InteractionIn(input="hi")) is None  # its write-back is dropped
        assert svc.export("vic") is None and svc.store.user_generation("vic") is None
        assert svc.store.list_profiles("vic") == [] and svc._persona_locks == {}
        # A new chat that starts after the delete is an explicit start: a new, empty user.
        again = await svc.ensure_persona("vic")
        assert again.version == 1 and again.details["profile_version"] is None
        assert svc.export("vic") is not None and svc.store.list_interactions("vic") == []
        # The first chat's write-back, named with the generation it began with, stays out of the new user.
        old = persona.details["generation"]
        assert old != again.details["generation"]
        assert await svc.record_chat("vic", InteractionIn(input="hi"), old) is None
        assert svc.store.list_interactions("vic") == []
        assert (
            await svc.record_chat("vic", InteractionIn(input="hi"), again.details["generation"]) is not None
        )
    finally:
        svc.close()


async def test_an_explicit_persona_request_racing_a_delete_creates_nothing(
    tmp_path: Path, embedder: Embedder
) -> None:
    """POST /persona and an alignment's setup (`persona_for`) never create the user, even mid-wait."""
    writer = GateWriter()
    svc = _persona_service(tmp_path, embedder, writer)
    try:
        assert await svc.persona_for("nobody") is None and svc.export("nobody") is None
        svc.add_interactions_sync("val", _items(VIOLENCE), "import")
        request = asyncio.create_task(svc.persona_for("val"))
        await asyncio.wait_for(writer.entered.wait(), timeout=30)
        svc.delete_user("val")
        writer.release.set()
        assert await asyncio.wait_for(request, timeout=30) is None
        assert svc.export("val") is None
    finally:
        svc.close()


class GatedEmbedder:
    """The real embedder behind a gate: `encode` signals `entered`, then waits for `release` (threads)."""

    def __init__(self, inner: Embedder) -> None:
        self.inner, self.dim = inner, inner.dim
        self.entered, self.release = threading.Event(), threading.Event()
        self.release.set()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.entered.set()
        assert self.release.wait(timeout=60)
        return self.inner.encode(texts)


async def test_a_delete_during_a_chat_write_back_holds(tmp_path: Path, embedder: Embedder) -> None:
    gated = GatedEmbedder(embedder)
    svc = open_service(tmp_path / "w.db", gated, profile_on_import=False)
    try:
        svc.add_interactions_sync("wes", _items(ROMANCE), "import")
        gated.entered.clear()
        gated.release.clear()
        write = asyncio.create_task(svc.record_chat("wes", InteractionIn(input=SECRET)))
        assert await asyncio.to_thread(gated.entered.wait, 30)  # the write-back is embedding its text
        assert svc.delete_user("wes") is True
        gated.release.set()
        assert await asyncio.wait_for(write, timeout=60) is None
        assert svc.export("wes") is None and svc.store.list_interactions("wes") == []
        assert svc.search_vectors("wes", embedder.encode([SECRET]), k=4)[0] == []
    finally:
        svc.close()


async def test_a_profile_that_never_finishes_or_fails_never_blocks_or_fails_a_chat(
    tmp_path: Path, embedder: Embedder
) -> None:
    stuck = GateWriter()
    svc = _persona_service(tmp_path, embedder, stuck, persona_profile_wait_s=0.05)
    try:
        svc.add_interactions_sync("sue", _items(ROMANCE), "import")
        persona = await asyncio.wait_for(svc.ensure_persona("sue"), timeout=30)
        assert persona.version == 0 and persona.text == "persona without profile"
        assert persona.details["transient"] == "profile pending"
        assert svc.persona_history("sue") == []  # nothing stored: the real initial persona comes later
        stuck.release.set()  # the shared profile write went on in the background and lands now
        for _ in range(1000):
            if svc.get_profile("sue") is not None:
                break
            await asyncio.sleep(0.01)
        after = await svc.ensure_persona("sue")
        assert after.version == 1 and after.text == "persona from: profile of sue"
    finally:
        svc.close()
    broken = GateWriter(error=RuntimeError("engine down"))
    svc = _persona_service(tmp_path / "b", embedder, broken)
    try:
        svc.add_interactions_sync("sam", _items(ROMANCE), "import")
        persona = await asyncio.wait_for(svc.ensure_persona("sam"), timeout=30)
        assert persona.version == 0 and persona.details["transient"] == "profile failed"
        with pytest.raises(RuntimeError, match="engine down"):  # an explicit request reports it
            await svc.persona_for("sam")
    finally:
        svc.close()


def test_feedback_counts_once_per_interaction(service: MemoryService) -> None:
    service.add_interactions_sync(
        "fay", [InteractionIn(input="q", metadata={"completion_id": "chatcmpl-1"})], "chat"
    )
    for truth in ("a", "a", "corrected"):  # a client retrying, then correcting its answer
        item = service.attach_feedback("fay", truth, completion_id="chatcmpl-1", input_text=None)
        assert item is not None and item.output == truth
    assert service.store.get_user("fay").ground_truth_since_alignment == 1  # type: ignore[union-attr]
    assert service.store.take_alignment_due("fay", 2) is False
    service.attach_feedback("fay", "again", completion_id=None, input_text="q")  # same row, by its input
    assert service.store.get_user("fay").ground_truth_since_alignment == 1  # type: ignore[union-attr]


async def test_persona_locks_do_not_outlive_their_use(tmp_path: Path, embedder: Embedder) -> None:
    svc = _persona_service(tmp_path, embedder, None)
    try:
        await asyncio.gather(*(svc.ensure_persona(f"lock{i % 7}") for i in range(50)))
        assert svc._persona_locks == {}
        assert {p.version for i in range(7) for p in svc.store.list_personas(f"lock{i}")} == {1}
    finally:
        svc.close()


def test_evicted_indexes_reload_with_the_same_top_k(tmp_path: Path, embedder: Embedder) -> None:
    svc = open_service(tmp_path / "e.db", embedder, index_cache_users=2)
    try:
        histories = {"ann": ROMANCE, "ben": VIOLENCE, "cal": [SECRET, *ROMANCE[:1], *VIOLENCE[:1]]}
        query = embedder.encode(["a love story with a fight"])
        before = {}
        for user, texts in histories.items():
            svc.add_interactions_sync(user, _items(texts), "import")
            before[user] = [
                (h.interaction.id, round(h.score, 5)) for h in svc.search_vectors(user, query, 3)[0]
            ]
        assert len(svc.index.users()) == 2 and not svc.index.has_user("ann")  # least recently used went
        for user in ("ann", "ben", "cal", "ann"):
            after = [(h.interaction.id, round(h.score, 5)) for h in svc.search_vectors(user, query, 3)[0]]
            assert after == before[user], user
            assert len(svc.index.users()) <= 2
        svc.add_interactions_sync("ben", _items(["Tag the movie: a love story in a war"]), "import")
        assert len(svc.search_vectors("ben", query, 10)[0]) == 4  # evicted, reloaded, appended: no duplicate
        restarted = open_service(tmp_path / "e.db", embedder, index_cache_users=2)
        assert len(restarted.index.users()) == 2  # a restart loads only as many as the cache holds
        for user in histories:
            got = [(h.interaction.id, round(h.score, 5)) for h in restarted.search_vectors(user, query, 3)[0]]
            assert got == before[user] or user == "ben"
        restarted.close()
    finally:
        svc.close()
