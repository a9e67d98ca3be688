"""A database that is down, or a replica that died mid-request, is a 503 with Retry-After in the OpenAI
error shape, never a 500 with a traceback; a NUL character in text the API stores is a 400 on either
backend; a chat's write-back drops NULs rather than failing the answered chat. The HTTP app is built
with fakes (no Ray: a Ray-wrapped error is imitated by a class deriving from the cause, as Ray builds it)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from memory.records import InteractionIn
from personaagent.postgres import StoreUnavailable
from personaagent.salts import CacheSalts
from personaagent.settings import EngineSettings, Settings
from serving.errors import ReplicaUnavailable, internal_error_payload
from serving.http_app import build_http_app
from serving.personalized_chat import PersonalizedChat
from tests.unit.test_http_validation import FakeAlignment, FakeBackend, FakeMemory, FakePersonalized


class RayTaskError(Exception):
    """Stands in for Ray's wrapper: Ray raises a class deriving from both it and the replica's error."""


def ray_wrapped(cause: type[Exception], message: str) -> Exception:
    return type(f"RayTaskError({cause.__name__})", (RayTaskError, cause), {})(message)


class FailingMemory(FakeMemory):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    async def search(self, *args: Any, **kwargs: Any) -> list[Any]:
        raise self.error

    async def import_interactions(self, *args: Any, **kwargs: Any) -> list[int]:
        raise self.error


def _client(memory: FakeMemory) -> TestClient:
    settings = Settings(engine=EngineSettings(max_model_len=4096))
    app = build_http_app(
        FakeBackend(), settings, CacheSalts("s" * 32), memory=memory, personalized=FakePersonalized(),  # type: ignore[arg-type]
        alignment=FakeAlignment(), completions=FakeBackend(),  # type: ignore[arg-type]
    )  # fmt: skip
    return TestClient(app, raise_server_exceptions=False)


SECRET_WHERE = "db.internal:5432/personaagent"


@pytest.mark.parametrize(
    "error",
    [
        StoreUnavailable(f"PostgreSQL at {SECRET_WHERE}: connection refused"),
        ray_wrapped(StoreUnavailable, f"no free connection to PostgreSQL at {SECRET_WHERE}"),
        ReplicaUnavailable("memory replica went away during search"),
    ],
    ids=["store", "store-through-ray", "replica"],
)
def test_an_outage_is_a_503_with_retry_after_and_no_detail(error: Exception) -> None:
    client = _client(FailingMemory(error))
    for response in (
        client.get("/v1/users/ann/memories", params={"query": "q"}),
        client.post("/v1/users/ann/interactions", json=[{"input": "q"}]),
    ):
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"] == "1"
        body = response.json()["error"]
        assert body["type"] == "service_unavailable" and body["code"] == 503
        assert "retry" in body["message"] and SECRET_WHERE not in response.text
        assert "Traceback" not in response.text


def test_an_outage_inside_a_stream_is_a_503_event() -> None:
    payload = internal_error_payload(ray_wrapped(StoreUnavailable, "down"), "a streamed chat")
    assert payload["error"]["code"] == 503 and payload["error"]["type"] == "service_unavailable"
    assert internal_error_payload(RuntimeError("bug"), "x")["error"]["code"] == 500


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/users/ann/interactions", [{"input": "a\x00b"}]),
        ("POST", "/v1/users/ann/interactions", [{"input": "q", "output": "\x00"}]),
        ("PUT", "/v1/users/ann/persona", {"text": "be\x00brief"}),
        ("POST", "/v1/users/ann/feedback", {"completion_id": "c", "expected_output": "x\x00"}),
    ],
)
def test_a_nul_in_stored_text_is_a_400_naming_the_field(method: str, path: str, body: Any) -> None:
    response = _client(FakeMemory()).request(method, path, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and "NUL" in error["message"]


def test_interactions_refuse_a_nul_whatever_the_backend() -> None:
    with pytest.raises(ValidationError, match="NUL"):
        InteractionIn(input="a\x00b")
    assert InteractionIn(input="a b", metadata={"note": "a\x00b"}).metadata == {"note": "a\x00b"}


class RecordingMemory(FakeMemory):
    def __init__(self) -> None:
        super().__init__()
        self.recorded: list[InteractionIn] = []

    async def record_chat(self, user_id: str, item: Any, generation: int | None = None) -> int:
        self.recorded.append(item)
        return 1


async def test_a_chat_write_back_drops_nul_characters_instead_of_failing() -> None:
    memory = RecordingMemory()
    chat = PersonalizedChat(agent=None, engine=None, memory=memory, write_back=True)  # type: ignore[arg-type]
    plan = SimpleNamespace(persona_version=1, user_generation=0)
    await chat.record("ann", "what\x00 now?", "answer", "chatcmpl-1", plan)  # type: ignore[arg-type]
    await chat.record("ann", "\x00\x00", "answer", "chatcmpl-2", plan)  # type: ignore[arg-type]
    assert [item.input for item in memory.recorded] == ["what now?"]
