"""`/v1/responses` on the whole HTTP app, without Ray or an engine: a fake engine behind the chat backend,
the real `PersonalizedChat` over a fake agent, and the real SQLite response store behind the memory port.
Every Response object and stream event is parsed with the `openai` package's own models, as the SDK does.
The real stack runs the same routes with the SDKs themselves (tests/stack/test_responses.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from agent.core import AgentPlan
from memory.responses import ResponseScope, SQLiteResponseStore, StoredResponse
from memory.store import SQLiteStore
from personaagent.salts import CacheSalts
from personaagent.settings import APIKeySetting, AuthSettings, EngineSettings, ServerSettings, Settings
from serving.auth import hash_key
from serving.http_app import build_http_app
from serving.personalized_chat import PersonalizedChat
from tests.unit.test_http_validation import FakeMemory

MODEL = "smollm2-135m-instruct"
KEYS = {"ops": ("ops-key", None), "other": ("other-key", None), "alice": ("alice-key", "alice")}
STREAM_EVENT = TypeAdapter(ResponseStreamEvent)


def completion(content: str | None = "Hello there", tool_calls: list[Any] | None = None,
               finish: str = "stop") -> dict[str, Any]:  # fmt: skip
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": MODEL,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14,
                      "prompt_tokens_details": {"cached_tokens": 8}}}  # fmt: skip


def chunk(delta: dict[str, Any], finish: str | None = None, usage: dict[str, Any] | None = None) -> str:
    data: dict[str, Any] = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
                            "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip
    if usage:
        data["usage"] = usage
    return f"data: {json.dumps(data)}\n\n"


USAGE = {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}
TEXT_STREAM = [chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}) + chunk({"content": "lo"}),
               chunk({}, "stop"), chunk({}, usage=USAGE) + "data: [DONE]\n\n"]  # fmt: skip
CALL = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
CALL_STREAM = [chunk({"role": "assistant", "content": ""}), chunk({"tool_calls": [CALL]}),
               chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
               chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
               chunk({}, "tool_calls"), chunk({}, usage=USAGE), "data: [DONE]\n\n"]  # fmt: skip
WEATHER = {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {
    "city": {"type": "string"}}, "required": ["city"]}}  # fmt: skip


class ScriptedOutput:
    """What the engine (or the agent) answers next: a whole completion, or a list of SSE strings."""

    def __init__(self) -> None:
        self.next: Any = completion()
        self.bodies: list[dict[str, Any]] = []

    async def run(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any] | str]:
        self.bodies.append(body)
        if isinstance(self.next, dict):
            yield self.next
            return
        for item in self.next:
            yield item


class FakeBackend:
    def __init__(self, script: ScriptedOutput) -> None:
        self.script = script

    def chat(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any] | str]:
        return self.script.run(body)

    async def list_models(self) -> dict[str, Any]:
        return {"object": "list", "data": []}

    async def metrics_text(self) -> str:
        return ""

    async def check_health(self) -> None:
        return None


class FakeAgent:
    """The agent's two steps as the relay sees them: a plan (persona version 3), then the scripted output."""

    def __init__(self, script: ScriptedOutput) -> None:
        self.script = script
        self.prepared: list[tuple[str, list[dict[str, Any]]]] = []

    async def prepare(self, user_id: str, messages: list[dict[str, Any]], **_: Any) -> AgentPlan:
        self.prepared.append((user_id, messages))
        return AgentPlan(user_id=user_id, cache_salt="s", persona_version=3, persona="p", messages=messages,
                         user_generation=0)  # fmt: skip

    def generate(self, plan: AgentPlan, body: dict[str, Any]) -> AsyncIterator[Any]:
        return self.script.run(body)


class StoreMemory(FakeMemory):
    """The memory port with the real SQLite response store (and the real user table it checks)."""

    def __init__(self, path: Path) -> None:
        self.users = SQLiteStore(path)
        self.responses = SQLiteResponseStore(path)
        self.written: list[tuple[str, str]] = []
        self.completion_ids: list[str] = []

    async def record_chat(self, user_id: str, item: Any, generation: int | None = None) -> int:
        self.written.append((user_id, item.metadata["answer"]))
        self.completion_ids.append(item.metadata["completion_id"])
        return 1

    async def save_response(self, record: StoredResponse) -> bool:
        return self.responses.save(record)

    async def get_response(self, response_id: str, scope: ResponseScope) -> StoredResponse | None:
        return self.responses.get(response_id, scope)

    async def delete_response(self, response_id: str, scope: ResponseScope) -> bool:
        return self.responses.delete(response_id, scope)

    async def delete_user(self, user_id: str) -> bool:
        existed = self.users.delete_user(user_id)
        self.responses.delete_user(user_id)
        return existed


