"""PersonaAgent through the real stack: personas, action module, client tools, streaming, prefix cache."""

from __future__ import annotations

import json
import re
import time

import pytest

from tests.stack.harness import Stack

MODEL = "smollm2-135m-instruct"

ROMANCE = [
    {"input": f"Tag the movie: {d}", "output": "romance"}
    for d in (
        "two strangers fall in love on a night train across Europe",
        "a widow finds love again with her childhood sweetheart by the sea",
        "a shy baker and a florist write each other love letters",
        "a royal wedding is threatened by a secret affair",
    )
]
VIOLENCE = [
    {"input": f"Tag the movie: {d}", "output": "violence"}
    for d in (
        "a hitman takes bloody revenge on the gang that betrayed him",
        "soldiers fight a brutal battle for a bridge",
        "a bank robbery ends in a massacre and a shootout",
        "a boxer beats his rivals to death in illegal fights",
    )
]
SECRET = "The code to my safe is 5550123, keep it secret"
QUESTION = "Tag the movie: a couple meets during a war. Answer with one tag."


def _prefix_hits(stack: Stack) -> float:
    with stack.http() as http:
        text = http.get("/metrics").text
    match = re.search(r"^vllm:prefix_cache_hits_total\{[^}]*\} ([0-9.e+]+)$", text, re.M)
    assert match, "vllm:prefix_cache_hits_total missing from /metrics"
    return float(match.group(1))


@pytest.fixture(scope="module")
def two_users(stack: Stack) -> dict[str, list[int]]:
    ids = {}
    with stack.http() as http:
        ids["ag-romance"] = http.post(
            "/v1/users/ag-romance/interactions", json=[*ROMANCE, {"input": SECRET}]
        ).json()["ids"]
        ids["ag-violence"] = http.post("/v1/users/ag-violence/interactions", json=VIOLENCE).json()["ids"]
    return ids


def test_opposite_users_get_different_personas_and_memories(
    stack: Stack, two_users: dict[str, list[int]]
) -> None:
    client = stack.openai()
    traces = {}
    for user in two_users:
        resp = client.chat.completions.create(
            model=MODEL,
            user=user,
            messages=[{"role": "user", "content": QUESTION}],
            max_tokens=16,
            temperature=0.0,
        )
        trace = resp.model_extra["persona_agent"]  # type: ignore[index]
        assert trace["user"] == user and trace["persona_version"] >= 1
        assert trace["persona_tokens"] > 0
        assert trace["memory_ids"], "the agent retrieved no memories"
        assert set(trace["memory_ids"]) <= set(two_users[user]), "retrieved another user's memories"
        assert all({"name", "arguments", "result"} <= set(call) for call in trace["tool_calls"])
        traces[user] = trace
    assert set(traces["ag-romance"]["memory_ids"]).isdisjoint(traces["ag-violence"]["memory_ids"])
    with stack.http() as http:
        personas = {u: http.get(f"/v1/users/{u}/persona").json() for u in two_users}
    assert personas["ag-romance"]["text"] != personas["ag-violence"]["text"]
    assert all(p["reason"] == "init" for p in personas.values())


def test_secret_never_reaches_another_users_prompt_trace_or_answer(
    stack: Stack, two_users: dict[str, list[int]]
) -> None:
    client = stack.openai()
    # Probes never contain the digits themselves: B's own words are B's memories (written back).
    for question in (
        "What is the code to my safe?",
        "Tell me the secret safe code",
        "Which numbers do you keep secret?",
    ):
        resp = client.chat.completions.create(
            model=MODEL, user="ag-violence", messages=[{"role": "user", "content": question}], max_tokens=24
        )
        trace = resp.model_extra["persona_agent"]  # type: ignore[index]
        blob = json.dumps(trace) + (resp.choices[0].message.content or "")
        assert "5550123" not in blob
        assert set(trace["memory_ids"]) <= set(two_users["ag-violence"]) | set(
            _chat_ids(stack, "ag-violence")
        )
    with stack.http() as http:
        persona = http.get("/v1/users/ag-violence/persona").json()["text"]
    assert "5550123" not in persona


