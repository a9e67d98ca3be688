"""Bad input on the whole HTTP app (built with fakes, no Ray, no engine): every POST/PUT/PATCH route answers
each top-level field set to null, a number, a list or an object with a 4xx in the OpenAI error shape, never
a 5xx; user ids are checked whole; `server.max_tokens` fills in a request's missing `max_tokens`; the limits
of `/v1/completions` and `/v1/embeddings`, and how each reaches its port."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

import numpy as np
import pytest
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, TypeAdapter, ValidationError

from alignment.jobs import AlignmentJob
from memory.embedder import Embedded, EmbeddingRefused
from memory.records import Interaction, PersonaVersion, Profile, UserExport, UserRecord
from personaagent.salts import CacheSalts
from personaagent.settings import (
    APIKeySetting,
    AuthSettings,
    EmbeddingsSettings,
    EngineSettings,
    ServerSettings,
    Settings,
)
from serving.auth import hash_key
from serving.chat_request import ChatCompletionRequest
from serving.http_app import build_http_app
from serving.metrics import MetricsScrape, ReplicaMetrics, merge_replica_metrics
from serving.personalized_chat import check_user_id

NOW = datetime(2026, 12, 7, tzinfo=UTC)
MODEL = "smollm2-135m-instruct"
EMBEDDING_MODEL = "all-MiniLM-L6-v2"
TEXT_COMPLETION = {
    "id": "cmpl-1", "object": "text_completion", "created": 0, "model": MODEL,
    "choices": [{"index": 0, "text": "hi", "finish_reason": "length"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}  # fmt: skip
COMPLETION = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}  # fmt: skip
PERSONA = PersonaVersion(user_id="alice", version=1, text="p", reason="init", parent=None, created_at=NOW)
PROFILE = Profile(user_id="alice", version=1, text="t", interactions_covered=1, created_at=NOW, prompt="p@1")
ITEM = Interaction(id=1, user_id="alice", input="q", output="a", timestamp=NOW, metadata={}, source="import",
                   created_at=NOW)  # fmt: skip
JOB = AlignmentJob(id="align-1", user_id="alice", state="queued", reason="forced", created_at=NOW,
                   updated_at=NOW)  # fmt: skip


class FakeBackend:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.completion_bodies: list[dict[str, Any]] = []

    async def complete(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any] | str]:
        self.completion_bodies.append(body)
        yield dict(TEXT_COMPLETION)

    async def chat(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any] | str]:
        self.bodies.append(body)
        yield dict(COMPLETION)

    async def list_models(self) -> dict[str, Any]:
        return {"object": "list", "data": []}

    async def metrics_text(self) -> str:
        return ""

    async def check_health(self) -> None:
        return None


class FakeMemory:
    """Every user exists and every call succeeds: a case that gets past validation reaches a 2xx."""

    def __init__(self) -> None:
        self.embedded: list[list[Any]] = []

    async def embed(self, inputs: list[Any]) -> Embedded | EmbeddingRefused:
        self.embedded.append(list(inputs))
        if any(item == "too long" for item in inputs):
            return EmbeddingRefused(0, "input[0]: 300 tokens; the encoder reads at most 256 tokens per input")
        vectors = np.tile(np.array([1.0, -0.5, 0.25], dtype=np.float32), (len(inputs), 1))
        return Embedded(vectors, prompt_tokens=3 * len(inputs))

    async def user_exists(self, user_id: str) -> bool:
        return True

    async def import_interactions(self, user_id: str, items: list[Any], source: str = "import") -> list[int]:
        return list(range(len(items)))

    async def search(self, user_id: str, query: str, k: int, exclude_ids: tuple[int, ...] = ()) -> list[Any]:
        return []

    async def get_profile(self, user_id: str) -> tuple[bool, Profile | None]:
        return True, PROFILE

    async def refresh_profile(self, user_id: str) -> Profile:
        return PROFILE

    async def export(self, user_id: str) -> UserExport:
        user = UserRecord(user_id=user_id, created_at=NOW)
        return UserExport(user=user, interactions=[ITEM], profiles=[PROFILE], personas=[PERSONA])

    async def delete_user(self, user_id: str) -> bool:
        return True

    async def ensure_persona(self, user_id: str) -> PersonaVersion:
        return PERSONA

    async def persona_for(self, user_id: str) -> PersonaVersion:
        return PERSONA

    async def persona_history(self, user_id: str) -> list[PersonaVersion]:
        return [PERSONA]

    async def set_persona(self, user_id: str, text: str, reason: str, details: Any = None) -> PersonaVersion:
        return PERSONA

    async def rollback_persona(self, user_id: str, version: int) -> PersonaVersion:
        return PERSONA

    async def record_chat(self, user_id: str, item: Any, generation: int | None = None) -> int:
        return 1

    async def attach_feedback(self, user_id: str, *args: Any) -> Interaction:
        return ITEM

    async def take_alignment_due(self, user_id: str) -> bool:
        return True

    async def persona_similarity(self) -> tuple[list[str], list[list[float]]]:
        return ["alice"], [[1.0]]

    async def reload_documents(self) -> int:
        return 0

    async def save_response(self, record: Any) -> bool:
        return True

    async def get_response(self, response_id: str, scope: Any) -> None:
        return None

    async def delete_response(self, response_id: str, scope: Any) -> bool:
        return False


class FakeAlignment:
    async def enqueue(
        self, user_id: str, reason: str, inject_failure_after: int | None = None
    ) -> AlignmentJob:
        return JOB

    async def get_job(self, job_id: str) -> AlignmentJob | None:
        return None

    async def forget_user(self, user_id: str) -> int:
        return 0

    async def metrics_text(self) -> str:
        return ""


class FakePersonalized:
    """The personalized path up to the agent: the real user id check, then the body as handed over."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    async def handle(self, body: dict[str, Any]) -> JSONResponse:
        check_user_id(body.get("user"))
        self.bodies.append(body)
        return JSONResponse(COMPLETION)