class Harness:
    def __init__(self, path: Path, server: ServerSettings | None = None) -> None:
        keys = [
            APIKeySetting(name=name, sha256=hash_key(key), user_id=user) for name, (key, user) in KEYS.items()
        ]
        settings = Settings(server=server or ServerSettings(max_tokens=8192), engine=EngineSettings(max_model_len=4096),
                            auth=AuthSettings(api_keys=keys))  # fmt: skip
        self.script = ScriptedOutput()
        self.agent = FakeAgent(self.script)
        self.memory = StoreMemory(path)
        for user in ("alice", "bob"):
            self.memory.users.open_user(user)
        personalized = PersonalizedChat(self.agent, engine=_NoTokens(), memory=self.memory, write_back=True)  # type: ignore[arg-type]
        app = build_http_app(FakeBackend(self.script), settings, CacheSalts("s" * 32), memory=self.memory,  # type: ignore[arg-type]
                             personalized=personalized)  # fmt: skip
        self.client = TestClient(app, raise_server_exceptions=False)

    def post(self, body: dict[str, Any], key: str = "ops") -> Any:
        return self.client.post(
            "/v1/responses", json=body, headers={"Authorization": f"Bearer {KEYS[key][0]}"}
        )

    def get(self, path: str, key: str = "ops", **params: Any) -> Any:
        return self.client.get(path, params=params, headers={"Authorization": f"Bearer {KEYS[key][0]}"})

    def delete(self, path: str, key: str = "ops") -> Any:
        return self.client.delete(path, headers={"Authorization": f"Bearer {KEYS[key][0]}"})

    def events(self, body: dict[str, Any], key: str = "ops") -> list[Any]:
        response = self.post(body | {"stream": True}, key)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/event-stream")
        events = []
        for block in response.text.split("\n\n"):
            if not block:
                continue
            kind, data = block.split("\n")
            event = STREAM_EVENT.validate_python(json.loads(data.removeprefix("data: ")))
            assert kind == f"event: {event.type}"
            events.append(event)
        return events


class _NoTokens:
    async def count_chat_tokens(self, messages: list[dict[str, Any]]) -> int:
        return 1


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path / "mem.db")
    yield harness
    harness.memory.responses.close()
    harness.memory.users.close()


def parsed(response: Any) -> Response:
    assert response.status_code == 200, response.text
    return Response.model_validate(response.json())


# -- the request, as the chat path gets it -------------------------------------------------------------


