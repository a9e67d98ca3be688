"""The `Store` and the document rows behave the same on SQLite and on PostgreSQL (a real server: see
tests/postgres.py). Each test runs on both; `open_handle` opens another handle on the same database, as
another process or replica would."""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from pydantic import ValidationError

from memory.backends import open_documents, open_memory_storage, open_store
from memory.documents import DOCUMENTS_MIGRATIONS
from memory.pg_store import STORE_MIGRATIONS
from memory.records import InteractionIn, StorageQuotaExceeded, UserDeleted
from memory.store import SQLiteStore, Store
from personaagent.postgres import PostgresDatabase, StoreUnavailable, redacted
from personaagent.settings import Settings, StoreSettings, load_settings

DIM = 8
Opener = Callable[[], Store]


def _settings(tmp_path: Path, url: str = "") -> Settings:
    return Settings(data_dir=tmp_path, store=StoreSettings(url=url))


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else ""
    return _settings(tmp_path, url)


@pytest.fixture
def open_handle(settings: Settings) -> Iterator[Opener]:
    opened: list[Store] = []

    def open_() -> Store:
        opened.append(open_store(settings))
        return opened[-1]

    yield open_
    for store in opened:
        store.close()


@pytest.fixture
def store(open_handle: Opener) -> Store:
    return open_handle()


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _items(*texts: str, output: str | None = None, **fields: Any) -> list[InteractionIn]:
    return [InteractionIn(input=t, output=output, **fields) for t in texts]


def _add(store: Store, user: str, *texts: str, **kwargs: Any) -> list[int]:
    return store.add_interactions(user, _items(*texts), _vectors(len(texts), len(user)), "import", **kwargs)


# -- writes, reads, embeddings ---------------------------------------------------------------------------


def test_a_write_is_committed_before_it_returns_and_read_back_whole(open_handle: Opener) -> None:
    writer, reader = open_handle(), open_handle()  # two processes (or replicas) on one database
    when = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
    vectors = _vectors(3)
    items = [
        InteractionIn(input="q1", output="a1", timestamp=when, metadata={"completion_id": "c-1", "n": [1]}),
        InteractionIn(input="q2 ünïcode"),
        InteractionIn(input="q3", output=""),
    ]
    ids = writer.add_interactions("ann", items, vectors, "import")
    assert len(ids) == 3 and ids == sorted(ids)
    got = reader.get_interactions(ids)
    assert [i.input for i in got] == ["q1", "q2 ünïcode", "q3"]
    assert got[0].timestamp == when and got[0].metadata == {"completion_id": "c-1", "n": [1]}
    assert (got[0].output, got[1].output, got[2].output) == ("a1", None, "")
    assert {i.source for i in got} == {"import"} and {i.user_id for i in got} == {"ann"}
    assert [i.id for i in reader.list_interactions("ann")] == ids[::-1]  # newest first
    assert [i.id for i in reader.list_interactions("ann", limit=1)] == ids[-1:]
    # Embeddings come back bit for bit: a cold index loads without re-embedding.
    stored_ids, stored = reader.user_embeddings("ann")
    assert stored_ids.tolist() == ids and stored.dtype == np.float32
    assert stored.tobytes() == vectors.tobytes()
    assert [(u, i.tolist()) for u, i, _ in reader.iter_embeddings()] == [("ann", ids)]
    user = reader.get_user("ann")
    assert (
        user is not None and user.interactions_since_profile == 3 and user.ground_truth_since_alignment == 2
    )
    assert reader.list_user_ids() == ["ann"] and reader.get_user("nobody") is None
    with pytest.raises(ValueError, match="one embedding per interaction"):
        writer.add_interactions("ann", _items("x"), _vectors(2), "import")


def test_user_vectors_are_one_snapshot_and_catch_up_after_an_id(store: Store) -> None:
    first = _add(store, "bo", "a", "b")
    snap = store.user_vectors("bo")
    assert snap.version == store.user_version("bo") and snap.generation == 0
    assert snap.ids.tolist() == first and snap.vectors.shape == (2, DIM)
    more = _add(store, "bo", "c")
    later = store.user_vectors("bo", after_id=int(snap.ids.max()))
    assert later.ids.tolist() == more and later.vectors.shape == (1, DIM)
    assert later.version != snap.version
    store.delete_user("bo")
    gone = store.user_vectors("bo")
    assert gone.version is None and gone.generation == 1 and len(gone.ids) == 0
    _add(store, "bo", "new life")
    reborn = store.user_vectors("bo", after_id=int(later.ids.max()))
    assert reborn.generation == 1  # a new generation: a cache must reload in full, not catch up