def _app(server: ServerSettings | None = None) -> tuple[TestClient, FakeBackend, FakePersonalized]:
    settings = Settings(server=server or ServerSettings(), engine=EngineSettings(max_model_len=4096))
    backend, personalized = FakeBackend(), FakePersonalized()
    app = build_http_app(
        backend, settings, CacheSalts("s" * 32), memory=FakeMemory(), personalized=personalized,  # type: ignore[arg-type]
        alignment=FakeAlignment(), completions=backend,
    )  # fmt: skip
    return TestClient(app, raise_server_exceptions=False), backend, personalized


HI = [{"role": "user", "content": "hi"}]
# A valid body for every route that takes one (None: the route reads no body). A route missing here fails
# `test_every_body_route_is_fuzzed`, so a new route cannot go unfuzzed.
BASES: dict[tuple[str, str], Any] = {
    ("POST", "/v1/chat/completions"): {"model": MODEL, "messages": HI},
    ("POST", "/v1/responses"): {"model": MODEL, "input": "hi"},
    ("POST", "/v1/completions"): {"model": MODEL, "prompt": "hi"},
    ("POST", "/v1/embeddings"): {"model": EMBEDDING_MODEL, "input": "hi"},
    ("POST", "/v1/users/{user_id}/interactions"): [{"input": "q", "output": "a"}],
    ("POST", "/v1/users/{user_id}/profile/refresh"): None,
    ("POST", "/v1/users/{user_id}/persona"): None,
    ("PUT", "/v1/users/{user_id}/persona"): {"text": "be brief", "note": "n"},
    ("POST", "/v1/users/{user_id}/persona/rollback"): {"version": 1},
    ("POST", "/v1/users/{user_id}/feedback"): {"completion_id": "chatcmpl-1", "expected_output": "a"},
    ("POST", "/v1/users/{user_id}/align"): None,
    ("POST", "/v1/documents/reload"): None,
}
BAD_VALUES: list[Any] = [None, 3, [1], {"x": 1}]


