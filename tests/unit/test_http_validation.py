"""Bad input on the whole HTTP app (built with fakes, no Ray, no engine): every POST/PUT/PATCH route answers
each top-level field set to null, a number, a list or an object with a 4xx in the OpenAI error shape, never
a 5xx; user ids are checked whole; `server.max_tokens` fills in a request's missing `max_tokens`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

import pytest
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import BaseModel, TypeAdapter, ValidationError

from alignment.jobs import AlignmentJob
from memory.records import Interaction, PersonaVersion, Profile, UserExport, UserRecord
from personaagent.salts import CacheSalts
from personaagent.settings import EngineSettings, ServerSettings, Settings
from serving.chat_request import ChatCompletionRequest
from serving.http_app import build_http_app
from serving.personalized_chat import check_user_id

NOW = datetime(2026, 12, 7, tzinfo=UTC)
MODEL = "smollm2-135m-instruct"
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
        alignment=FakeAlignment(),
    )  # fmt: skip
    return TestClient(app, raise_server_exceptions=False), backend, personalized


HI = [{"role": "user", "content": "hi"}]
# A valid body for every route that takes one (None: the route reads no body). A route missing here fails
# `test_every_body_route_is_fuzzed`, so a new route cannot go unfuzzed.
BASES: dict[tuple[str, str], Any] = {
    ("POST", "/v1/chat/completions"): {"model": MODEL, "messages": HI},
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