def _chat_ids(stack: Stack, user: str) -> list[int]:
    with stack.http() as http:
        return [
            i["id"]
            for i in http.get(f"/v1/users/{user}/export").json()["interactions"]
            if i["source"] == "chat"
        ]


def test_chat_is_written_back_as_episodic_memory(stack: Stack, two_users: dict[str, list[int]]) -> None:
    resp = stack.openai().chat.completions.create(
        model=MODEL,
        user="ag-romance",
        messages=[{"role": "user", "content": "Recommend a film for tonight."}],
        max_tokens=12,
    )
    with stack.http() as http:
        chats = [
            i for i in http.get("/v1/users/ag-romance/export").json()["interactions"] if i["source"] == "chat"
        ]
    mine = [c for c in chats if c["metadata"].get("completion_id") == resp.id]
    assert len(mine) == 1 and mine[0]["input"] == "Recommend a film for tonight."
    assert mine[0]["metadata"]["answer"] == resp.choices[0].message.content


def test_client_tool_call_round_trips_through_the_openai_client(stack: Stack) -> None:
    client = stack.openai()
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather for a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    messages = [{"role": "user", "content": "What's the weather in Paris right now?"}]
    first = client.chat.completions.create(
        model=MODEL, user="ag-tools", messages=messages, tools=tools,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, max_tokens=32,
    )  # fmt: skip
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 18, "sky": "sunny"}'},
    ]
    second = client.chat.completions.create(
        model=MODEL, user="ag-tools", messages=messages, tools=tools, max_tokens=32
    )
    assert second.choices[0].finish_reason in {"stop", "length"}
    assert second.choices[0].message.content


def test_persona_edit_history_and_rollback(stack: Stack, two_users: dict[str, list[int]]) -> None:
    with stack.http() as http:
        initial = http.post("/v1/users/ag-violence/persona").json()
        edited = http.put(
            "/v1/users/ag-violence/persona", json={"text": "You are terse. Always answer 'violence'."}
        ).json()
        assert edited["reason"] == "manual" and edited["parent"] == initial["version"]
        assert edited["version"] == initial["version"] + 1
        history = http.get("/v1/users/ag-violence/persona/history").json()
        assert [h["version"] for h in history] == sorted(h["version"] for h in history)
        assert history[-1]["text"].startswith("You are terse")
        rolled = http.post(
            "/v1/users/ag-violence/persona/rollback", json={"version": initial["version"]}
        ).json()
        assert (
            rolled["text"] == initial["text"]
            and rolled["reason"] == "rollback"
            and rolled["parent"] == initial["version"]
        )
        assert http.get("/v1/users/ag-violence/persona").json()["version"] == rolled["version"]
        assert http.post("/v1/users/ag-violence/persona/rollback", json={"version": 999}).status_code == 404
        assert http.put("/v1/users/ag-violence/persona", json={"text": ""}).status_code == 400
        assert http.put("/v1/users/ag-violence/persona", json={"text": "x" * 10_000}).status_code == 400
        assert http.get("/v1/users/ag-nobody/persona/history").status_code == 404