# -- versions --------------------------------------------------------------------------------------------


def test_the_user_version_moves_with_what_the_index_holds_and_never_repeats(open_handle: Opener) -> None:
    a, b = open_handle(), open_handle()
    assert a.user_version("cy") is None
    a.open_user("cy")
    seen = [b.user_version("cy")]
    assert seen[0] is not None
    a.open_user("cy")  # an existing user: nothing changed
    a.ensure_user("cy")
    assert b.user_version("cy") == seen[-1]
    _add(a, "cy", "one")
    seen.append(b.user_version("cy"))  # another handle sees the bump at once
    _add(a, "cy", "two", "three")
    seen.append(b.user_version("cy"))
    # Writes that leave the index as it is leave the version too.
    a.add_profile("cy", "p", 3, "t@v1")
    a.add_persona("cy", "persona", "init", None, {})
    a.attach_truth("cy", "truth", completion_id=None, input_text="one")
    a.take_alignment_due("cy", 1)
    assert b.user_version("cy") == seen[-1]
    assert a.delete_user("cy") and b.user_version("cy") is None
    a.open_user("cy")  # a new incarnation: a number no earlier state of the user had
    seen.append(b.user_version("cy"))
    _add(a, "cy", "one")
    seen.append(b.user_version("cy"))
    assert len(set(seen)) == len(seen) and None not in seen


# -- quotas, generations, retention, delete ----------------------------------------------------------------


def test_quotas_hold_under_concurrent_writes_of_one_user(store: Store) -> None:
    """8 writers of 2 items each against a quota of 7 items: exactly 3 get in, whatever the interleaving
    (the count is read inside each write's transaction, and writes of one user run one at a time).
    Raced for several users: one race may happen to run the writers one after another."""
    users = [f"dee{n}" for n in range(6)]
    start = threading.Barrier(8)

    def write(n: int) -> list[bool]:
        outcomes = []
        for user in users:
            start.wait()
            try:
                _add(store, user, f"q{n}a", f"q{n}b", quota=(7, 10_000))
                outcomes.append(True)
            except StorageQuotaExceeded:
                outcomes.append(False)
        return outcomes

    with ThreadPoolExecutor(8) as pool:
        per_writer = list(pool.map(write, range(8)))
    for n, user in enumerate(users):
        assert [w[n] for w in per_writer].count(True) == 3, user
        assert len(store.list_interactions(user)) == 6, user
    with pytest.raises(StorageQuotaExceeded, match="max_bytes_per_user"):
        _add(store, "dee0", "é" * 600, quota=(100, 1_000))  # 1200 bytes, not 600 characters
    assert len(store.list_interactions("dee0")) == 6  # a refused write leaves nothing
    _add(store, "eve", "a", "b", "c", quota=(3, 10_000))  # the quota is per user


def test_a_write_begun_before_a_delete_never_reaches_a_new_incarnation(store: Store) -> None:
    vec = _vectors(1)
    store.add_interactions("gil", _items("x"), vec, "import")
    began = store.user_generation("gil")
    assert began is not None
    assert store.delete_user("gil") is True
    with pytest.raises(UserDeleted):  # gone: no implicit write re-creates the user
        store.add_persona("gil", "p", "init", None, {}, generation=began)
    with pytest.raises(UserDeleted):
        store.add_profile("gil", "p", 1, "t@v1")
    assert store.get_user("gil") is None
    assert store.attach_truth("gil", "t", completion_id=None, input_text="x") is None
    store.add_interactions("gil", _items("y"), vec, "import")  # an explicit new import: new user
    with pytest.raises(UserDeleted):  # ...which the old operation's writes still never reach
        store.add_interactions("gil", _items("z"), vec, "chat", generation=began)
    with pytest.raises(UserDeleted):
        store.add_persona("gil", "p", "init", None, {}, generation=began)
    now = store.user_generation("gil")
    assert now is not None and now != began
    store.add_persona("gil", "p", "init", None, {}, generation=now)
    assert [i.input for i in store.list_interactions("gil")] == ["y"]
    assert store.delete_user("gil") and store.open_user("gil") not in (began, now)  # every delete counts
    with pytest.raises(UserDeleted):
        store.add_interactions("gil", _items("w"), vec, "chat", generation=now)
    assert store.delete_user("never-was") is False
    assert store.user_generation("never-was") is None


