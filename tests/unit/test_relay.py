"""The one engine-output relay, plain and personalized (fakes for the agent and the memory port)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import JSONResponse, StreamingResponse

from agent.core import AgentPlan
from serving.personalized_chat import PersonalizedChat
from serving.relay import relay_chat


def _chunk(content: str, finish: str | None = None) -> str:
    data = {
        "id": "chatcmpl-1",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}],
    }
    return f"data: {json.dumps(data)}\n\n"


async def _items(items: list[Any]) -> AsyncIterator[Any]:
    for item in items:
        if isinstance(item, Exception):
            raise item
        yield item


async def _body(response: Any) -> str:
    assert isinstance(response, StreamingResponse)
    return "".join([part async for part in response.body_iterator])  # type: ignore[misc]


def _events(text: str) -> list[str]:
    return [e for e in text.split("\n\n") if e]


async def test_plain_stream_passes_through_with_one_done_last() -> None:
    chunks = [_chunk("a"), _chunk("b") + _chunk("c") + "data: [DONE]\n\n"]
    events = _events(await _body(await relay_chat(_items(chunks))))
    assert events == [*_events("".join(chunks))[:3], "data: [DONE]"]


async def test_error_mid_stream_ends_with_an_error_event_and_done() -> None:
    events = _events(await _body(await relay_chat(_items([_chunk("a"), RuntimeError("secret detail")]))))
    error = json.loads(events[1][6:])["error"]
    assert error["code"] == 500 and "secret detail" not in error["message"]
    assert events[-1] == "data: [DONE]"


async def test_engine_error_and_empty_output_are_http_errors() -> None:
    response = await relay_chat(_items([{"error": {"code": 400, "message": "bad", "param": "x"}}]))
    assert isinstance(response, JSONResponse) and response.status_code == 400
    response = await relay_chat(_items([]))
    assert response.status_code == 500


class _FakeAgent:
    def __init__(self, output: list[Any]) -> None:
        self.output = output

    async def prepare(self, user_id: str, messages: list[dict[str, Any]], **_: Any) -> AgentPlan:
        return AgentPlan(user_id=user_id, cache_salt="s", persona_version=3, persona=None, messages=messages)

    def generate(self, plan: AgentPlan, body: dict[str, Any]) -> AsyncIterator[Any]:
        return _items(self.output)


class _Recorded:
    """A memory port whose `record_chat` notes what was written, and when."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def record_chat(self, user_id: str, item: Any, generation: int | None = None) -> None:
        self.log.append(f"write {user_id} {item.metadata['answer']}")


def _chat(output: list[Any], log: list[str]) -> PersonalizedChat:
    return PersonalizedChat(_FakeAgent(output), engine=None, memory=_Recorded(log), write_back=True)  # type: ignore[arg-type]


BODY = {"user": "alice@example.com", "messages": [{"role": "user", "content": "hi"}], "stream": True}


async def test_personalized_stream_traces_first_and_last_and_writes_back_before_done() -> None:
    log: list[str] = []
    response = await _chat([_chunk("Hel"), _chunk("lo"), _chunk("", "stop"), "data: [DONE]\n\n"], log).handle(
        BODY
    )
    events = []
    async for part in response.body_iterator:  # type: ignore[attr-defined]
        events += [(e, list(log)) for e in _events(part)]
    data = [json.loads(e[6:]) for e, _ in events[:-1]]
    assert ["persona_agent" in d for d in data] == [True, False, True]
    assert data[0]["persona_agent"]["user"] == "alice@example.com"
    done, written_by_then = events[-1]
    assert done == "data: [DONE]" and written_by_then == ["write alice@example.com Hello"]


async def test_personalized_client_tool_call_is_not_written_back() -> None:
    log: list[str] = []
    response = await _chat([_chunk("", "tool_calls")], log).handle(BODY)
    assert _events(await _body(response))[-1] == "data: [DONE]" and log == []


async def test_personalized_whole_response_carries_the_trace_and_is_written_back() -> None:
    log: list[str] = []
    completion = {"id": "c1", "choices": [{"message": {"content": "Hi Alice"}, "finish_reason": "stop"}]}
    response = await _chat([completion], log).handle(BODY | {"stream": False})
    body = json.loads(response.body)
    assert body["persona_agent"]["persona_version"] == 3 and log == ["write alice@example.com Hi Alice"]