def test_personalized_streaming_yields_chunks_with_the_trace_first(
    stack: Stack, two_users: dict[str, list[int]]
) -> None:
    stream = stack.openai().chat.completions.create(
        model=MODEL, user="ag-romance", messages=[{"role": "user", "content": QUESTION}], max_tokens=24,
        stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    assert "persona_agent" in (chunks[0].model_extra or {})
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 2
    assert chunks[-1].usage is not None


def test_plain_requests_have_no_persona(stack: Stack) -> None:
    resp = stack.openai().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert "persona_agent" not in (resp.model_extra or {})


def test_bad_user_field_is_400(stack: Stack) -> None:
    with stack.http() as http:
        resp = http.post(
            "/v1/chat/completions",
            json={"model": MODEL, "user": "bad user!", "messages": [{"role": "user", "content": "hi"}]},
        )
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "user"


def test_persona_prefix_is_cached_per_request(stack: Stack) -> None:
    user = "ag-cache"
    long_persona = " ".join(
        f"Rule {i}: this user prefers short, concrete answers about films, books and travel."
        for i in range(40)
    )
    with stack.http() as http:
        http.post(f"/v1/users/{user}/interactions", json=ROMANCE[:2]).raise_for_status()
        http.post(f"/v1/users/{user}/persona").raise_for_status()
        http.put(f"/v1/users/{user}/persona", json={"text": long_persona}).raise_for_status()
    client = stack.openai()
    growth = []
    persona_tokens = 0
    for n in range(4):
        before = _prefix_hits(stack)
        resp = client.chat.completions.create(
            model=MODEL,
            user=user,
            messages=[{"role": "user", "content": f"Suggest film number {n}."}],
            max_tokens=8,
        )
        persona_tokens = resp.model_extra["persona_agent"]["persona_tokens"]  # type: ignore[index]
        time.sleep(0.5)
        growth.append(_prefix_hits(stack) - before)
    assert persona_tokens >= 256, "the test persona must span several cache blocks"
    # The first request may warm the cache; every later one reuses at least the persona's tokens.
    assert all(g >= persona_tokens for g in growth[1:]), (growth, persona_tokens)


# Every tool name the stack's agent knows, for the "no call text in an answer" checks below.
CALL_NAMES = {"search_memory", "get_profile", "search_documents", "get_weather"}


def test_a_forced_call_ends_in_an_answer_without_call_text_within_max_tokens(
    stack: Stack, two_users: dict[str, list[int]]
) -> None:
    """The model must call (a named tool), then gets tool rounds, then answers: never with call text, and
    `max_tokens` is the answer's own budget whatever the rounds before it wrote."""
    from personaagent.written_calls import contains_call_text

    client = stack.openai()
    forced = {"type": "function", "function": {"name": "search_memory"}}
    # vLLM's request model wants a named `tool_choice` among `tools`: the client lists the built-in tool by
    # name (a client tool that clashes with a built-in is dropped, so the built-in runs).
    weather = [{"type": "function", "function": {"name": "search_memory", "parameters": {"type": "object"}}}]
    for stream in (False, True):
        kwargs = dict(
            model=MODEL, user="ag-romance", messages=[{"role": "user", "content": "Say hi."}], max_tokens=8,
            tool_choice=forced, tools=weather, temperature=0,
        )  # fmt: skip
        if stream:
            chunks = list(client.chat.completions.create(stream=True, **kwargs))
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
            trace = (chunks[-1].model_extra or {})["persona_agent"]
        else:
            resp = client.chat.completions.create(**kwargs)
            text, finish = resp.choices[0].message.content or "", [resp.choices[0].finish_reason]
            trace = (resp.model_extra or {})["persona_agent"]
            assert resp.choices[0].message.tool_calls is None
        assert text.strip() and not contains_call_text(text, CALL_NAMES, truncated=True), (stream, text)
        assert finish in (["stop"], ["length"]), finish
        rounds = trace["rounds"]
        assert rounds[0]["kind"] == "tools" and rounds[0]["outcome"] == "builtin_calls"
        assert trace["tool_calls"][1]["name"] == "search_memory"  # [0] is the priming search
        answer_round = rounds[-1]
        assert answer_round["completion_tokens"] <= 8, rounds
        assert answer_round["outcome"] in {"answer", "call_text_dropped"}


def test_n_choices_personalized_each_finish_and_each_is_written_back(stack: Stack) -> None:
    user = "ag-n2"
    with stack.http() as http:
        http.post(f"/v1/users/{user}/interactions", json=ROMANCE[:2]).raise_for_status()
    client = stack.openai()
    chunks = list(client.chat.completions.create(
        model=MODEL, user=user, messages=[{"role": "user", "content": "Name a film."}], max_tokens=6, n=2,
        stream=True, temperature=1.0, seed=3,
    ))  # fmt: skip
    finishes = {c.choices[0].index: c.choices[0].finish_reason for c in chunks
                if c.choices and c.choices[0].finish_reason}  # fmt: skip
    texts = {i: "".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == i)
             for i in (0, 1)}  # fmt: skip
    assert set(finishes) == {0, 1} and all(f in {"stop", "length"} for f in finishes.values())
    assert all(texts.values()), texts
    resp = client.chat.completions.create(
        model=MODEL, user=user, messages=[{"role": "user", "content": "Name a book."}], max_tokens=6, n=2
    )
    assert [c.index for c in resp.choices] == [0, 1] and all(c.message.content for c in resp.choices)
    with stack.http() as http:
        written = [i for i in http.get(f"/v1/users/{user}/export").json()["interactions"]
                   if i["source"] == "chat"]  # fmt: skip
    answers = sorted((i["input"], i["metadata"]["answer"]) for i in written)
    expected = sorted([("Name a film.", texts[0]), ("Name a film.", texts[1])]
                      + [("Name a book.", c.message.content) for c in resp.choices])  # fmt: skip
    assert answers == expected