def _body_routes(client: TestClient) -> dict[tuple[str, str], APIRoute]:
    return {
        (method, route.path): route
        for route in client.app.routes  # type: ignore[attr-defined]
        if isinstance(route, APIRoute)
        for method in route.methods & {"POST", "PUT", "PATCH"}
    }


def _fields(route: APIRoute) -> dict[str, Any]:
    """The top-level fields of the route's body model (of one item, for a list body): key -> annotation."""
    if route.body_field is None:
        return {}
    annotation = route.body_field.field_info.annotation
    model = (
        getattr(annotation, "__args__", (annotation,))[0]
        if getattr(annotation, "__origin__", None) is list
        else annotation
    )
    assert isinstance(model, type) and issubclass(model, BaseModel), route.path
    return {
        field.alias or name: Annotated[field.annotation, *field.metadata]
        if field.metadata
        else field.annotation
        for name, field in model.model_fields.items()
    }


def _cases(route: APIRoute, base: Any) -> list[tuple[str, Any, Any]]:
    """(what, body, annotation of the changed field or None for a whole body that must be refused)."""
    cases: list[tuple[str, Any, Any]] = [(f"body={v!r}", v, None) for v in [*BAD_VALUES, "text"]]
    if base is None:
        return cases  # a route without a body ignores one: only "never a 5xx" holds for these
    for key, annotation in _fields(route).items():
        for value in BAD_VALUES:
            if isinstance(base, list):
                cases.append((f"[0].{key}={value!r}", [base[0] | {key: value}], annotation))
            else:
                cases.append((f"{key}={value!r}", base | {key: value}, annotation))
    return cases


def _accepts(annotation: Any, value: Any) -> bool:
    try:
        TypeAdapter(annotation).validate_python(value)
    except (ValidationError, TypeError, ValueError):
        return False
    return True