def test_a_plain_text_request_is_a_chat_of_the_plain_model(h: Harness) -> None:
    response = parsed(h.post({"model": MODEL, "input": "Hi", "instructions": "Be brief.", "max_output_tokens": 9,
                              "temperature": 0.2, "top_p": 0.9, "metadata": {"k": "v"}}))  # fmt: skip
    body = h.script.bodies[-1]
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert body["max_tokens"] == 9 and body["temperature"] == 0.2 and body["top_p"] == 0.9
    assert body["cache_salt"] == CacheSalts("s" * 32).api_key("ops") and not h.agent.prepared
    assert response.output_text == "Hello there" and response.status == "completed"
    assert response.id.startswith("resp_") and response.metadata == {"k": "v"} and response.model == MODEL
    usage = response.usage
    assert usage is not None and (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (11, 3, 14)
    assert usage.input_tokens_details.cached_tokens == 8


def test_items_tools_and_formats_translate_to_their_chat_fields(h: Harness) -> None:
    items = [
        {"role": "developer", "content": "Use tools."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather "},
                                                         {"type": "input_text", "text": "in Paris?"}]},
        {"type": "message", "role": "assistant", "id": "msg_a", "status": "completed",
         "content": [{"type": "output_text", "text": "Let me check.", "annotations": [], "logprobs": []}]},
        {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather",
         "arguments": '{"city": "Paris"}', "status": "completed"},
        {"type": "function_call_output", "call_id": "call_1", "output": "18 C"},
    ]  # fmt: skip
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    parsed(h.post({"model": MODEL, "input": items, "tools": [WEATHER], "tool_choice": "required",
                   "parallel_tool_calls": False, "store": False,
                   "text": {"format": {"type": "json_schema", "name": "a", "schema": schema, "strict": True}}}))  # fmt: skip
    body = h.script.bodies[-1]
    assert body["messages"] == [
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
    ]  # fmt: skip
    assert body["tools"] == [
        {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER["parameters"]}}
    ]
    assert body["tool_choice"] == "required" and body["parallel_tool_calls"] is False
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "a", "schema": schema, "strict": True},
    }
    named = {"type": "function", "name": "get_weather"}
    parsed(h.post({"model": MODEL, "input": "x", "tools": [WEATHER], "tool_choice": named}))
    assert h.script.bodies[-1]["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"background": True}, "background"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": [{"type": "file_search", "vector_store_ids": ["v"]}]}, "tools[0].type"),
        ({"tools": [WEATHER | {"defer_loading": True}]}, "tools[0].defer_loading"),
        ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
        ({"include": ["message.output_text.logprobs"]}, "include"),
        ({"truncation": "auto"}, "truncation"),
        ({"reasoning": {"effort": "high"}}, "reasoning"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"service_tier": "flex"}, "service_tier"),
        ({"text": {"verbosity": "low"}}, "text.verbosity"),
        ({"frobnicate": 1}, "frobnicate"),
        ({"input": [{"type": "reasoning", "summary": []}]}, "input[0].type"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
         "input[0].content[0].type"),
        ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[0].call_id"),
        ({"input": []}, "input"),
        ({"max_output_tokens": 9000}, "max_output_tokens"),
        ({"persona_agent_options": {"persona": False}}, "user"),
    ],
)  # fmt: skip
def test_unsupported_fields_are_a_400_naming_the_field_and_nothing_runs(
    h: Harness, extra: dict[str, Any], param: str
) -> None:
    response = h.post({"model": MODEL, "input": "Hi"} | extra)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error", error
    assert param.split("[")[0].split(".")[0] in error["message"]
    assert not h.script.bodies and not h.agent.prepared


def test_accepted_off_values_are_not_refused(h: Harness) -> None:
    off = {"background": False, "include": [], "truncation": "disabled", "reasoning": {"effort": None},
           "service_tier": "auto", "top_logprobs": 0, "stream_options": {"include_obfuscation": False},
           "prompt_cache_key": "run-1", "text": {"format": {"type": "text"}}}  # fmt: skip
    parsed(h.post({"model": MODEL, "input": "Hi"} | off))


def test_the_model_must_be_the_served_one(h: Harness) -> None:
    response = h.post({"model": "gpt-5", "input": "Hi"})
    assert response.status_code == 404 and response.json()["error"]["param"] == "model"


# -- output ----------------------------------------------------------------------------------------------


def test_client_function_calls_are_function_call_items(h: Harness) -> None:
    call = {
        "id": "call_9",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
    }
    h.script.next = completion(None, [call], "tool_calls")
    response = parsed(h.post({"model": MODEL, "input": "Weather?", "tools": [WEATHER]}))
    assert [item.type for item in response.output] == ["function_call"]
    item = response.output[0]
    assert item.type == "function_call" and item.call_id == "call_9" and item.name == "get_weather"
    assert json.loads(item.arguments) == {"city": "Oslo"} and response.tools[0].type == "function"


def test_a_cut_answer_is_incomplete(h: Harness) -> None:
    h.script.next = completion("Hel", finish="length")
    response = parsed(h.post({"model": MODEL, "input": "Hi", "max_output_tokens": 1}))
    assert response.status == "incomplete" and response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"


def test_an_engine_error_is_the_engines_http_error(h: Harness) -> None:
    h.script.next = {"error": {"message": "too long", "type": "BadRequestError", "param": None, "code": 400}}
    response = h.post({"model": MODEL, "input": "Hi"})
    assert response.status_code == 400 and response.json()["error"]["message"] == "too long"


# -- streaming -------------------------------------------------------------------------------------------


def test_a_text_stream_is_the_event_sequence_the_sdk_parses(h: Harness) -> None:
    h.script.next = TEXT_STREAM
    events = h.events({"model": MODEL, "input": "Hi"})
    assert [e.type for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed",
    ]  # fmt: skip
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Hello"
    final = events[-1].response
    assert final.output_text == "Hello" and final.usage is not None and final.usage.output_tokens == 2
    assert h.script.bodies[-1]["stream_options"] == {"include_usage": True}
    # Stored before the end: the same object, by id.
    assert parsed(h.get(f"/v1/responses/{final.id}")) == final


