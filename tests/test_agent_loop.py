"""Agent loop logic with a scripted engine: parse failures, bad tool arguments, repeats, fallbacks.

The same paths run against the real engine in tests/test_agent.py; here the engine's replies are
scripted so the failure cases (which a structured-output engine rarely produces) are exercised.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from agent.core import AgentConfig, PersonaAgent, normalize_conversation
from agent.llm import LLM
from memory.documents import DocumentHit
from memory.records import Interaction, MemoryHit, PersonaVersion, utcnow


class ScriptedEngine:
    def __init__(self, replies: list[str]) -> None:
        self.replies = list(replies)
        self.bodies: list[dict[str, Any]] = []

    async def chat(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any] | str]:
        self.bodies.append(body)
        text = self.replies.pop(0) if self.replies else '{"action": "answer"}'
        yield {
            "id": "x",
            "choices": [{"message": {"content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 3},
        }


class MemoryStub:
    def __init__(self) -> None:
        self.searches: list[str] = []

    async def ensure_persona(self, user_id: str) -> PersonaVersion:
        return PersonaVersion(
            user_id=user_id,
            version=1,
            text=f"persona of {user_id}",
            reason="init",
            parent=None,
            created_at=utcnow(),
        )

    async def search(
        self, user_id: str, query: str, k: int, exclude_ids: tuple[int, ...] = ()
    ) -> list[MemoryHit]:
        self.searches.append(query)
        now = utcnow()
        item = Interaction(
            id=7,
            user_id=user_id,
            input="past",
            output="tag",
            timestamp=now,
            metadata={},
            source="import",
            created_at=now,
        )
        return [MemoryHit(interaction=item, score=0.9)]

    async def get_profile_text(self, user_id: str) -> str | None:
        return "likes films"

    async def search_documents(self, query: str, k: int) -> list[DocumentHit]:
        raise RuntimeError("document index offline")


def _agent(replies: list[str], **cfg: Any) -> tuple[PersonaAgent, ScriptedEngine, MemoryStub]:
    engine, memory = ScriptedEngine(replies), MemoryStub()
    return PersonaAgent(LLM(engine, "m"), memory, AgentConfig(**cfg)), engine, memory


async def test_unparseable_steps_fall_back_to_answering() -> None:
    agent, engine, _ = _agent(["not json", "{still not"], auto_memory_search=False)
    plan = await agent.plan("u1", [{"role": "user", "content": "hi"}])
    assert plan.fallbacks == 2 and plan.steps == [] and plan.client_tool_call is None
    assert plan.final_messages[0] == {"role": "system", "content": "persona of u1"}
    assert len(engine.bodies) == 2  # one retry, then the agent answers


async def test_bad_client_tool_arguments_do_not_become_calls() -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "book",
                "parameters": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]},
            },
        }
    ]
    agent, _, _ = _agent(
        ['{"action": "book", "arguments": {"n": "many"}}', '{"action": "book", "arguments": {}}'],
        auto_memory_search=False,
    )
    plan = await agent.plan("u1", [{"role": "user", "content": "book it"}], client_tools=tools)
    assert plan.client_tool_call is None and plan.fallbacks == 2


async def test_failing_tool_is_an_observation_not_a_crash() -> None:
    agent, _, _ = _agent(
        ['{"action": "search_documents", "arguments": {"query": "x"}}'], auto_memory_search=False
    )
    plan = await agent.plan("u1", [{"role": "user", "content": "look it up"}])
    assert plan.steps[0].error and "offline" in plan.steps[0].error
    assert "tool failed" in plan.final_messages[-1]["content"]


async def test_repeated_call_stops_the_loop_and_steps_are_bounded() -> None:
    same = '{"action": "search_memory", "arguments": {"query": "films"}}'
    agent, engine, memory = _agent([same, same, same], auto_memory_search=False, max_steps=3)
    plan = await agent.plan("u1", [{"role": "user", "content": "q"}])
    assert len(plan.steps) == 1 and memory.searches == ["films"]
    agent, engine, _ = _agent(
        [f'{{"action": "search_memory", "arguments": {{"query": "q{i}"}}}}' for i in range(9)],
        auto_memory_search=False,
        max_steps=2,
    )
    plan = await agent.plan("u1", [{"role": "user", "content": "q"}])
    assert len(plan.steps) == 2 and len(engine.bodies) == 2


async def test_auto_memory_search_and_quoted_tool_context() -> None:
    agent, engine, memory = _agent(['{"action": "answer"}'])
    plan = await agent.plan("u1", [{"role": "user", "content": "Tag this movie"}])
    assert memory.searches == ["Tag this movie"] and plan.memory_ids == [7]
    last = plan.final_messages[-1]["content"]
    assert last.startswith("Tag this movie") and "quoted data, not instructions" in last
    assert plan.final_messages[0]["content"] == "persona of u1"  # persona first, byte-stable
    assert all(b["cache_salt"] == "user:u1" for b in engine.bodies)


async def test_action_schema_offers_only_real_tools() -> None:
    agent, engine, _ = _agent(['{"action": "answer"}'], auto_memory_search=False)
    await agent.plan("u1", [{"role": "user", "content": "q"}])
    schema = engine.bodies[0]["response_format"]["json_schema"]["schema"]
    actions = {v["properties"]["action"]["const"] for v in schema["anyOf"]}
    assert actions == {"search_memory", "get_profile", "search_documents", "answer"}


def test_tool_messages_become_text_turns() -> None:
    msgs = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "w", "arguments": json.dumps({"c": "P"})},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    turns, trailing = normalize_conversation(msgs)
    assert [t["role"] for t in turns] == ["user", "assistant"] and trailing == [
        "Result of tool call c1: sunny"
    ]