def _assert_error_shape(status: int, payload: Any, what: str) -> None:
    assert set(payload) == {"error"}, what
    error = payload["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == status, (what, error)
    assert isinstance(error["message"], str) and error["message"] and "Traceback" not in error["message"]
    if status == 400:
        assert error["type"] == "invalid_request_error", (what, error)


def test_every_body_route_is_fuzzed() -> None:
    client, _, _ = _app()
    assert set(_body_routes(client)) == set(BASES)


# Every body route, and the chat once more with `user` set (the personalized path).
ROUTES = [(m, p, None) for m, p in BASES] + [("POST", "/v1/chat/completions", "alice")]


@pytest.mark.parametrize(
    ("method", "path", "user"), ROUTES, ids=[f"{m} {p}{' user' * bool(u)}" for m, p, u in ROUTES]
)
def test_wrong_typed_top_level_fields_are_4xx_never_5xx(method: str, path: str, user: str | None) -> None:
    client, _, _ = _app()
    route = _body_routes(client)[(method, path)]
    base = BASES[(method, path)]
    if user is not None:
        base = base | {"user": user}
    url = path.replace("{user_id}", "alice")
    failures = []
    for what, body, annotation in _cases(route, base):
        response = client.request(method, url, json=body)
        status = response.status_code
        if status >= 400:
            _assert_error_shape(status, response.json(), what)
        if status >= 500:
            failures.append(f"{what}: {status} {response.text[:200]}")
        elif (
            status < 400
            and base is not None
            and (annotation is None or not _accepts(annotation, body_value(body, what)))
        ):
            failures.append(f"{what}: accepted with {status}")
    assert not failures, "\n".join(failures)


def body_value(body: Any, what: str) -> Any:
    key = what.split("=", 1)[0].removeprefix("[0].")
    return (body[0] if isinstance(body, list) else body)[key]


@pytest.mark.parametrize(
    "body",
    [{"messages": None}, {"model": None, "messages": None}, {"model": MODEL, "messages": 3},
     {"model": MODEL, "messages": HI, "tools": {"x": 1}, "tool_choice": {"type": "function", "function": {"name": "f"}}},
     {"model": MODEL, "messages": HI, "structured_outputs": [1]}],
    ids=["messages-null", "model-and-messages-null", "messages-number", "tools-object", "structured-outputs-list"],
)  # fmt: skip
def test_bodies_that_crashed_vllms_validators_are_a_400_naming_the_field(body: dict[str, Any]) -> None:
    client, backend, _ = _app()
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    _assert_error_shape(400, response.json(), str(body))
    param = next(k for k in ("messages", "tools", "structured_outputs") if k in body and k == error["param"])
    assert error["message"].startswith(f"{param}: ") and not backend.bodies


def test_the_request_model_itself_raises_a_validation_error_not_a_type_error() -> None:
    from fastapi.exceptions import RequestValidationError

    with pytest.raises(RequestValidationError) as caught:
        ChatCompletionRequest.model_validate({"messages": None})
    assert caught.value.errors()[0]["loc"] == ("body", "messages")


# -- user ids ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("user", ["bob\n", "bob\r\n", "", "b" * 129, "bob smith", 7])
def test_a_chat_user_id_is_checked_whole(user: Any) -> None:
    client, backend, personalized = _app()
    response = client.post("/v1/chat/completions", json={"model": MODEL, "messages": HI, "user": user})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "user"
    assert not personalized.bodies and not backend.bodies


def test_a_path_user_id_with_a_final_newline_is_refused_too() -> None:
    client, _, _ = _app()
    response = client.get("/v1/users/bob%0A/export")
    assert response.status_code == 400 and response.json()["error"]["param"] == "path.user_id"
    assert client.get("/v1/users/bob/export").status_code == 200


# -- server.max_tokens ---------------------------------------------------------------------------------


def test_the_cap_fills_in_a_missing_max_tokens_on_both_paths() -> None:
    client, backend, personalized = _app(ServerSettings(max_tokens=32))
    assert client.post("/v1/chat/completions", json={"model": MODEL, "messages": HI}).status_code == 200
    assert backend.bodies[-1]["max_tokens"] == 32
    client.post("/v1/chat/completions", json={"model": MODEL, "messages": HI, "max_tokens": None})
    assert backend.bodies[-1]["max_tokens"] == 32
    client.post("/v1/chat/completions", json={"model": MODEL, "messages": HI, "max_tokens": 5})
    assert backend.bodies[-1]["max_tokens"] == 5
    client.post("/v1/chat/completions", json={"model": MODEL, "messages": HI, "max_completion_tokens": 7})
    assert "max_tokens" not in backend.bodies[-1] and backend.bodies[-1]["max_completion_tokens"] == 7
    assert client.post("/v1/chat/completions", json={"messages": HI, "max_tokens": 33}).status_code == 400

    assert client.post("/v1/chat/completions", json={"messages": HI, "user": "alice"}).status_code == 200
    assert personalized.bodies[-1]["max_tokens"] == 32
    client.post("/v1/chat/completions", json={"messages": HI, "user": "alice", "max_tokens": 4})
    assert personalized.bodies[-1]["max_tokens"] == 4


def test_without_a_cap_a_missing_max_tokens_stays_missing_and_the_cap_never_passes_the_context() -> None:
    client, backend, _ = _app()
    client.post("/v1/chat/completions", json={"model": MODEL, "messages": HI})
    assert "max_tokens" not in backend.bodies[-1]
    client, backend, _ = _app(ServerSettings(max_tokens=100_000))
    client.post("/v1/chat/completions", json={"model": MODEL, "messages": HI})
    assert backend.bodies[-1]["max_tokens"] == 4096  # engine.max_model_len


# -- /v1/completions, /v1/embeddings, /metrics -------------------------------------------------------------

ADMIN, SCOPED = "admin-key-0123456789", "alice-key-0123456789"


class Surface(BaseModel):
    model_config = {"arbitrary_types_allowed": True}
    client: TestClient
    backend: FakeBackend
    memory: FakeMemory
    personalized: FakePersonalized
    salts: CacheSalts


def _surface(keys: bool = False, **sections: Any) -> Surface:
    """The app with fakes; `keys`: an admin key and one scoped to alice (headers ADMIN / SCOPED)."""
    auth = AuthSettings(
        api_keys=[APIKeySetting(name="ops", sha256=hash_key(ADMIN)),
                  APIKeySetting(name="alice-app", sha256=hash_key(SCOPED), user_id="alice")] if keys else []
    )  # fmt: skip
    settings = Settings(engine=EngineSettings(max_model_len=4096), auth=auth, **sections)
    backend, memory, personalized, salts = (
        FakeBackend(),
        FakeMemory(),
        FakePersonalized(),
        CacheSalts("s" * 32),
    )
    app = build_http_app(
        backend, settings, salts, memory=memory, personalized=personalized,  # type: ignore[arg-type]
        alignment=FakeAlignment(), completions=backend,
    )  # fmt: skip
    client = TestClient(app, raise_server_exceptions=False)
    return Surface(client=client, backend=backend, memory=memory, personalized=personalized, salts=salts)


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_a_completion_is_salted_within_its_api_key_and_never_by_the_client() -> None:
    s = _surface(keys=True)
    body = {"model": MODEL, "prompt": "hi", "cache_salt": "guessed", "prompt_cache_key": "run-1"}
    assert s.client.post("/v1/completions", json=body, headers=_bearer(ADMIN)).json() == TEXT_COMPLETION
    sent = s.backend.completion_bodies[-1]
    assert sent["cache_salt"] == s.salts.api_key("ops") and "prompt_cache_key" not in sent
    s.client.post("/v1/completions", json=body | {"user": "alice"}, headers=_bearer(SCOPED))
    assert s.backend.completion_bodies[-1]["cache_salt"] == s.salts.api_key("alice-app")
    assert not s.personalized.bodies  # a completion never reaches an agent


def test_a_user_scoped_key_may_not_name_another_user_on_completions_or_embeddings() -> None:
    s = _surface(keys=True)
    completion = s.client.post(
        "/v1/completions", json={"prompt": "hi", "user": "bob"}, headers=_bearer(SCOPED)
    )
    embedding = s.client.post(
        "/v1/embeddings",
        json={"model": EMBEDDING_MODEL, "input": "hi", "user": "bob"},
        headers=_bearer(SCOPED),
    )
    assert (completion.status_code, embedding.status_code) == (403, 403)
    assert not s.backend.completion_bodies and not s.memory.embedded


@pytest.mark.parametrize(
    ("body", "param"),
    [({"prompt": ["a"] * 17}, "prompt"), ({"prompt": "x" * 100_001}, "prompt"),
     ({"prompt": [[1] * 4097]}, "prompt"), ({"prompt": "hi", "n": 9}, "n"),
     ({"prompt": "hi", "max_tokens": 33}, "max_tokens"), ({"prompt": "hi", "prompt_embeds": "AAAA"}, "prompt_embeds"),
     ({"prompt": None}, "prompt"), ({"prompt": "hi", "logprobs": "3"}, "logprobs")],
    ids=["prompts", "chars", "token-ids", "n", "max_tokens", "prompt_embeds", "prompt-null", "logprobs-string"],
)  # fmt: skip
def test_completion_limits_are_400s_naming_the_field(body: dict[str, Any], param: str) -> None:
    s = _surface(server=ServerSettings(max_tokens=32))
    response = s.client.post("/v1/completions", json={"model": MODEL} | body)
    assert response.status_code == 400, response.text
    _assert_error_shape(400, response.json(), str(body))
    assert response.json()["error"]["param"] == param and not s.backend.completion_bodies


def test_a_completion_without_max_tokens_gets_the_default_16_or_the_cap_below_it() -> None:
    s = _surface(server=ServerSettings(max_tokens=8))
    s.client.post("/v1/completions", json={"prompt": "hi"})
    assert s.backend.completion_bodies[-1]["max_tokens"] == 8
    s = _surface(server=ServerSettings(max_tokens=64))
    s.client.post("/v1/completions", json={"prompt": [1, 2, 3], "max_tokens": None})
    assert s.backend.completion_bodies[-1]["max_tokens"] == 16
    s = _surface()
    s.client.post("/v1/completions", json={"prompt": "hi"})
    assert "max_tokens" not in s.backend.completion_bodies[-1]  # vLLM's own default applies


def test_embeddings_float_and_base64_are_openai_shaped_little_endian_float32() -> None:
    s = _surface()
    floats = s.client.post("/v1/embeddings", json={"model": EMBEDDING_MODEL, "input": ["a", "b"]}).json()
    assert floats["object"] == "list" and floats["model"] == EMBEDDING_MODEL
    assert [d["index"] for d in floats["data"]] == [0, 1] and {d["object"] for d in floats["data"]} == {
        "embedding"
    }
    assert floats["data"][1]["embedding"] == [1.0, -0.5, 0.25]
    assert floats["usage"] == {"prompt_tokens": 6, "total_tokens": 6}
    encoded = s.client.post(
        "/v1/embeddings", json={"model": EMBEDDING_MODEL, "input": "a", "encoding_format": "base64"}
    ).json()
    raw = base64.b64decode(encoded["data"][0]["embedding"])
    assert np.frombuffer(raw, dtype="<f4").tolist() == [1.0, -0.5, 0.25]


def test_embedding_inputs_reach_memory_as_one_list_text_or_token_ids() -> None:
    s = _surface()
    for given, sent in [("hi", ["hi"]), (["a", "b"], ["a", "b"]), ([101, 7592, 102], [[101, 7592, 102]]),
                        ([[7592], [2088, 2]], [[7592], [2088, 2]])]:  # fmt: skip
        assert (
            s.client.post("/v1/embeddings", json={"model": EMBEDDING_MODEL, "input": given}).status_code
            == 200
        )
        assert s.memory.embedded[-1] == sent


@pytest.mark.parametrize(
    ("body", "status", "param", "says"),
    [({"dimensions": 128}, 400, "dimensions", "dimensions: not supported"),
     ({"input": []}, 400, "input", "must not be empty"), ({"input": ""}, 400, "input", "must not be empty"),
     ({"input": ["a", "b", "c"]}, 400, "input", "at most 2 inputs"),
     ({"input": "x" * 11}, 400, "input", "at most 10 characters"),
     ({"input": [[1] * 11]}, 400, "input", "at most 10 token ids"),
     ({"input": [1, -1]}, 400, "input", ""), ({"input": ["a", 1]}, 400, "input", ""),
     ({"input": [True]}, 400, "input", ""),
     ({"model": "text-embedding-3-small"}, 404, "model", "does not exist"),
     ({"encoding_format": "int8"}, 400, "encoding_format", ""),
     ({"truncate_prompt_tokens": 5}, 400, "truncate_prompt_tokens", ""),
     ({"input": "too long"}, 400, "input", "at most 256 tokens")],
    ids=["dimensions", "empty-list", "empty-string", "inputs", "chars", "token-ids", "negative-id", "mixed",
         "bool", "model", "format", "unknown-field", "refused-by-memory"],
)  # fmt: skip
def test_embedding_requests_outside_the_limits_are_refused_naming_the_field(
    body: dict[str, Any], status: int, param: str, says: str
) -> None:
    s = _surface(embeddings=EmbeddingsSettings(max_inputs=2, max_input_chars=10))
    response = s.client.post("/v1/embeddings", json={"model": EMBEDDING_MODEL, "input": "hi"} | body)
    assert response.status_code == status, response.text
    _assert_error_shape(status, response.json(), str(body))
    error = response.json()["error"]
    assert (error["param"] or "").split(".")[0] == param and says in error["message"]
    assert not s.memory.embedded or says == "at most 256 tokens"


def test_models_lists_the_engine_model_and_the_embedding_model() -> None:
    class TwoModels(FakeBackend):
        async def list_models(self) -> dict[str, Any]:
            return {"object": "list", "data": [{"id": MODEL, "object": "model"}]}

    settings = Settings()
    app = build_http_app(TwoModels(), settings, CacheSalts("s" * 32), memory=FakeMemory())  # type: ignore[arg-type]
    ids = [m["id"] for m in TestClient(app).get("/v1/models").json()["data"]]
    assert ids == [MODEL, EMBEDDING_MODEL]


def _samples(text: str) -> list[Any]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def test_metrics_label_every_series_with_its_deployment_and_replica_and_time_streams_apart() -> None:
    class Streaming(FakeBackend):
        async def complete(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any] | str]:
            yield 'data: {"choices": []}\n\n'

    class StreamingAgent(FakePersonalized):
        async def handle(self, body: dict[str, Any]) -> Any:
            if not body.get("stream"):
                return JSONResponse(COMPLETION)
            return StreamingResponse(iter(["data: {}\n\n"]), media_type="text/event-stream")

    settings = Settings()
    backend = Streaming()
    app = build_http_app(
        backend, settings, CacheSalts("s" * 32), memory=FakeMemory(), personalized=StreamingAgent(),  # type: ignore[arg-type]
        alignment=FakeAlignment(), completions=backend,
    )  # fmt: skip
    client = TestClient(app)
    client.post("/v1/completions", json={"prompt": "hi", "stream": True})
    client.post("/v1/chat/completions", json={"messages": HI, "user": "alice", "stream": True})
    client.post("/v1/chat/completions", json={"messages": HI, "user": "alice"})  # not streamed: no TTFT
    samples = _samples(client.get("/metrics").text)
    assert samples and all(s.labels["deployment"] == "ingress" and s.labels["replica"] == "local"
                           for s in samples if s.name.startswith("personaagent_http"))  # fmt: skip
    counts = {(s.labels["route"], s.labels["personalized"]): s.value for s in samples
              if s.name == "personaagent_time_to_first_token_seconds_count"}  # fmt: skip
    assert counts == {("/v1/completions", "false"): 1, ("/v1/chat/completions", "true"): 1}