def test_a_streamed_client_call_has_its_argument_events(h: Harness) -> None:
    h.script.next = CALL_STREAM
    events = h.events({"model": MODEL, "input": "Weather?", "tools": [WEATHER]})
    assert [e.type for e in events][2:] == [
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed",
    ]  # fmt: skip
    done = events[-3]
    assert done.type == "response.function_call_arguments.done" and json.loads(done.arguments) == {
        "city": "Paris"
    }
    (item,) = events[-1].response.output
    assert item.type == "function_call" and item.call_id == "call_1" and item.status == "completed"


def test_an_error_mid_stream_ends_with_response_failed_and_no_detail(h: Harness) -> None:
    async def broken(body: dict[str, Any]) -> AsyncIterator[Any]:
        h.script.bodies.append(body)
        for item in [TEXT_STREAM[0], TEXT_STREAM[1]]:
            yield item
        raise RuntimeError("secret detail")

    h.script.run = broken  # type: ignore[method-assign]
    events = h.events({"model": MODEL, "input": "Hi"})
    assert events[-1].type == "response.failed" and events[-1].response.error is not None
    assert "secret detail" not in events[-1].response.error.message


# -- personalized ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "key"), [({"user": "alice"}, "ops"), ({"safety_identifier": "alice"}, "ops"),
                                             ({}, "alice")])  # fmt: skip
def test_a_user_identity_is_that_users_agent_traced_and_written_back(
    h: Harness, fields: dict[str, Any], key: str
) -> None:
    h.script.next = completion("Hi Alice")
    response = parsed(h.post({"model": MODEL, "input": "Hello", "instructions": "Be kind."} | fields, key))
    user, messages = h.agent.prepared[-1]
    assert user == "alice" and messages == [{"role": "system", "content": "Be kind."},
                                            {"role": "user", "content": "Hello"}]  # fmt: skip
    assert response.model_extra is not None and response.model_extra["persona_agent"]["persona_version"] == 3
    assert h.memory.written == [("alice", "Hi Alice")]
    assert h.memory.completion_ids == [response.id]  # feedback names the response id the client knows


def test_a_personalized_stream_is_traced_and_written_back_before_it_completes(h: Harness) -> None:
    h.script.next = TEXT_STREAM
    events = h.events({"model": MODEL, "input": "Hello", "user": "alice"})
    assert events[-1].response.model_extra["persona_agent"]["user"] == "alice"
    assert h.memory.written == [("alice", "Hello")] and h.memory.completion_ids == [events[-1].response.id]


def test_chat_with_a_user_scoped_key_and_no_user_field_is_that_users_agent(h: Harness) -> None:
    h.script.next = completion("Hi Alice")
    response = h.client.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]},
                             headers={"Authorization": "Bearer alice-key"})  # fmt: skip
    assert response.status_code == 200 and response.json()["persona_agent"]["user"] == "alice"
    assert h.agent.prepared[-1][0] == "alice"


# -- stored responses ----------------------------------------------------------------------------------------


def test_retrieve_input_items_and_delete(h: Harness) -> None:
    created = parsed(h.post({"model": MODEL, "input": [{"role": "user", "content": "one"},
                                                       {"role": "user", "content": "two"}]}))  # fmt: skip
    assert parsed(h.get(f"/v1/responses/{created.id}")) == created
    for query in ({"stream": "true"}, {"include": "message.output_text.logprobs"}):
        refused = h.get(f"/v1/responses/{created.id}", **query)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == next(iter(query))
    listed = h.get(f"/v1/responses/{created.id}/input_items").json()
    assert [i["content"][0]["text"] for i in listed["data"]] == ["two", "one"]  # newest first by default
    assert listed["first_id"] == listed["data"][0]["id"] and listed["has_more"] is False
    asc = h.get(f"/v1/responses/{created.id}/input_items", order="asc", limit=1).json()
    assert [i["content"][0]["text"] for i in asc["data"]] == ["one"] and asc["has_more"] is True
    after = h.get(f"/v1/responses/{created.id}/input_items", order="asc", after=asc["last_id"]).json()
    assert [i["content"][0]["text"] for i in after["data"]] == ["two"]
    deleted = h.delete(f"/v1/responses/{created.id}")
    assert deleted.status_code == 200 and deleted.json() == {"id": created.id, "object": "response.deleted",
                                                             "deleted": True}  # fmt: skip
    assert h.get(f"/v1/responses/{created.id}").status_code == 404
    assert h.delete(f"/v1/responses/{created.id}").status_code == 404


