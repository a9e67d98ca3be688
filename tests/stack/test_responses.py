"""`/v1/responses` on the real stack, driven by the clients people use: the official `openai` SDK, the
OpenAI Agents SDK on its default Responses path, LangChain's `ChatOpenAI` (chat and Responses).

The model is SmolLM2-135M: the tests check the protocol and the state (ids, items, ownership, what a
continuation sees), never the quality of an answer; a tool call is forced with `tool_choice`."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI

from tests.stack.harness import ALICE_KEY, Stack

MODEL = "smollm2-135m-instruct"
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "the weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def _user_with_history(stack: Stack, user: str) -> None:
    history = [{"input": "What should I cook tonight?", "output": "A mushroom risotto: you love risotto."}]
    stack.http().post(f"/v1/users/{user}/interactions", json=history).raise_for_status()


def _trace(response: Any) -> dict[str, Any] | None:
    return (response.model_extra or {}).get("persona_agent")


def test_sdk_create_plain(stack: Stack) -> None:
    response = stack.openai().responses.create(
        model=MODEL, input="Name a colour.", instructions="Answer in one word.", max_output_tokens=8,
        temperature=0.0, metadata={"case": "plain"},
    )  # fmt: skip
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status in {"completed", "incomplete"} and response.output[0].type == "message"
    assert isinstance(response.output_text, str) and response.metadata == {"case": "plain"}
    assert response.usage is not None and response.usage.input_tokens > 0
    assert 0 < response.usage.output_tokens <= 8 and _trace(response) is None


@pytest.mark.parametrize("field", ["user", "safety_identifier"])
def test_sdk_create_personalized(stack: Stack, field: str) -> None:
    user = f"resp-{field.replace('_', '-')}"
    _user_with_history(stack, user)
    response = stack.openai().responses.create(
        model=MODEL, input="What should I cook?", max_output_tokens=16, temperature=0.0, **{field: user}
    )
    trace = _trace(response)
    assert trace is not None and trace["user"] == user and trace["persona_version"] is not None
    assert trace["tool_calls"][0]["auto"]  # the priming memory search ran, as on chat
    # Written back under the response's id: feedback can name it.
    rows = stack.http().get(f"/v1/users/{user}/export").json()["interactions"]
    assert response.id in {r["metadata"].get("completion_id") for r in rows}
    feedback = stack.http().post(
        f"/v1/users/{user}/feedback", json={"completion_id": response.id, "expected_output": "risotto"}
    )
    assert feedback.status_code == 200, feedback.text


def test_sdk_user_scoped_key_is_its_user_and_identity_fields_must_agree(stack: Stack) -> None:
    response = stack.openai(ALICE_KEY).responses.create(model=MODEL, input="Hi", max_output_tokens=4)
    trace = _trace(response)
    assert trace is not None and trace["user"] == "alice"
    with pytest.raises(openai.BadRequestError) as caught:
        stack.openai().responses.create(model=MODEL, input="Hi", user="bob", safety_identifier="carol")
    assert caught.value.body["param"] == "safety_identifier"  # type: ignore[index]
    with pytest.raises(openai.PermissionDeniedError):
        stack.openai(ALICE_KEY).responses.create(model=MODEL, input="Hi", user="bob")


def test_sdk_stream_events_and_the_streaming_helper(stack: Stack) -> None:
    client = stack.openai()
    events = list(client.responses.create(model=MODEL, input="Say hello.", max_output_tokens=8, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in {"response.completed", "response.incomplete"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response  # type: ignore[union-attr]
    assert final.output_text == text and final.usage is not None and final.usage.output_tokens > 0
    # The SDK's own accumulator checks the order of items, parts and deltas as they come.
    with client.responses.stream(model=MODEL, input="Say hi.", max_output_tokens=8, user="resp-stream") as s:
        helper_events = list(s)
    last = helper_events[-1]
    assert last.type in {"response.completed", "response.incomplete"}  # `incomplete`: the 8 tokens ran out
    streamed = "".join(e.delta for e in helper_events if e.type == "response.output_text.delta")
    assert last.response.output_text == streamed and _trace(last.response)["user"] == "resp-stream"  # type: ignore[union-attr,index]
    if last.type == "response.completed":  # the helper's final object is for completed responses only
        assert s.get_final_response().output_text == streamed
    assert client.responses.retrieve(last.response.id).output_text == streamed  # type: ignore[union-attr]


def test_sdk_retrieve_input_items_delete_and_ownership(stack: Stack) -> None:
    client = stack.openai()
    created = client.responses.create(
        model=MODEL, input=[{"role": "user", "content": "one"}, {"role": "user", "content": "two"}],
        max_output_tokens=4, user="resp-owner",
    )  # fmt: skip
    got = client.responses.retrieve(created.id)
    assert got.id == created.id and got.output_text == created.output_text
    items = list(client.responses.input_items.list(created.id, order="asc"))
    assert [i.content[0].text for i in items] == ["one", "two"]  # type: ignore[union-attr]
    # Another key sees nothing, and cannot continue it.
    alice = stack.openai(ALICE_KEY)
    with pytest.raises(openai.NotFoundError):
        alice.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        alice.responses.create(model=MODEL, input="x", previous_response_id=created.id)
    # Another user of the same key cannot continue it either.
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=MODEL, input="x", previous_response_id=created.id, user="resp-other")
    client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)


def test_the_users_delete_erases_their_responses(stack: Stack) -> None:
    client = stack.openai()
    created = client.responses.create(model=MODEL, input="Hi", max_output_tokens=4, user="resp-erased")
    assert stack.http().delete("/v1/users/resp-erased").status_code == 200
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)


def test_unsupported_fields_are_refused_by_name(stack: Stack) -> None:
    client = stack.openai()
    for kwargs, param in [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"background": True}, "background"),
        ({"conversation": "conv_123"}, "conversation"),
        ({"include": ["message.output_text.logprobs"]}, "include"),
    ]:
        with pytest.raises(openai.BadRequestError) as caught:
            client.responses.create(model=MODEL, input="Hi", **kwargs)  # type: ignore[arg-type]
        assert caught.value.body["param"] == param, kwargs  # type: ignore[index]


def test_a_forced_function_call_and_its_output(stack: Stack) -> None:
    client = stack.openai()
    first = client.responses.create(
        model=MODEL, input="What is the weather in Paris?", tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice={"type": "function", "name": "get_weather"}, max_output_tokens=64, user="resp-tools",
    )  # fmt: skip
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    json.loads(calls[0].arguments)
    second = client.responses.create(
        model=MODEL, previous_response_id=first.id, tools=[WEATHER_TOOL],  # type: ignore[list-item]
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "Sunny, 21 C"}],
        max_output_tokens=16, user="resp-tools",
    )  # fmt: skip
    assert second.output[0].type == "message"
    kinds = [i.type for i in client.responses.input_items.list(second.id, order="asc")]
    assert kinds == ["message", "function_call", "function_call_output"]


# -- the OpenAI Agents SDK, on its default Responses path ----------------------------------------------------


def _run_agent_twice(stack: Stack, identity: dict[str, str]) -> tuple[list[str], list[Any]]:
    """An agent with a function tool over two turns (the second continues the first by previous_response_id,
    as a stateful Agents SDK app does): the tool's calls and the raw responses."""
    from agents import Agent, ModelSettings, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

    set_tracing_disabled(True)
    cities: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        cities.append(city)
        return f"Sunny in {city}"

    async def run() -> list[Any]:
        client = AsyncOpenAI(
            base_url=f"{stack.base_url}/v1", api_key=stack.api_key, max_retries=0, timeout=300
        )
        agent = Agent(
            name="assistant", instructions="Use the tool to answer.", tools=[get_weather],
            model=OpenAIResponsesModel(model=MODEL, openai_client=client),
            model_settings=ModelSettings(tool_choice="get_weather", max_tokens=64, temperature=0.0,
                                         extra_args=identity or None),
            tool_use_behavior="stop_on_first_tool",
        )  # fmt: skip
        first = await Runner.run(agent, "What is the weather in Paris?")
        outputs = [i for i in first.to_input_list() if i.get("type") == "function_call_output"]
        second = await Runner.run(
            agent, [*outputs, {"role": "user", "content": "And in Oslo?"}],
            previous_response_id=first.last_response_id,
        )  # fmt: skip
        assert (
            first.final_output == f"Sunny in {cities[0]}" and second.final_output == f"Sunny in {cities[1]}"
        )
        await client.close()
        return [*first.raw_responses, *second.raw_responses]

    return cities, asyncio.run(run())