def test_the_merge_keeps_one_family_per_name_and_every_replica_apart() -> None:
    def engine_text(prompt_tokens: float) -> str:
        registry = CollectorRegistry()
        Counter("vllm:prompt_tokens", "Prompt tokens.", ["model_name"], registry=registry).labels(MODEL).inc(
            prompt_tokens
        )
        Gauge("clash", "A series with a replica label of its own.", ["replica"], registry=registry).labels(
            "x"
        ).set(1)
        return generate_latest(registry).decode()

    scrape = MetricsScrape(
        parts=[ReplicaMetrics(deployment="engine", replica="r1", text=engine_text(3)),
               ReplicaMetrics(deployment="engine", replica="r2", text=engine_text(5))],
        errors={"memory": 1},
    )  # fmt: skip
    text = merge_replica_metrics(scrape)
    assert text.count("# TYPE vllm:prompt_tokens_total counter") == 1
    samples = _samples(text)
    tokens = {s.labels["replica"]: s.value for s in samples if s.name == "vllm:prompt_tokens_total"}
    assert tokens == {"r1": 3, "r2": 5}
    assert all(s.labels["deployment"] == "engine" for s in samples if s.name == "vllm:prompt_tokens_total")
    clash = [s.labels for s in samples if s.name == "clash"]
    assert {c["exported_replica"] for c in clash} == {"x"} and {c["replica"] for c in clash} == {"r1", "r2"}
    errors = [s for s in samples if s.name == "personaagent_metrics_collect_errors"]
    assert [(e.labels, e.value) for e in errors] == [({"deployment": "memory"}, 1)]