def test_writes_racing_a_delete_leave_nothing(store: Store) -> None:
    """Chat write-backs of one generation keep arriving while the user is deleted: none survives it."""
    generation = store.open_user("fay")
    stop = threading.Event()

    def write_back() -> None:
        while not stop.is_set():
            try:
                _add(store, "fay", "chat", generation=generation)
            except UserDeleted:
                return

    with ThreadPoolExecutor(4) as pool:
        writers = [pool.submit(write_back) for _ in range(4)]
        while len(store.list_interactions("fay", limit=8)) < 8:
            time.sleep(0.005)
        assert store.delete_user("fay") is True
        stop.set()
        for w in writers:
            w.result(timeout=60)
    assert store.get_user("fay") is None and store.list_interactions("fay") == []
    assert len(store.user_vectors("fay").ids) == 0


def test_versions_are_numbered_one_at_a_time_and_only_the_newest_kept(store: Store) -> None:
    _add(store, "jo", "x")
    start = threading.Barrier(8)

    def write(n: int) -> None:
        start.wait()
        for round_ in range(3):
            store.add_persona("jo", f"persona {n}.{round_}", "manual", None, {})

    with ThreadPoolExecutor(8) as pool:  # concurrent writers of one user never get the same number
        list(pool.map(write, range(8)))
    assert [p.version for p in store.list_personas("jo")] == list(range(1, 25))
    for n in range(3):
        store.add_persona("jo", f"late {n}", "manual", 24 + n, {}, keep=3)
        store.add_profile("jo", f"profile {n}", 1, "t@v1", keep=2)
    personas = store.list_personas("jo")
    assert [p.version for p in personas] == [25, 26, 27] and personas[-1].parent == 26
    assert [p.text for p in store.list_profiles("jo")] == ["profile 1", "profile 2"]
    latest = store.latest_profile("jo")
    assert latest is not None and latest.version == 3 and latest.prompt == "t@v1"
    assert store.get_user("jo").interactions_since_profile == 0  # type: ignore[union-attr]
    assert store.current_personas() == {"jo": "late 2"}


def test_delete_is_total(open_handle: Opener) -> None:
    store, other = open_handle(), open_handle()
    _add(store, "kim", "my locker combination is 41-17-93", "b")
    store.add_profile("kim", "p", 2, "t@v1")
    store.add_persona("kim", "persona", "init", None, {})
    _add(store, "lee", "untouched")
    assert store.delete_user("kim") is True
    for handle in (store, other):
        assert handle.get_user("kim") is None and handle.user_generation("kim") is None
        assert handle.list_interactions("kim") == [] and handle.list_profiles("kim") == []
        assert handle.list_personas("kim") == [] and handle.latest_profile("kim") is None
        assert len(handle.user_embeddings("kim")[0]) == 0
        assert handle.list_user_ids() == ["lee"] and "kim" not in handle.current_personas()
    assert store.delete_user("kim") is False
    assert [i.input for i in other.list_interactions("lee")] == ["untouched"]


# -- ground truth ------------------------------------------------------------------------------------------


def test_ground_truth_counts_once_per_interaction_and_makes_a_user_due_once(store: Store) -> None:
    metadata = {"completion_id": "chatcmpl-1", "note": "a\x00b"}  # stored as given, a NUL in a string too
    store.add_interactions("max", _items("q", metadata=metadata), _vectors(1), "chat")
    _add(store, "max", "r")
    for truth in ("a", "a", "corrected"):  # a client retrying, then correcting its answer
        item = store.attach_truth("max", truth, completion_id="chatcmpl-1", input_text=None)
        assert item is not None and item.output == truth and item.input == "q"
    assert store.get_user("max").ground_truth_since_alignment == 1  # type: ignore[union-attr]
    assert store.attach_truth("max", "x", completion_id="nope", input_text=None) is None
    assert store.attach_truth("max", "x", completion_id="chatcmpl-1\x00", input_text=None) is None
    assert store.list_interactions("max")[-1].metadata == metadata
    assert store.attach_truth("max", "b", completion_id=None, input_text="r") is not None
    assert store.take_alignment_due("max", 3) is False
    store.add_interactions("max", _items("imported", output="label"), _vectors(1), "import")
    assert store.take_alignment_due("max", 3) is True and store.take_alignment_due("max", 3) is False
    truths = store.ground_truth("max", 2)
    assert [t.output for t in truths] == ["label", "b"]
    assert store.take_alignment_due("nobody", 1) is False


# -- documents ---------------------------------------------------------------------------------------------


class _FixedEmbedder:
    """Vectors from a seed per text: the documents' storage is under test here, not the embedder."""

    dim = DIM

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.stack([_vectors(1, sum(map(ord, t)))[0] for t in texts]) if texts else _vectors(0)


