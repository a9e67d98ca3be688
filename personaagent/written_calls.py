"""Tool calls that a model writes as text instead of the markup its tool parser reads.

Small models often write a call as plain JSON (`{"name": ..., "arguments": {...}}`, bare, in a ```json
fence, inside a copied `<tools>` element, or with the doubled braces of a prompt template), or leave parser
markup (`<tool_call>`, `[TOOL_CALLS]`) that the parser could not use. Such text must never reach a client as
an answer, and only a whole, well-formed call may ever run.

Everything here reads model output, which is untrusted: no backtracking regex, only `str` methods and
`json.loads` (C, linear), and `CallTextGuard` keeps O(1) state per fed character, so any answer, e.g. a
fence followed by 10^5 spaces, is scanned in time linear in its length.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

# Markup of the tool parsers (Hermes/Qwen2.5, Mistral) that is never part of an answer.
_MARKUP = ("<tool_call>", "</tool_call>", "[TOOL_CALLS]")
# What may come before a call's JSON, and its opening (whitespace removed: the model may put any between).
_OPENERS = ("", "```", "```json", "<tools>")
_JSON_HEADS = tuple(opener + braces + '"name":"' for opener in _OPENERS for braces in ("{", "{{"))
# How long a tool name may be when any name counts (OpenAI allows 64).
_ANY_NAME_CHARS = 64
# Characters at which call text can begin: the guard looks for nothing else (a one-character class: no
# backtracking).
_START_RE = re.compile(r"[{<`\[]")


def _compact(text: str) -> str:
    """`text` without whitespace (C speed: `str.split`)."""
    return "".join(text.split())


def _classify(compact: str, names: frozenset[str] | None) -> bool | None:
    """Does text whose whitespace-free form is `compact` open a call? True, False, or None: not yet known.
    `names` None: a call to any name counts (for reports on answers of any tool set)."""
    undecided = False
    for mark in _MARKUP:
        if compact.startswith(mark):
            return True
        undecided |= mark.startswith(compact)
    for head in _JSON_HEADS:
        if compact.startswith(head):
            rest = compact[len(head) :]
            end = rest.find('"')
            if end >= 0:
                if rest[:end] in names if names is not None else end > 0:
                    return True
            elif names is None or any(n.startswith(rest) for n in names):
                undecided = True
        elif head.startswith(compact):
            undecided = True
    return None if undecided else False


class CallTextGuard:
    """Passes text through as it streams, holding back only what could still open a call written as text.

    `feed` returns the text that is safe to show; once call text is found (`found`), nothing from there on
    is ever returned. `close` ends the text: an opening still undecided there is a call cut off by the token
    budget when the generation was truncated (dropped), else plain text (returned).
    """

    def __init__(self, names: Iterable[str] | None) -> None:
        """`names`: the tools whose calls count; None: a call to any name does."""
        self.names = None if names is None else frozenset(names)
        # Longest whitespace-free opening that can be undecided: past it every opening is decided.
        longest = max(len(h) for h in (*_JSON_HEADS, *_MARKUP))
        name_chars = _ANY_NAME_CHARS if self.names is None else max((len(n) for n in self.names), default=0)
        self._limit = longest + name_chars + 1
        self._parts: list[str] = []  # everything fed (joined once, by `text`)
        self._shown = 0  # characters returned so far (or decided to be call text)
        self._held: list[str] = []  # the undecided opening and what followed it, not shown yet
        self._compact = ""  # the opening's whitespace-free form so far (at most `_limit` + 1 characters)
        self.found = False  # call text begins at `self._shown`

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def clean(self) -> str:
        """The text up to where call text begins (all of it when there is none)."""
        text = self.text
        return text[: self._shown] if self.found else text

    def feed(self, chunk: str) -> str:
        self._parts.append(chunk)
        if self.found or not chunk:
            return ""
        if self._held:
            self._held.append(chunk)
            if len(self._compact) <= self._limit:
                self._compact += _compact(chunk)[: self._limit + 1 - len(self._compact)]
            verdict = self._verdict()
            if verdict is None:
                return ""
            held, self._held = "".join(self._held), []
            if verdict:
                self.found = True
                return ""
            # Not a call: its first character is text; look again from the next one.
            self._shown += 1
            return held[0] + self._scan(held, 1)
        return self._scan(chunk, 0)

    def close(self, truncated: bool) -> str:
        """The end of the text: what is still held back and is not call text."""
        if self.found or not self._held:
            return ""
        held, self._held = "".join(self._held), []
        if truncated and self._compact.strip("`{[<"):  # a call cut off by the token budget, begun
            self.found = True
            return ""
        self._shown += len(held)
        return held

    def _verdict(self) -> bool | None:
        verdict = _classify(self._compact, self.names)
        return False if verdict is None and len(self._compact) > self._limit else verdict

    def _scan(self, text: str, pos: int) -> str:
        """Show `text[pos:]` up to the first opening that is undecided (held) or a call (found)."""
        out: list[str] = []
        while True:
            match = _START_RE.search(text, pos)
            if match is None:
                out.append(text[pos:])
                self._shown += len(text) - pos
                return "".join(out)
            start = match.start()
            out.append(text[pos:start])
            self._shown += start - pos
            self._compact = _compact_prefix(text, start, self._limit + 1)
            verdict = self._verdict()
            if verdict is None:
                self._held = [text[start:]]
                return "".join(out)
            if verdict:
                self.found = True
                return "".join(out)
            out.append(text[start])
            self._shown += 1
            pos = start + 1


def _compact_prefix(text: str, start: int, n: int) -> str:
    """The first `n` non-whitespace characters of `text[start:]`, reading windows that double in size (so
    a long run of whitespace is read once, and a short opening never costs the rest of the text)."""
    window, out = 2 * n, ""
    while True:
        out = _compact(text[start : start + window])
        if len(out) >= n or start + window >= len(text):
            return out[:n]
        window *= 2


def contains_call_text(text: str, names: Iterable[str] | None, truncated: bool = False) -> bool:
    """Does `text` contain a call written as text or parser markup (begun at its end, when `truncated`)?"""
    guard = CallTextGuard(names)
    guard.feed(text)
    guard.close(truncated)
    return guard.found


def _unwrap(text: str) -> str:
    """The JSON inside a ```json fence or a `<tools>` element; `text` itself otherwise."""
    if text.startswith("```") and text.endswith("```") and len(text) >= 6:
        inner = text[3:-3]
        return (inner[4:] if inner.startswith("json") else inner).strip()
    if text.startswith("<tools>") and text.endswith("</tools>"):
        return text[len("<tools>") : -len("</tools>")].strip()
    return text


def _json_object(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser allows
        return None


def parse_written_call(
    content: str | None, schemas: Mapping[str, dict[str, Any]]
) -> tuple[str, dict[str, Any]] | None:
    """A whole answer that is one tool call written as text: (name, arguments), or None.

    It counts only when the whole answer (in one of the wrappers above) is a JSON object with exactly the
    keys `name` (one of `schemas`) and `arguments` (an object, or OpenAI's JSON string of one, valid under
    that tool's JSON schema), as vLLM's structural tag would have required of `<tool_call>`. Anything else
    is not a call.
    """
    text = _unwrap((content or "").strip())
    candidates = [text]
    if text.startswith("{{") and text.endswith("}}"):
        candidates.append(text[1:-1])
    for candidate in candidates:
        value = _json_object(candidate)
        if not isinstance(value, dict) or set(value) != {"name", "arguments"}:
            continue
        name, arguments = value["name"], value["arguments"]
        if isinstance(arguments, str):  # OpenAI's own form: the arguments as a JSON string
            arguments = _json_object(arguments)
        if not isinstance(name, str) or name not in schemas or not isinstance(arguments, dict):
            continue
        if arguments_valid(arguments, schemas[name]):
            return name, arguments
    return None


def arguments_valid(arguments: dict[str, Any], schema: dict[str, Any]) -> bool:
    """`arguments` against a tool's JSON schema (a schema that is itself invalid admits nothing)."""
    try:
        validator = Draft202012Validator(schema)
        return not any(True for _ in validator.iter_errors(arguments))
    except (SchemaError, RecursionError, TypeError):
        return False


def echoes(content: str, prompt_texts: Iterable[str]) -> bool:
    """Is `content` (whitespace aside) a copy of text in the prompt? A call the model copies from quoted
    data (a document, a tool result, a memory, the user's message) must never run: data is not an action."""
    needle = _compact(_unwrap(content.strip()))
    return bool(needle) and any(needle in _compact(text) for text in prompt_texts)
