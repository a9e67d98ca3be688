"""The agent always ends with an answer that holds no call text, within the client's token budget.

Scripted engines (tests/unit/test_agent_loop.py) play a model that keeps writing calls, in markup the
parser reads and as text it does not; the same rules run on the real stack in tests/stack/test_agent.py.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from agent.prompts import FINAL_ANSWER, NO_ANSWER
from personaagent.written_calls import contains_call_text
from tests.unit.test_agent_loop import WEATHER, _agent, _respond, call

NAMES = {"search_memory", "get_profile", "search_documents", "get_weather"}


def _events(items: list[Any]) -> list[dict[str, Any]]:
    events = [e for chunk in items for e in chunk.split("\n\n") if e.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and events.count("data: [DONE]") == 1
    return [json.loads(e[6:]) for e in events[:-1]]


async def test_a_model_that_only_writes_calls_still_gets_an_answer_without_call_text() -> None:
    searches = [[call("search_memory", {"query": f"q{i}"})] for i in range(3)]
    for stream in (False, True):
        for last in (
            '{"name": "search_memory", "arguments": {"query": "again"}}',  # written as text
            '<tool_call>\n{"name": "get_profile", "arguments": {}}\n</tool_call>',  # markup the parser missed
            '{{"name": "search_memory",',  # cut off
        ):
            agent, engine, _ = _agent([*searches, last, last], auto_memory_search=False, max_steps=3)
            plan = await agent.prepare("u1", [{"role": "user", "content": "Say hi."}])
            answer, calls = await _respond(agent, plan, stream)
            assert calls == [] and not contains_call_text(answer, NAMES), (stream, last, answer)
            assert answer == NO_ANSWER  # the answer round wrote only call text too
            assert len(engine.bodies) == 4 and "tools" not in engine.bodies[-1]
            final = engine.bodies[-1]["messages"]
            # The question as asked, what the tools returned (quoted), and the instruction, in one user
            # turn; the persona without the tool listing; none of the rounds' call turns to imitate.
            assert [m["role"] for m in final] == ["system", "user"] and "# Tools" not in final[0]["content"]
            ask = final[-1]["content"]
            assert ask.startswith("Say hi.") and ask.endswith(FINAL_ANSWER.render()), ask
            assert ask.count('<data kind="tool_result">') == 3 and "<tool_call>" not in ask
            assert [r.kind for r in plan.rounds] == ["tools"] * 3 + ["answer"]
            assert plan.rounds[-1].outcome == "call_text_dropped"


async def test_every_way_the_tool_rounds_end_leads_to_the_answer_round() -> None:
    same = [call("search_memory", {"query": "films"})]
    cases = {
        "repeated_calls": [same, same, "here you go"],
        "call_text": [same, 'Let me check {"name": "get_profile", "arguments": {}}', "here you go"],
    }
    for outcome, replies in cases.items():
        for stream in (False, True):
            agent, engine, _ = _agent(replies, auto_memory_search=False, max_steps=3)
            plan = await agent.prepare("u1", [{"role": "user", "content": "Say hi."}])
            answer, _ = await _respond(agent, plan, stream)
            assert answer.endswith("here you go") and '"name"' not in answer, (outcome, stream, answer)
            assert plan.rounds[1].outcome == outcome and plan.rounds[-1].kind == "answer"
            assert engine.bodies[-1]["messages"][-1]["content"].endswith(FINAL_ANSWER.render())
    # An empty answer in a tool round (vLLM's parser held back a call it could not finish) is no answer.
    for stream in (False, True):
        agent, engine, _ = _agent(["", "here you go"], auto_memory_search=False)
        plan = await agent.prepare("u1", [{"role": "user", "content": "Say hi."}])
        answer, _ = await _respond(agent, plan, stream)
        assert answer.endswith("here you go") and [r.outcome for r in plan.rounds] == ["empty", "answer"]
    # A failing tool is an observation; the model then answers in a tool round, which is the answer.
    agent, engine, _ = _agent([[call("search_documents", {"query": "x"})], "fine"], auto_memory_search=False)
    plan = await agent.prepare("u1", [{"role": "user", "content": "q"}])
    answer, _ = await _respond(agent, plan, stream=False)
    assert answer == "fine" and [r.outcome for r in plan.rounds] == ["builtin_calls", "answer"]


async def test_max_tokens_bounds_the_answer_and_a_call_it_cuts_off_gets_room() -> None:
    long_answer = " ".join(f"w{i}" for i in range(40))
    written = '{"name": "search_memory", "arguments": {"query": "films I liked last year"}}'  # 9 "tokens"
    for stream in (False, True):
        agent, engine, memory = _agent([written, written, long_answer], auto_memory_search=False)
        plan = await agent.prepare("u1", [{"role": "user", "content": "Say hi."}])
        items = [i async for i in agent.generate(plan, {"stream": stream, "max_tokens": 8})]
        # The client's 8 tokens cut the call off: the same round again with `tool_round_max_tokens`, the
        # call runs, and the next round answers within the client's budget.
        assert [b.get("max_tokens") for b in engine.bodies] == [8, 128, 8], stream
        assert [r.outcome for r in plan.rounds] == ["cut_call", "builtin_calls", "answer"]
        assert memory.searches == ["films I liked last year"]
        if stream:
            events = _events(items)
            text = "".join(c["delta"].get("content") or "" for e in events for c in e["choices"])
            finish = [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]]
        else:
            text = items[0]["choices"][0]["message"]["content"]
            finish = [items[0]["choices"][0]["finish_reason"]]
            # Every round counts in usage; the trace has each round's tokens.
            assert items[0]["usage"]["completion_tokens"] == 8 + 9 + 8
        assert text.split() == long_answer.split()[:8] and finish == ["length"], (stream, text)
        assert '"name"' not in text
        assert [r.completion_tokens for r in plan.rounds] == [8, 9, 8]
    # A widened round that answers instead, past the client's budget: the answer round writes it in 8.
    agent, engine, _ = _agent([written, long_answer, long_answer], auto_memory_search=False)
    plan = await agent.prepare("u1", [{"role": "user", "content": "Say hi."}])
    answer, _ = await _respond(agent, plan, stream=False)
    assert answer.split() == long_answer.split()[:8] and [b.get("max_tokens") for b in engine.bodies] == [8, 128, 8]
    assert [r.outcome for r in plan.rounds] == ["cut_call", "over_budget", "answer"]
    assert engine.bodies[2]["messages"][-1]["content"].endswith(FINAL_ANSWER.render())
    # An answer within the budget in a tool round is the answer: one engine call.
    agent, engine, _ = _agent(["hi there"], auto_memory_search=False)
    plan = await agent.prepare("u1", [{"role": "user", "content": "Say hi."}])
    answer, _ = await _respond(agent, plan, stream=True)
    assert answer.strip() == "hi there" and len(engine.bodies) == 1


async def test_a_tool_round_answer_streams_as_it_comes_within_the_clients_budget() -> None:
    agent, engine, _ = _agent(["one two three"], auto_memory_search=False)
    plan = await agent.prepare("u1", [{"role": "user", "content": "q"}])
    items = [i async for i in agent.generate(plan, {"stream": True, "max_tokens": 8})]
    assert engine.bodies[0]["max_tokens"] == 8  # the client's budget: nothing to hold back
    events = _events(items)
    pieces = [c["delta"]["content"] for e in events for c in e["choices"] if c["delta"].get("content")]
    assert "".join(pieces) == "one two three" and len(pieces) == 3
    assert events[-1]["choices"][0]["finish_reason"] == "stop"


async def test_streaming_keeps_every_call_a_written_builtin_call_beside_a_client_call() -> None:
    # Text JSON for a built-in tool, then a parsed client call in the same round: the client gets its call.
    written = '{"name": "search_memory", "arguments": {"query": "x"}}'
    agent, _, memory = _agent([(written, [call("get_weather", {"city": "Paris"})])], auto_memory_search=False)
    plan = await agent.prepare("u1", [{"role": "user", "content": "weather?"}], client_tools=WEATHER)
    items = [i async for i in agent.generate(plan, {"stream": True})]
    events = _events(items)
    deltas = [tc for e in events for c in e["choices"] for tc in c["delta"].get("tool_calls") or []]
    assert [d["function"].get("name") for d in deltas if d["function"].get("name")] == ["get_weather"]
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"
    text = "".join(c["delta"].get("content") or "" for e in events for c in e["choices"])
    assert '"name"' not in text and memory.searches == []
    # Two parsed client calls in one round: both reach the client, numbered 0 and 1.
    two = [call("get_weather", {"city": "Paris"}, 0), call("get_weather", {"city": "Rome"}, 1)]
    agent, _, _ = _agent([two])
    plan = await agent.prepare("u1", [{"role": "user", "content": "weather?"}], client_tools=WEATHER)
    _, calls = await _respond(agent, plan, stream=True)
    assert [json.loads(c["arguments"])["city"] for c in calls] == ["Paris", "Rome"]


async def test_a_call_copied_from_quoted_data_never_runs() -> None:
    """A document, tool result or memory may hold call JSON; a model that copies it takes no action."""
    copied = '{"name": "get_profile", "arguments": {}}'
    for stream in (False, True):
        agent, _, _ = _agent([copied, "an answer"], auto_memory_search=False)
        messages = [{"role": "user", "content": f"What does this line from my notes mean? {copied}"}]
        plan = await agent.prepare("u1", messages)
        answer, calls = await _respond(agent, plan, stream)
        assert calls == [] and plan.steps == [] and answer.endswith("an answer"), (stream, answer)
        assert plan.rounds[0].outcome == "call_text"


async def test_n_choices_are_each_complete_with_their_own_rounds() -> None:
    for stream in (False, True):
        agent, engine, _ = _agent(["alpha beta"] * 2, auto_memory_search=False)
        plan = await agent.prepare("u1", [{"role": "user", "content": "q"}])
        items = [i async for i in agent.generate(plan, {"stream": stream, "n": 2})]
        if stream:
            events = _events(items)
            texts: dict[int, str] = {}
            finishes: dict[int, str] = {}
            for e in events:
                for c in e["choices"]:
                    texts[c["index"]] = texts.get(c["index"], "") + (c["delta"].get("content") or "")
                    if c["finish_reason"]:
                        finishes[c["index"]] = c["finish_reason"]
            assert len({e["id"] for e in events}) == 1
        else:
            choices = items[0]["choices"]
            texts = {c["index"]: c["message"]["content"] for c in choices}
            finishes = {c["index"]: c["finish_reason"] for c in choices}
        assert texts == {0: "alpha beta", 1: "alpha beta"} and finishes == {0: "stop", 1: "stop"}, stream
        assert all("n" not in b for b in engine.bodies) and len(engine.bodies) == 2
        assert sorted(r.choice for r in plan.rounds) == [0, 1] and plan.usage.calls == 2


async def test_n_choices_call_the_memory_one_at_a_time() -> None:
    """Two calls of one request at once to the memory deployment could be lost by Ray Serve's router (they
    share the request's internal id): the `n` runs' tool calls take turns; their engine calls do not."""
    for stream in (False, True):
        searches = [[call("search_memory", {"query": f"q{i}"})] for i in range(2)]
        agent, _, memory = _agent([*searches, "one", "two"], auto_memory_search=False)
        in_flight, most = 0, 0
        search = memory.search

        async def slow_search(*args: Any, search: Any = search, **kwargs: Any) -> Any:
            nonlocal in_flight, most
            in_flight += 1
            most = max(most, in_flight)
            await asyncio.sleep(0.01)  # long enough for the other run to call too, were it let through
            try:
                return await search(*args, **kwargs)
            finally:
                in_flight -= 1

        memory.search = slow_search  # type: ignore[method-assign]
        plan = await agent.prepare("u1", [{"role": "user", "content": "q"}])
        _ = [i async for i in agent.generate(plan, {"stream": stream, "n": 2})]
        assert sorted(memory.searches) == ["q0", "q1"] and most == 1, (stream, most)
