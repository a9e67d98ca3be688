"""The OpenAI-compatible endpoint, driven by the official openai client against the real stack."""

from __future__ import annotations

import json

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.stack.harness import Stack

MODEL = "smollm2-135m-instruct"


def test_list_models(stack: Stack) -> None:
    models = stack.openai().models.list()
    # The engine's model first (what a client picking `data[0]` should chat with), then the embedding model.
    assert [m.id for m in models.data] == [MODEL, "all-MiniLM-L6-v2"]
    assert models.data[0].max_model_len == 4096  # type: ignore[attr-defined]


def test_chat_completion(stack: Stack) -> None:
    resp = stack.openai().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Name a color."}],
        max_tokens=16,
        temperature=0.0,
        seed=7,
    )
    assert resp.object == "chat.completion"
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content
    assert resp.usage is not None and resp.usage.prompt_tokens > 0
    assert 0 < resp.usage.completion_tokens <= 16
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_seed_and_greedy_are_deterministic(stack: Stack) -> None:
    client = stack.openai()
    kwargs = dict(model=MODEL, messages=[{"role": "user", "content": "Tell me a fact."}], max_tokens=12)
    a = client.chat.completions.create(temperature=0.8, top_p=0.9, seed=1234, **kwargs)
    b = client.chat.completions.create(temperature=0.8, top_p=0.9, seed=1234, **kwargs)
    assert a.choices[0].message.content == b.choices[0].message.content


def test_stop_sequence(stack: Stack) -> None:
    resp = stack.openai().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count from 1 to 10 separated by commas."}],
        max_tokens=40,
        temperature=0.0,
        stop=["5"],
    )
    assert "5" not in (resp.choices[0].message.content or "")


def test_streamed_completion_with_usage(stack: Stack) -> None:
    stream = stack.openai().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Write one sentence about the sea."}],
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) >= 3
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert not chunks[-1].choices


def test_structured_output_json_schema(stack: Stack) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    resp = stack.openai().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Give a city and its population as JSON."}],
        max_tokens=60,
        temperature=0.0,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
    )
    data = json.loads(resp.choices[0].message.content or "")
    assert set(data) == {"city", "population"}
    assert isinstance(data["population"], int)


def test_health_and_metrics(stack: Stack) -> None:
    with stack.http() as http:
        assert http.get("/health").json() == {"status": "ok"}
        stack.openai().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
        text = http.get("/metrics").text
    assert "vllm:prefix_cache_queries_total" in text
    assert "vllm:prefix_cache_hits_total" in text
    # Every series carries the deployment and replica that exported it (serving/metrics.py).
    requests = [
        s.labels
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "personaagent_http_requests_total"
    ]
    wanted = {"method": "POST", "route": "/v1/chat/completions", "status": "200", "deployment": "ingress"}
    assert any(wanted.items() <= labels.items() and labels.get("replica") for labels in requests)
    assert "personaagent_http_request_duration_seconds_bucket" in text


# --- bad input: OpenAI-style errors with the right status, and the server keeps serving ---------


def _assert_openai_error(response: object, status: int) -> dict:
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == status
    assert body["error"]["message"]
    return body["error"]


@pytest.mark.parametrize(
    ("payload", "status", "param"),
    [
        ({"model": MODEL}, 400, "messages"),
        ({"model": MODEL, "messages": []}, 400, "messages"),
        ({"model": MODEL, "messages": "hello"}, 400, "messages"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": "many"}, 400, "max_tokens"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, 400, "temperature"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5000}, 400, "max_tokens"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}, 400, "max_tokens"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x" * 100_001}]}, 400, "messages.0.content"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "n": 9, "max_tokens": 1}, 400, "n"),
        ({"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}, 404, "model"),
    ],
    ids=["missing-messages", "empty-messages", "messages-wrong-type", "max-tokens-wrong-type",
         "temperature-wrong-type", "max-tokens-beyond-context", "max-tokens-over-the-cap", "message-too-long",
         "too-many-choices", "unknown-model"],
)  # fmt: skip
def test_bad_request_bodies(stack: Stack, payload: dict, status: int, param: str) -> None:
    with stack.http() as http:
        error = _assert_openai_error(http.post("/v1/chat/completions", json=payload), status)
    assert error["param"] == param or param in error["message"]


def test_malformed_json(stack: Stack) -> None:
    with stack.http() as http:
        resp = http.post(
            "/v1/chat/completions",
            content=b'{"model": "x", "messages": [',
            headers={"content-type": "application/json"},
        )
        _assert_openai_error(resp, 400)
        _assert_openai_error(http.post("/v1/chat/completions", content=b"[1, 2]",
                                       headers={"content-type": "application/json"}), 400)  # fmt: skip


def test_unknown_route_and_method(stack: Stack) -> None:
    with stack.http() as http:
        assert _assert_openai_error(http.get("/v1/nothing-here"), 404)["type"] == "not_found_error"
        _assert_openai_error(http.get("/v1/chat/completions"), 405)


def test_oversized_body_is_413(stack: Stack) -> None:
    big = "x" * 1_100_000
    with stack.http() as http:
        resp = http.post(
            "/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": big}]}
        )
    _assert_openai_error(resp, 413)


def test_openai_client_sees_typed_errors_and_server_keeps_serving(stack: Stack) -> None:
    client = stack.openai()
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=10**6
        )
    ok = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert ok.choices[0].message.content is not None
