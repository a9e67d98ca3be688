"""The response store (`memory.responses`) behaves the same on SQLite and on PostgreSQL (a real server: see
tests/postgres.py): who sees a stored response, the user's erasure, a late write refused, a restart."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from memory.backends import open_store
from memory.responses import ResponseScope, ResponseStore, StoredResponse, responses_beside
from memory.store import Store
from personaagent.settings import Settings, StoreSettings

Opener = Callable[[], tuple[Store, ResponseStore]]


@pytest.fixture(params=["sqlite", "postgres"])
def open_handle(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens the store and the response store beside it, as a memory replica does (again: a restart)."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else ""
    settings = Settings(data_dir=tmp_path, store=StoreSettings(url=url))
    opened: list[tuple[Store, ResponseStore]] = []

    def open_() -> tuple[Store, ResponseStore]:
        store = open_store(settings)
        opened.append((store, responses_beside(store)))
        return opened[-1]

    yield open_
    for store, responses in opened:
        responses.close()
        store.close()


def _record(
    rid: str, user: str | None, key: str | None = "ops", generation: int | None = None
) -> StoredResponse:
    item = {
        "id": f"msg_{rid}",
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": rid}],
    }
    return StoredResponse(id=rid, user_id=user, api_key=key, generation=generation, input_items=[item],
                          response={"id": rid, "object": "response", "output": []})  # fmt: skip


def test_a_response_is_visible_to_its_key_and_user_only(open_handle: Opener) -> None:
    store, responses = open_handle()
    store.open_user("alice")
    assert responses.save(_record("resp_a", "alice")) and responses.save(_record("resp_p", None))
    got = responses.get("resp_a", ResponseScope(api_key="ops", user_id="alice"))
    assert got is not None and got.input_items[0]["content"][0]["text"] == "resp_a" and got.generation == 0
    assert got.response == {"id": "resp_a", "object": "response", "output": []}
    assert responses.get("resp_a", ResponseScope(api_key="ops", any_user=True)) is not None
    assert responses.get("resp_p", ResponseScope(api_key="ops")) is not None  # the plain one: no user
    for scope in (ResponseScope(api_key="other", user_id="alice"), ResponseScope(api_key="other", any_user=True),
                  ResponseScope(api_key=None, any_user=True), ResponseScope(api_key="ops", user_id="bob"),
                  ResponseScope(api_key="ops")):  # fmt: skip
        assert responses.get("resp_a", scope) is None, scope
        assert not responses.delete("resp_a", scope), scope
    assert responses.get("resp_p", ResponseScope(api_key="ops", user_id="alice")) is None
    assert responses.delete("resp_a", ResponseScope(api_key="ops", user_id="alice"))
    assert responses.get("resp_a", ResponseScope(api_key="ops", any_user=True)) is None


def test_an_open_server_has_no_key(open_handle: Opener) -> None:
    _, responses = open_handle()
    assert responses.save(_record("resp_o", None, key=None))
    assert responses.get("resp_o", ResponseScope(api_key=None)) is not None
    assert responses.get("resp_o", ResponseScope(api_key="ops", any_user=True)) is None


def test_the_users_erasure_and_a_late_write(open_handle: Opener) -> None:
    store, responses = open_handle()
    assert not responses.save(_record("resp_nobody", "ghost"))  # no such user: nothing stored
    store.open_user("alice")
    assert responses.save(_record("resp_a", "alice", generation=0))
    store.delete_user("alice")
    assert responses.delete_user("alice") == 1
    store.open_user("alice")  # back, a new incarnation (generation 1)
    # A request that began before the delete names generation 0: refused inside the write.
    assert not responses.save(_record("resp_late", "alice", generation=0))
    assert responses.save(_record("resp_new", "alice"))
    scope = ResponseScope(api_key="ops", user_id="alice")
    assert responses.get("resp_late", scope) is None and responses.get("resp_new", scope) is not None


def test_a_row_left_by_a_crash_between_the_two_deletes_is_never_read(open_handle: Opener) -> None:
    store, responses = open_handle()
    store.open_user("alice")
    assert responses.save(_record("resp_a", "alice"))
    store.delete_user("alice")  # ... and the process dies before `responses.delete_user`
    store.open_user("alice")
    assert responses.get("resp_a", ResponseScope(api_key="ops", user_id="alice")) is None


def test_responses_survive_a_restart(open_handle: Opener) -> None:
    store, responses = open_handle()
    store.open_user("alice")
    assert responses.save(_record("resp_a", "alice"))
    responses.close()
    store.close()
    _, reopened = open_handle()
    assert reopened.get("resp_a", ResponseScope(api_key="ops", user_id="alice")) is not None


class _NoEmbedder:
    """The service's embedder, unused here (no interaction is written)."""

    dim = 8

    def encode(self, texts: list[str]) -> object:
        raise AssertionError("nothing is embedded in these tests")


def test_the_memory_services_delete_erases_the_users_responses(tmp_path: Path) -> None:
    from memory.index import EpisodicIndex
    from memory.service import MemoryService
    from memory.store import SQLiteStore
    from personaagent.settings import MemorySettings

    store = SQLiteStore(tmp_path / "mem.db")
    responses = responses_beside(store)
    service = MemoryService(store, _NoEmbedder(), EpisodicIndex(8, "cpu"), MemorySettings(device="cpu"),  # type: ignore[arg-type]
                            responses=responses)  # fmt: skip
    store.open_user("alice")
    assert service.save_response(_record("resp_a", "alice")) and service.save_response(
        _record("resp_p", None)
    )
    assert service.delete_user("alice")
    assert responses.delete_user("alice") == 0  # the rows are gone, not just unreadable
    assert service.get_response("resp_p", ResponseScope(api_key="ops")) is not None  # plain ones stay
    service.close()