def test_store_false_is_not_kept(h: Harness) -> None:
    created = parsed(h.post({"model": MODEL, "input": "Hi", "store": False}))
    assert h.get(f"/v1/responses/{created.id}").status_code == 404


def test_previous_response_id_continues_the_stored_conversation(h: Harness) -> None:
    first = parsed(h.post({"model": MODEL, "input": "My name is Ada.", "instructions": "First only."}))
    h.script.next = completion("Ada")
    second = parsed(h.post({"model": MODEL, "input": "What is my name?", "previous_response_id": first.id}))
    assert h.script.bodies[-1]["messages"] == [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello there"},
        {"role": "user", "content": "What is my name?"},
    ]  # fmt: skip  (instructions are not carried over, as in OpenAI's API)
    assert second.previous_response_id == first.id
    items = h.get(f"/v1/responses/{second.id}/input_items", order="asc").json()["data"]
    assert [i["role"] for i in items] == ["user", "assistant", "user"]


def test_a_function_call_is_continued_by_its_output(h: Harness) -> None:
    call = {"id": "call_9", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    h.script.next = completion(None, [call], "tool_calls")
    first = parsed(h.post({"model": MODEL, "input": "Weather?", "tools": [WEATHER], "user": "alice"}))
    h.script.next = completion("Sunny")
    output = {"type": "function_call_output", "call_id": "call_9", "output": "sunny"}
    parsed(h.post({"model": MODEL, "input": [output], "previous_response_id": first.id, "tools": [WEATHER],
                   "user": "alice"}))  # fmt: skip
    assert h.agent.prepared[-1][1][-2:] == [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_9", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_9", "content": "sunny"},
    ]  # fmt: skip
    assert h.memory.written == [("alice", "Sunny")]  # the client's call itself is not written back


def test_a_stored_response_belongs_to_its_key_and_user(h: Harness) -> None:
    mine = parsed(h.post({"model": MODEL, "input": "Hi", "user": "alice"}))
    plain = parsed(h.post({"model": MODEL, "input": "Hi"}))
    # Another key: nothing, not even that it exists.
    for path in (f"/v1/responses/{mine.id}", f"/v1/responses/{mine.id}/input_items"):
        assert h.get(path, key="other").status_code == 404
    assert h.delete(f"/v1/responses/{mine.id}", key="other").status_code == 404
    other_key = h.post({"model": MODEL, "input": "x", "previous_response_id": plain.id}, key="other")
    assert other_key.status_code == 404 and other_key.json()["error"]["param"] == "previous_response_id"
    # Another user, or no user, with the same key: the conversation is not theirs to continue.
    for fields in ({"user": "bob"}, {}):
        response = h.post({"model": MODEL, "input": "x", "previous_response_id": mine.id} | fields)
        assert response.status_code == 404, fields
    assert (
        h.post({"model": MODEL, "input": "x", "previous_response_id": plain.id, "user": "alice"}).status_code
        == 404
    )
    # Alice's own key may not read a response of the admin key, even her own user's.
    assert h.get(f"/v1/responses/{mine.id}", key="alice").status_code == 404
    alices = parsed(h.post({"model": MODEL, "input": "Hi"}, key="alice"))
    assert parsed(h.get(f"/v1/responses/{alices.id}", key="alice")) == alices
    assert parsed(h.post({"model": MODEL, "input": "x", "previous_response_id": alices.id}, key="alice"))


def test_the_users_delete_erases_their_responses_and_a_late_write_is_refused(h: Harness) -> None:
    mine = parsed(h.post({"model": MODEL, "input": "Hi", "user": "alice"}))
    assert h.client.delete("/v1/users/alice", headers={"Authorization": "Bearer ops-key"}).status_code == 200
    assert h.get(f"/v1/responses/{mine.id}").status_code == 404
    # A response whose request began before the delete (generation 0) is refused, even once alice is back.
    h.memory.users.open_user("alice")
    late = StoredResponse(
        id="resp_late", user_id="alice", generation=0, api_key="ops", input_items=[], response={}
    )
    assert not asyncio.run(h.memory.save_response(late))
    assert h.get("/v1/responses/resp_late").status_code == 404