@pytest.mark.parametrize("identity", [{}, {"user": "agent-user"}, {"safety_identifier": "agent-user"}],
                         ids=["plain", "user", "safety_identifier"])  # fmt: skip
def test_openai_agents_sdk_two_turns_with_a_function_tool(stack: Stack, identity: dict[str, str]) -> None:
    cities, responses = _run_agent_twice(stack, identity)
    assert len(cities) == 2 and len(responses) == 2
    first_id, second_id = (r.response_id for r in responses)
    assert first_id and second_id and first_id != second_id
    # The second turn continued the first on the server: its input holds the first turn's call and output.
    items = list(stack.openai().responses.input_items.list(second_id, order="asc"))
    kinds = [i.type for i in items]
    assert kinds[:3] == ["message", "function_call", "function_call_output"] and kinds[-1] == "message"
    stored = stack.openai().responses.retrieve(second_id)
    trace = _trace(stored)
    assert (trace or {}).get("user") == (identity.get("user") or identity.get("safety_identifier"))


# -- LangChain ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("use_responses_api", "field"),
    [(False, "user"), (False, "safety_identifier"), (True, "user")],
    ids=["chat-user", "chat-safety_identifier", "responses-user"],
)
def test_langchain_chat_openai_with_an_identity(stack: Stack, use_responses_api: bool, field: str) -> None:
    from langchain_openai import ChatOpenAI

    user = f"langchain-{'responses' if use_responses_api else 'chat'}-{field.replace('_', '-')}"
    _user_with_history(stack, user)
    llm = ChatOpenAI(model=MODEL, base_url=f"{stack.base_url}/v1", api_key=stack.api_key, max_tokens=16,
                     temperature=0.0, max_retries=0, use_responses_api=use_responses_api,
                     model_kwargs={field: user})  # fmt: skip
    message = llm.invoke("What should I cook?")
    assert isinstance(message.text, str)
    exported = stack.http().get(f"/v1/users/{user}/export").json()
    assert any(r["source"] == "chat" for r in exported["interactions"])  # the agent answered, and wrote back


# -- state across a restart (runs last: it restarts the shared stack) -----------------------------------------


@pytest.mark.last
def test_previous_response_id_survives_a_restart(stack: Stack) -> None:
    client = stack.openai()
    first = client.responses.create(
        model=MODEL, input="My name is Ada.", max_output_tokens=8, user="resp-restart"
    )
    plain = client.responses.create(model=MODEL, input="Remember 42.", max_output_tokens=8)
    stack.terminate()
    stack.start()
    client = stack.openai()
    assert client.responses.retrieve(first.id).output_text == first.output_text
    second = client.responses.create(
        model=MODEL, input="What is my name?", previous_response_id=first.id, max_output_tokens=8,
        user="resp-restart",
    )  # fmt: skip
    items = list(client.responses.input_items.list(second.id, order="asc"))
    assert [i.type for i in items] == ["message", "message", "message"]
    assert items[0].content[0].text == "My name is Ada."  # type: ignore[union-attr]
    assert client.responses.create(
        model=MODEL, input="And?", previous_response_id=plain.id, max_output_tokens=4
    )
    with httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {ALICE_KEY}"}) as alice:
        assert alice.get(f"/v1/responses/{first.id}").status_code == 404
