"""Reading calls written as text from untrusted model output: linear time, and only valid calls come out."""

from __future__ import annotations

import json
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from personaagent.written_calls import CallTextGuard, contains_call_text, parse_written_call

SCHEMAS = {
    "search_memory": {
        "type": "object",
        "properties": {"query": {"type": "string", "minLength": 1}},
        "required": ["query"],
        "additionalProperties": False,
    },
    "get_weather": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
NAMES = set(SCHEMAS)
# Seconds per character allowed for the guard and the parser together: ~100x what they take here, far
# below what a quadratic scan of 10^5 characters would take.
PER_CHAR_S = 2e-5

PIECES = st.sampled_from(
    ["```", "```json", "<tools>", "</tools>", "<tool_call>", "[TOOL_CALLS]", "{", "}", "{{", "[", '"name"', ":",
     '"search_memory"', '"get_weather"', '"arguments"', ",", '"query"', '"x"', " ", "\n", "hi", "`", "<", "\\"]
)  # fmt: skip
ADVERSARIAL = st.lists(st.one_of(PIECES, st.text(max_size=8)), max_size=60).map("".join)


def _streamed(text: str, size: int) -> tuple[str, bool]:
    guard = CallTextGuard(NAMES)
    shown = "".join(guard.feed(text[i : i + size]) for i in range(0, len(text), size))
    return shown + guard.close(truncated=False), guard.found


@settings(max_examples=300, deadline=None)
@given(text=ADVERSARIAL, size=st.integers(min_value=1, max_value=7))
def test_only_valid_calls_come_out_and_shown_text_is_a_prefix_without_call_text(text: str, size: int) -> None:
    written = parse_written_call(text, SCHEMAS)
    if written is not None:
        name, arguments = written
        assert name in NAMES and isinstance(arguments, dict)
        if name == "search_memory":
            assert set(arguments) == {"query"} and isinstance(arguments["query"], str) and arguments["query"]
        else:
            assert isinstance(arguments.get("city"), str)
    shown, found = _streamed(text, size)
    whole, found_whole = _streamed(text, max(1, len(text)))
    assert shown == whole and found == found_whole  # the same, however the text is chunked
    assert text.startswith(shown)
    if not found:
        assert shown == text
    assert not contains_call_text(shown, NAMES)  # what is shown never holds call text


@settings(max_examples=40, deadline=None)
@given(
    opener=st.sampled_from(["```", "```json", "{", "{{", "<tools>", "<", "[", "`", '{"name":', '{"name": "sea']),
    filler=st.sampled_from([" ", "\n", "{", "{ ", "`", "[", "{x", '"', "\\"]),
    tail=st.sampled_from(["done", '"search_memory"', "```", "}", ""]),
)
def test_time_is_linear_in_the_answer(opener: str, filler: str, tail: str) -> None:
    text = opener + filler * (100_000 // len(filler)) + tail
    start = time.process_time()
    _streamed(text, 1 + len(text) // 50)  # streamed in 50 pieces
    _streamed(text, len(text))
    parse_written_call(text, SCHEMAS)
    contains_call_text(text, NAMES)
    elapsed = time.process_time() - start
    assert elapsed < PER_CHAR_S * len(text), (opener, filler, tail, elapsed)


def test_a_fence_and_100000_spaces_take_well_under_a_second() -> None:
    text = "```" + " " * 100_000 + "done"
    start = time.process_time()
    assert parse_written_call(text, SCHEMAS) is None
    shown, found = _streamed(text, 7)  # token-sized pieces
    assert shown == text and not found
    assert time.process_time() - start < 0.5


def test_valid_calls_in_each_written_form_and_what_is_refused() -> None:
    call = {"name": "search_memory", "arguments": {"query": "films"}}
    raw = json.dumps(call)
    for text in (raw, f"```json\n{raw}\n```", f"```{raw}```", f"<tools>\n{raw}\n</tools>", "{" + raw + "}",
                 json.dumps({"name": "search_memory", "arguments": json.dumps({"query": "films"})})):  # fmt: skip
        assert parse_written_call(text, SCHEMAS) == ("search_memory", {"query": "films"}), text
    for text in (
        json.dumps({"name": "get_weather", "description": "weather"}),  # no arguments
        json.dumps({"name": "get_weather", "arguments": {}}),  # required city missing
        json.dumps({"name": "search_memory", "arguments": {"query": ""}}),  # schema: minLength
        json.dumps({"name": "search_memory", "arguments": {"query": "x", "k": 3}}),  # additionalProperties
        json.dumps({**call, "extra": 1}),  # not exactly name + arguments
        json.dumps({"name": "rm_rf", "arguments": {}}),  # not offered
        "Sure: " + raw,  # not the whole answer
        "[" * 100_000,  # deeper than the JSON parser goes
    ):
        assert parse_written_call(text, SCHEMAS) is None, text[:80]