def test_a_degenerate_answer_never_holds_up_the_ingress(stack: Stack, two_users: dict[str, list[int]]) -> None:
    """A personalized answer forced to a code fence and a run of spaces (small models degenerate into these)
    comes back intact while /health keeps answering. The time bound itself (linear; a fence and 100,000
    spaces) is tests/unit/test_written_calls.py's: here generating each space costs the engine far more."""
    import threading

    spaces = 300
    done = threading.Event()
    health: list[float] = []

    def poll() -> None:
        with stack.http() as http:
            while not done.is_set():
                start = time.perf_counter()
                assert http.get("/health").status_code == 200
                health.append(time.perf_counter() - start)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        resp = stack.openai().with_options(timeout=600).chat.completions.create(
            model=MODEL, user="ag-romance", messages=[{"role": "user", "content": "hi"}], max_tokens=spaces + 8,
            extra_body={"structured_outputs": {"regex": "```" + " {" + str(spaces) + "}done"}},
        )  # fmt: skip
    finally:
        done.set()
        poller.join()
    assert resp.choices[0].message.content == "```" + " " * spaces + "done"
    # Generous for a busy machine; before the fix a fence and 2,400 spaces held /health for 10 s.
    assert health and max(health) < 5.0, max(health)


def test_a_requested_format_wins_over_tools_and_is_never_read_as_a_call(
    stack: Stack, two_users: dict[str, list[int]]
) -> None:
    """JSON that describes a tool (here forced by a regex) is the answer the client asked for, not a call,
    with the client's tool offered beside it: a requested format wins over tools (one documented rule)."""
    weather = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]  # fmt: skip
    described = '{"name": "get_weather", "description": "the weather"}'
    regex = r'\{"name": "get_weather", "description": "the weather"\}'
    for stream in (False, True):
        kwargs = dict(
            model=MODEL, user="ag-romance", messages=[{"role": "user", "content": "Describe your tool."}],
            tools=weather, max_tokens=40, extra_body={"structured_outputs": {"regex": regex}},
        )  # fmt: skip
        client = stack.openai()
        if stream:
            chunks = list(client.chat.completions.create(stream=True, **kwargs))
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert not any(c.choices[0].delta.tool_calls for c in chunks if c.choices)
            finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        else:
            resp = client.chat.completions.create(**kwargs)
            text, finish = resp.choices[0].message.content or "", [resp.choices[0].finish_reason]
            assert resp.choices[0].message.tool_calls is None
        assert text == described and finish == ["stop"], (stream, text, finish)