def test_documents_load_search_reopen_and_replace(settings: Settings, tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "paris.md").write_text("The Louvre is the world's most visited museum.")
    (folder / "etna.txt").write_text("Mount Etna is an active volcano in Sicily.")
    embedder = _FixedEmbedder()
    index = open_documents(settings, DIM)
    try:
        assert index.load(folder, embedder, max_files=10) == 2  # type: ignore[arg-type]
        hits = index.search(embedder.encode(["Mount Etna is an active volcano in Sicily."]), k=1)
        assert [(h.source, h.text) for h in hits] == [
            ("etna.txt", "Mount Etna is an active volcano in Sicily.")
        ]
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)
        reopened = open_documents(settings, DIM)  # another replica starts: it loads what is stored
        assert reopened.count() == 2
        reopened.close()
        (folder / "etna.txt").unlink()
        assert index.load(folder, embedder, max_files=10, replace=True) == 1  # type: ignore[arg-type]
        assert index.count() == 1
        assert [h.source for h in index.search(embedder.encode(["volcano"]), k=5)] == ["paris.md"]
    finally:
        index.close()


# -- PostgreSQL only: migrations and an unreachable server -------------------------------------------------


def test_replicas_starting_together_migrate_once(postgres_url: str) -> None:
    """Eight processes' pools open and migrate at the same moment: the advisory lock lets one apply
    each migration once, the rest find it done; none fails."""
    start = threading.Barrier(8)

    def replica(_: int) -> tuple[int, int]:
        db = PostgresDatabase(StoreSettings(url=postgres_url))
        try:
            start.wait()
            return db.migrate("store", STORE_MIGRATIONS), db.migrate("documents", DOCUMENTS_MIGRATIONS)
        finally:
            db.close()

    with ThreadPoolExecutor(8) as pool:
        ran = list(pool.map(replica, range(8)))
    assert sum(s for s, _ in ran) == len(STORE_MIGRATIONS) and sum(d for _, d in ran) == len(
        DOCUMENTS_MIGRATIONS
    )
    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute("SELECT component, version FROM schema_migrations ORDER BY 1, 2").fetchall()
    assert rows == [("documents", 1), ("store", 1)]


def test_an_unreachable_database_is_a_clear_error_without_the_password(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"postgresql://app:hunter2secret@127.0.0.1:{port}/personaagent"
    with pytest.raises(StoreUnavailable, match=f"127.0.0.1:{port}/personaagent") as caught:
        open_store(Settings(data_dir=tmp_path, store=StoreSettings(url=url, connect_timeout_s=1)))
    assert "hunter2secret" not in str(caught.value)
    assert "hunter2secret" not in repr(StoreSettings(url=url))


# -- wiring: one setting picks the backend; files from before the version column still open ----------------


def test_the_url_setting_picks_the_backend_and_keeps_its_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERSONAAGENT_STORE__URL", "postgresql://app:hunter2secret@db.internal:5432/pa")
    settings = load_settings()
    assert settings.store.postgres and "hunter2secret" not in repr(settings)
    assert redacted(settings.store.url.get_secret_value()) == "db.internal:5432/pa"
    monkeypatch.delenv("PERSONAAGENT_STORE__URL")
    assert not load_settings().store.postgres  # the default: SQLite under data_dir
    with pytest.raises(ValidationError, match="postgresql://"):
        StoreSettings(url="mysql://x@y/z")
    with pytest.raises(ValidationError, match="pool_min_size"):
        StoreSettings(pool_min_size=5, pool_max_size=2)


def test_one_memory_replica_opens_store_and_documents_on_one_database(settings: Settings) -> None:
    store, documents = open_memory_storage(settings, DIM)
    try:
        _add(store, "ann", "hello")
        assert documents.count() == 0 and store.user_version("ann") is not None
    finally:
        store.close()
        documents.close()  # closing the second (a shared pool on PostgreSQL) is harmless


def test_a_sqlite_file_from_before_user_versions_opens_and_gets_them(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # the users table as written before 2026-12
        conn.execute(
            "CREATE TABLE users (user_id TEXT PRIMARY KEY, created_at TEXT NOT NULL, interactions_since_profile"
            " INTEGER NOT NULL DEFAULT 0, ground_truth_since_alignment INTEGER NOT NULL DEFAULT 0)"
        )
        conn.execute("INSERT INTO users(user_id, created_at) VALUES ('old', '2026-01-01T00:00:00+00:00')")
    store = SQLiteStore(path)
    try:
        assert store.user_version("old") == 0
        _add(store, "old", "new row")
        assert (store.user_version("old") or 0) > 0 and store.get_user("old") is not None
    finally:
        store.close()
