"""PersonaAgent: persona, retrieved memories and tools in one streamed generation.

A personalized request is one engine call when no tool is needed: the persona (first, byte-stable, so its
KV blocks stay cached), the conversation, the user's memories for this request (priming search: embedding
and FAISS, no LLM), and the tools offered inside the same generation the way the ecosystem does it
(OpenAI `tools` + `tool_choice`, parsed by vLLM's tool parser for the model family, checked by vLLM's
structural tag). A built-in tool call (memory, profile, documents) is executed here and the generation
continues with its result, for at most `max_steps` rounds; a call of one of the client's tools is
returned to the client as OpenAI `tool_calls`.

No Ray and no HTTP here: memory and the engine come in through small protocols, so chat, the alignment
loop and the evaluation run this same code.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from agent.prompts import TOOL_CONTEXT, TOOLS_PROMPTED
from agent.tools import BUILTIN_TOOLS, ToolSpec, ToolStep, client_tool_specs
from memory.records import DocumentHit, MemoryHit, PersonaVersion
from personaagent.llm import LLM, TokenUsage
from personaagent.quoting import history_block, history_lines, quote_data
from personaagent.salts import CacheSalts
from personaagent.settings import AgentSettings

logger = logging.getLogger(__name__)

# Request fields the agent owns: the engine sees the agent's own tools and tool choice instead.
AGENT_ONLY_FIELDS = frozenset(
    {"tools", "tool_choice", "parallel_tool_calls", "functions", "function_call", "persona_agent_options",
     "cache_salt", "user"}
)  # fmt: skip


class AgentMemory(Protocol):
    """What the agent needs from the memory service (implemented over a Ray handle or in-process)."""

    async def ensure_persona(self, user_id: str) -> PersonaVersion: ...
    async def search(
        self, user_id: str, query: str, k: int, exclude_ids: tuple[int, ...] = ()
    ) -> list[MemoryHit] | None: ...
    async def get_profile_text(self, user_id: str) -> str | None: ...
    async def search_documents(self, query: str, k: int) -> list[DocumentHit]: ...


class AgentOptions(BaseModel):
    """Per-request switches (the `persona_agent_options` chat field): the paper's ablations, over HTTP."""

    model_config = ConfigDict(extra="forbid")
    persona: bool = Field(True, description="false: no persona system prompt")
    memory: bool = Field(True, description="false: no episodic or semantic memory (search, profile, priming)")
    tools: bool = Field(True, description="false: no action module (no tools, no memory priming)")


class AgentPlan(BaseModel):
    """A prepared personalized request: its prompt, the tools it offers, and what it did so far."""

    user_id: str
    cache_salt: str
    persona_version: int | None
    persona: str | None
    persona_tokens: int | None = None
    messages: list[dict[str, Any]]
    tools: list[ToolSpec] = Field(default_factory=list)
    tool_choice: Any = Field(None, description="OpenAI tool_choice for the first round (named or required)")
    max_steps: int = 0
    tools_in_template: bool = False
    exclude_ids: list[int] = Field(default_factory=list)
    trace_final_prompt: bool = False
    steps: list[ToolStep] = Field(default_factory=list)
    usage: TokenUsage = Field(default_factory=TokenUsage, description="every engine call of this request")
    tool_llm_calls: int = 0

    @property
    def memory_ids(self) -> list[int]:
        seen: dict[int, None] = {}
        for step in self.steps:
            for i in step.memory_ids:
                seen.setdefault(i, None)
        return list(seen)

    def trace(self) -> dict[str, Any]:
        """The `persona_agent` object attached to responses."""
        return {
            "user": self.user_id,
            "persona_version": self.persona_version,
            "persona_tokens": self.persona_tokens,
            "tool_calls": [s.model_dump() for s in self.steps],
            "memory_ids": self.memory_ids,
            "llm_calls": self.usage.calls,
            "tool_llm_calls": self.tool_llm_calls,
        } | ({"final_messages": self.messages} if self.trace_final_prompt else {})


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def tool_call_text(name: str, arguments: Any) -> str:
    """A call as the Hermes convention writes it (what the prompted tool block asks the model for)."""
    args = arguments if isinstance(arguments, dict) else _parse_arguments(arguments)
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': args})}\n</tool_call>"


def _parse_arguments(raw: Any) -> dict[str, Any]:
    try:
        value = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def normalize_conversation(messages: Sequence[dict[str, Any]]) -> tuple[list[dict[str, str]], list[str]]:
    """Client messages -> plain system/user/assistant text turns, plus trailing client-tool observations.

    For chat templates that know nothing of tool roles: assistant tool calls are rendered as Hermes
    `<tool_call>` text; tool results after the last user turn become observations of this request.
    """
    turns: list[dict[str, str]] = []
    trailing: list[str] = []
    for msg in messages:
        role = msg.get("role")
        if role == "tool":
            trailing.append(f"Result of tool call {msg.get('tool_call_id', '')}: {_text(msg.get('content'))}")
            continue
        if role == "assistant" and msg.get("tool_calls"):
            calls = "\n".join(
                tool_call_text(
                    (c.get("function") or {}).get("name"), (c.get("function") or {}).get("arguments")
                )
                for c in msg["tool_calls"]
            )
            turns.append({"role": "assistant", "content": (_text(msg.get("content")) + "\n" + calls).strip()})
            continue
        if trailing:
            turns.append({"role": "user", "content": TOOL_CONTEXT.render(observations=_quoted(trailing))})
            trailing = []
        if role in {"system", "developer"}:
            turns.append({"role": "system", "content": _text(msg.get("content"))})
        elif role in {"user", "assistant"}:
            turns.append({"role": role, "content": _text(msg.get("content"))})
    return turns, trailing


def _quoted(observations: Sequence[str]) -> str:
    return "\n".join(quote_data(o, "tool_result") for o in observations)


def last_user_text(messages: Sequence[dict[str, Any]]) -> str:
    for msg in reversed(messages):
        if msg.get("role") == "user":
            return _text(msg.get("content"))
    return ""


def forced_tool(tool_choice: Any, tools: Sequence[ToolSpec]) -> str | None:
    """OpenAI `tool_choice={"type": "function", "function": {"name": ...}}` names an offered tool."""
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name")
        return name if any(t.name == name for t in tools) else None
    return None


def _call_key(name: str, arguments: dict[str, Any]) -> str:
    """Identity of a tool call, to stop a loop that repeats itself."""
    return json.dumps([name, arguments], sort_keys=True)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


_OUTPUT_CONSTRAINTS = ("structured_outputs", "response_format", "guided_json", "guided_choice", "guided_regex",
                       "guided_grammar")  # fmt: skip


def constrains_output(request: dict[str, Any]) -> bool:
    """The client asks for a format (JSON schema, a choice of labels...): the answer must be that format."""
    fmt = request.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "text":
        return False
    return any(request.get(field) for field in _OUTPUT_CONSTRAINTS)


def _hit_lines(hits: Sequence[MemoryHit]) -> str:
    return "\n".join(history_lines([(h.interaction.input, h.interaction.output) for h in hits]))


def _with_history(messages: list[dict[str, Any]], hits: Sequence[MemoryHit]) -> list[dict[str, Any]]:
    """The retrieved history goes right before the latest request, as the RAG baseline puts it (small models
    use history before a question far better than after it); the persona prefix before it stays cached."""
    block = history_block([(h.interaction.input, h.interaction.output) for h in hits])
    out = list(messages)
    for i in range(len(out) - 1, -1, -1):
        if out[i].get("role") == "user":
            out[i] = {**out[i], "content": f"{block}\n\n{_text(out[i].get('content'))}"}
            return out
    return out


# A ```json fence, or the `<tools>` element of the tool listing the model was shown (copied instead of <tool_call>).
_CALL_WRAPPER = re.compile(r"^(?:```(?:json)?\s*(.*?)\s*```|<tools>\s*(.*?)\s*</tools>)$", re.S)


def text_tool_call(content: Any, offered: set[str]) -> tuple[str, dict[str, Any]] | None:
    """A whole answer that is only a tool call written as JSON text, without the `<tool_call>` markup the
    parser looks for: `{"name": ..., "arguments": {...}}`, bare, in a ```json fence or a `<tools>` element,
    or with the doubled braces of the prompt's template (Qwen2.5-Coder-1.5B writes all four). Only a name
    that was offered."""
    text = _text(content).strip()
    if not text:
        return None
    wrapped = _CALL_WRAPPER.match(text)
    text = (wrapped.group(1) or wrapped.group(2) or "") if wrapped else text
    for candidate in (text, text[1:-1] if text.startswith("{{") and text.endswith("}}") else None):
        if candidate is None:
            continue
        try:
            value = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict) and value.get("name") in offered:
            arguments = value.get("arguments", {})
            if isinstance(arguments, str):
                arguments = _parse_arguments(arguments)
            if isinstance(arguments, dict):
                return str(value["name"]), arguments
    return None


# The compact (whitespace-free) opening of a call written as text, in each wrapper `text_tool_call` accepts.
_WRITTEN_CALL_HEADS = tuple(
    opener + head for opener in ("", "```json", "```", "<tools>") for head in ('{"name":"', '{{"name":"')
)


def written_call_start(text: str, offered: set[str]) -> bool | None:
    """While an answer streams: does it open as a call written as text (`text_tool_call`'s forms) to an
    offered tool? True: yes; False: it cannot be one; None: too early to tell. Decided within the first few
    tokens, so a streamed answer is held back only while it could still be such a call."""
    compact = re.sub(r"\s+", "", text)
    for head in _WRITTEN_CALL_HEADS:
        if head.startswith(compact):
            return None
        if compact.startswith(head):
            name = compact[len(head) :]
            if '"' in name:
                return name.split('"', 1)[0] in offered
            return None if any(n.startswith(name) for n in offered) else False
    return False


class _Call(BaseModel):
    """A tool call read from the engine's output (streamed in pieces, or whole)."""

    id: str = ""
    name: str = ""
    arguments: str = ""
    index: int = 0

    def openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


def _written_call(content: Any, body: dict[str, Any]) -> _Call | None:
    """The call an answer wrote as text (`text_tool_call`) to one of the tools `body` offered, with a fresh id."""
    written = text_tool_call(content, {t["function"]["name"] for t in body.get("tools", [])})
    if written is None:
        return None
    name, arguments = written
    return _Call(id=f"call_{uuid.uuid4().hex[:24]}", name=name, arguments=json.dumps(arguments))


class PersonaAgent:
    def __init__(
        self,
        llm: LLM,
        memory: AgentMemory,
        salts: CacheSalts,
        settings: AgentSettings | None = None,
        *,
        tools_in_template: bool = False,
    ) -> None:
        """`tools_in_template`: the model's chat template renders `tools` (the engine's setting: Qwen2.5,
        Mistral); false, the agent writes the Hermes tool block into the system prompt itself (SmolLM2)."""
        self.llm = llm
        self.memory = memory
        self.salts = salts
        self.settings = settings or AgentSettings()
        self.tools_in_template = tools_in_template

    # -- preparing the one generation --------------------------------------------------------------

    async def prepare(
        self,
        user_id: str,
        messages: Sequence[dict[str, Any]],
        *,
        client_tools: list[dict[str, Any]] | None = None,
        tool_choice: Any = None,
        exclude_ids: Sequence[int] = (),
        persona_override: str | None = None,
        options: AgentOptions | None = None,
    ) -> AgentPlan:
        """Persona, conversation, the user's memories for this request and the tools to offer (no LLM)."""
        cfg, switches = self.settings, options or AgentOptions()
        persona_version: int | None = None
        persona: str | None = None
        if switches.persona:
            if persona_override is not None:
                persona = persona_override
            else:
                record = await self.memory.ensure_persona(user_id)
                persona, persona_version = record.text, record.version

        tools = list(BUILTIN_TOOLS) + client_tool_specs(client_tools) if switches.tools else []
        if not switches.memory:
            tools = [t for t in tools if t.name not in {"search_memory", "get_profile"}]
        plan = AgentPlan(
            user_id=user_id,
            cache_salt=self.salts.user(user_id),
            persona_version=persona_version,
            persona=persona,
            messages=[],
            tools=tools,
            max_steps=cfg.max_steps if tools else 0,
            tools_in_template=self.tools_in_template,
            exclude_ids=list(exclude_ids),
        )
        if self.tools_in_template:  # the template renders tool calls and results itself
            conversation = [dict(m) for m in messages]
            trailing = bool(messages) and messages[-1].get("role") == "tool"
        else:
            conversation, results = normalize_conversation(messages)
            trailing = bool(results)
            if results:  # the client's tool results answer the last assistant turn
                conversation.append(
                    {"role": "user", "content": TOOL_CONTEXT.render(observations=_quoted(results))}
                )
        # A forced tool applies to a turn's first round, not to the one carrying the client's tool result.
        if not trailing and (tool_choice == "required" or forced_tool(tool_choice, tools)):
            plan.tool_choice = tool_choice
        request_text = last_user_text(messages)
        # The priming search is an action too: without the action module the agent answers unaided.
        if (
            switches.tools
            and switches.memory
            and cfg.auto_memory_search
            and request_text.strip()
            and not trailing
        ):
            hits = await self._priming_search(plan, request_text[:200])
            if hits:
                conversation = _with_history(conversation, hits)
        system = self._system_prompt(persona, tools, self.tools_in_template)
        plan.messages = ([{"role": "system", "content": system}] if system else []) + conversation
        return plan

    async def _priming_search(self, plan: AgentPlan, query: str) -> list[MemoryHit]:
        """The memories for this request, recorded in the trace as an automatic search_memory step."""
        step, full, hits = await self._run_builtin(
            plan.user_id, "search_memory", {"query": query}, plan.exclude_ids
        )
        step.auto = True
        step.result = _clip(full, self.settings.trace_result_chars)
        plan.steps.append(step)
        return hits

    @staticmethod
    def _system_prompt(persona: str | None, tools: Sequence[ToolSpec], tools_in_template: bool) -> str | None:
        """Persona first; for templates without tool support, the Hermes tool block after it."""
        if tools_in_template or not tools:
            return persona
        block = TOOLS_PROMPTED.render(tools="\n".join(json.dumps(t.openai()) for t in tools))
        return f"{persona}\n\n{block}" if persona else block

    # -- the generation ----------------------------------------------------------------------------

    def _engine_body(self, plan: AgentPlan, request: dict[str, Any], round_: int) -> dict[str, Any]:
        body = {k: v for k, v in request.items() if k not in AGENT_ONLY_FIELDS}
        body["messages"] = plan.messages
        body["cache_salt"] = plan.cache_salt
        # A requested output format (e.g. the evaluation's label choice) is answered directly: vLLM would
        # let a tool call stand in for the format, and a call cut off by a small max_tokens is no answer.
        tools = [t for t in plan.tools if not t.builtin] if constrains_output(request) else plan.tools
        if tools and (round_ < plan.max_steps or (round_ == 0 and plan.tool_choice)):
            body["tools"] = [t.openai() for t in tools]
            body["tool_choice"] = plan.tool_choice if round_ == 0 and plan.tool_choice else "auto"
            body["parallel_tool_calls"] = True
            if body["tool_choice"] != "auto":
                # A forced round writes only the call: a budget meant for an answer must not cut it off.
                for field in ("max_tokens", "max_completion_tokens"):
                    if isinstance(body.get(field), int):
                        body[field] = max(body[field], self.settings.forced_call_min_tokens)
        return body

    async def generate(self, plan: AgentPlan, request: dict[str, Any]) -> AsyncIterator[dict[str, Any] | str]:
        """Answer `plan` with the OpenAI body `request` (sampling fields, `stream`, ...): engine-shaped output.

        Yields one dict (response or error) without `stream`, else SSE strings, as the engine does.
        """
        if request.get("stream"):
            async for event in self._generate_stream(plan, request):
                yield event
            return
        for round_ in range(plan.max_steps + 2):
            result: dict[str, Any] | None = None
            body = self._engine_body(plan, request, round_)
            async for item in self.llm.run(body):
                if isinstance(item, dict):
                    result = item
            plan.usage.calls += 1
            if result is None or "error" in result or not result.get("choices"):
                yield result or {"error": {"message": "engine returned no output", "type": "server_error",
                                           "param": None, "code": 500}}  # fmt: skip
                return
            plan.usage.add_openai(result.get("usage"))
            message = result["choices"][0].get("message") or {}
            text_call = None if message.get("tool_calls") else _written_call(message.get("content"), body)
            if text_call is not None:  # a call the parser missed is still a call, not the answer
                message["content"] = None
                message["tool_calls"] = [text_call.openai()]
            calls = [
                _Call(id=c.get("id", ""), name=(c.get("function") or {}).get("name", ""),
                      arguments=(c.get("function") or {}).get("arguments", ""), index=n)
                for n, c in enumerate(message.get("tool_calls") or [])
            ]  # fmt: skip
            client = [
                message["tool_calls"][c.index] for c in calls if not self._is_builtin_name(plan, c.name)
            ]
            if calls and not client and "tools" in body:
                await self._run_builtin_round(plan, message.get("content"), calls)
                continue
            if client:
                message["tool_calls"] = client  # built-in calls beside a client call are not the client's
                result["choices"][0]["finish_reason"] = "tool_calls"  # also for a forced (named) call
            elif calls:  # built-in calls past the last tool round: nothing for the client to run
                message.pop("tool_calls")
                result["choices"][0]["finish_reason"] = "stop"
            elif "<tool_call>" in (message.get("content") or ""):
                # A call cut off by max_tokens is not parsed: its markup is not part of the answer.
                message["content"] = message["content"].split("<tool_call>", 1)[0].rstrip()
            result["usage"] = plan.usage.openai()
            yield result
            return

    async def _generate_stream(
        self, plan: AgentPlan, request: dict[str, Any]
    ) -> AsyncIterator[dict[str, Any] | str]:
        """Relay the engine's chunks; built-in tool calls are held back, run, and the stream continues.

        A tool call's name arrives in its first delta, so each call is known to be built-in (held back) or
        the client's (relayed, renumbered) before any of it is sent. An answer that opens like a call written
        as text (`written_call_start`) is held back until that is decided, and if the whole answer is one,
        it runs as a call as on the non-streaming path.
        """
        completion_id = ""
        usage_chunk: dict[str, Any] | None = None
        for round_ in range(plan.max_steps + 2):
            calls: dict[int, _Call] = {}
            relayed: dict[int, int] = {}  # engine tool-call index -> index the client sees
            content: list[str] = []
            finish: dict[str, Any] | None = None
            plan.usage.calls += 1
            body = self._engine_body(plan, request, round_)
            offered = {t["function"]["name"] for t in body.get("tools", [])}
            written: bool | None = None if offered else False  # None: may still be a call written as text
            held: list[str] = []  # chunks kept back while `written` is not False
            async for item in self.llm.run(body):
                if isinstance(item, dict):  # an error before streaming began
                    yield item
                    return
                out: list[str] = []
                for event in item.split("\n\n"):
                    if not event.startswith("data: ") or event == "data: [DONE]":
                        continue
                    data = json.loads(event[6:])
                    if "error" in data:
                        yield f"data: {json.dumps(data)}\n\n"
                        return
                    completion_id = completion_id or data.get("id", "")
                    data["id"] = completion_id
                    if not data.get("choices"):  # the closing usage chunk (stream_options.include_usage)
                        plan.usage.add_openai(data.get("usage"))
                        usage_chunk = data
                        continue
                    choice = data["choices"][0]
                    delta = choice.get("delta") or {}
                    deltas = []
                    for tc in delta.get("tool_calls") or []:
                        call = calls.setdefault(tc.get("index", 0), _Call(index=tc.get("index", 0)))
                        fn = tc.get("function") or {}
                        call.id = tc.get("id") or call.id
                        call.name = fn.get("name") or call.name
                        call.arguments += fn.get("arguments") or ""
                        if not self._is_builtin_name(plan, call.name):
                            relayed.setdefault(call.index, len(relayed))
                            deltas.append({**tc, "index": relayed[call.index]})
                    if "tool_calls" in delta:
                        if not deltas and not delta.get("content") and not choice.get("finish_reason"):
                            continue
                        if deltas:
                            delta["tool_calls"] = deltas
                        else:
                            del delta["tool_calls"]
                    content.append(delta.get("content") or "")
                    if written is None and (delta.get("content") or deltas):
                        written = False if deltas else written_call_start("".join(content), offered)
                        if written is False:
                            out.extend(held)
                            held.clear()
                    if (
                        round_ > 0
                        and delta.get("role")
                        and not delta.get("content")
                        and "tool_calls" not in delta
                    ):
                        continue  # the next round's opening role chunk: the client already has one
                    if choice.get("finish_reason"):
                        finish = data
                        continue
                    if written is False or (not held and not delta.get("content")):
                        out.append(f"data: {json.dumps(data)}\n\n")
                    else:
                        held.append(f"data: {json.dumps(data)}\n\n")
                if out:
                    yield "".join(out)
            # Held to the end: the answer opened like a call written as text; run it as one if it is one.
            text_call = _written_call("".join(content), body) if held else None
            if held and text_call is None:
                yield "".join(held)
            elif text_call is not None and self._is_builtin_name(plan, text_call.name):
                calls[0] = text_call
            elif text_call is not None and finish is not None:
                relayed[0] = 0
                finish["choices"][0]["delta"] = {}  # vLLM puts the last token in it: part of the call
                delta = {"tool_calls": [{"index": 0, **text_call.openai()}]}
                chunk = {**finish, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
                yield f"data: {json.dumps(chunk)}\n\n"
            builtin = [c for c in calls.values() if self._is_builtin_name(plan, c.name)]
            if builtin and not relayed and "tools" in body:
                await self._run_builtin_round(plan, "" if text_call else "".join(content), builtin)
                continue
            if finish is not None:
                # Built-in calls only: nothing for the client to run. A client call (forced ones too): tool_calls.
                choice = finish["choices"][0]
                if relayed:
                    choice["finish_reason"] = "tool_calls"
                elif choice.get("finish_reason") == "tool_calls":
                    choice["finish_reason"] = "stop"
                yield f"data: {json.dumps(finish)}\n\n"
            break
        if usage_chunk is not None:
            usage_chunk["usage"] = plan.usage.openai()
            yield f"data: {json.dumps(usage_chunk)}\n\n"
        yield "data: [DONE]\n\n"

    @staticmethod
    def _is_builtin_name(plan: AgentPlan, name: str) -> bool:
        return any(t.name == name and t.builtin for t in plan.tools)

    async def _run_builtin_round(self, plan: AgentPlan, content: Any, calls: Sequence[_Call]) -> None:
        """Run the round's built-in calls and extend the prompt; repeats only end the tool rounds."""
        fresh = []
        seen = {_call_key(s.name, s.arguments) for s in plan.steps}
        for call in calls:
            arguments = _parse_arguments(call.arguments)
            if _call_key(call.name, arguments) not in seen:  # small models repeat themselves
                fresh.append((call, arguments))
        if not fresh:
            plan.max_steps = 0  # the next round answers without tools
            return
        plan.tool_llm_calls += 1
        results = [await self._run_step(plan, call.name, arguments) for call, arguments in fresh]
        text = _text(content).strip()
        if plan.tools_in_template:
            plan.messages = [
                *plan.messages,
                {"role": "assistant", "content": text or None, "tool_calls": [
                    {"id": call.id or f"call_{n}", "type": "function",
                     "function": {"name": call.name, "arguments": json.dumps(arguments)}}
                    for n, (call, arguments) in enumerate(fresh)]},
                *({"role": "tool", "tool_call_id": call.id or f"call_{n}", "content": quote_data(r, "tool_result")}
                  for n, ((call, _), r) in enumerate(zip(fresh, results, strict=True))),
            ]  # fmt: skip
        else:
            said = "\n".join(
                [text, *(tool_call_text(call.name, arguments) for call, arguments in fresh)]
            ).strip()
            plan.messages = [
                *plan.messages,
                {"role": "assistant", "content": said},
                {"role": "user", "content": TOOL_CONTEXT.render(observations=_quoted(results))},
            ]

    async def _run_step(self, plan: AgentPlan, name: str, arguments: dict[str, Any]) -> str:
        """Run a built-in tool; record it in the trace (clipped); return its result for the prompt."""
        cfg = self.settings
        step, full, _ = await self._run_builtin(plan.user_id, name, arguments, plan.exclude_ids)
        step.result = _clip(full, cfg.trace_result_chars)
        plan.steps.append(step)
        return f"{name}({json.dumps(arguments)}):\n{_clip(full, cfg.observation_chars)}"

    async def _run_builtin(
        self, user_id: str, name: str, arguments: dict[str, Any], exclude_ids: Sequence[int]
    ) -> tuple[ToolStep, str, list[MemoryHit]]:
        """Run a built-in tool: its trace step, its full result text, and the memories it found (if any)."""
        cfg = self.settings
        step = ToolStep(name=name, arguments=arguments)
        full = ""
        hits: list[MemoryHit] = []
        try:
            if name == "search_memory":
                hits = (
                    await self.memory.search(
                        user_id, str(arguments["query"]), cfg.memory_k, tuple(exclude_ids)
                    )
                    or []
                )
                step.memory_ids = [h.interaction.id for h in hits]
                full = _hit_lines(hits) or "(no memories found)"
            elif name == "get_profile":
                full = await self.memory.get_profile_text(user_id) or "(no profile yet)"
            elif name == "search_documents":
                docs = await self.memory.search_documents(str(arguments["query"]), cfg.document_k)
                full = "\n".join(f"- [{d.source}] {d.text.strip()}" for d in docs) or "(no documents found)"
        except Exception as exc:
            step.error = type(exc).__name__
            logger.warning("tool %s failed for a request: %s", name, exc)
            full = f"(tool failed: {step.error})"
        return step, full, hits

    async def answer(
        self, plan: AgentPlan, *, max_tokens: int = 256, priority: int = 0, temperature: float = 0.0
    ) -> str:
        """Non-streaming final text (alignment and evaluation use this; chat streams through `generate`)."""
        request = {"max_tokens": max_tokens, "temperature": temperature} | (
            {"priority": priority} if priority else {}
        )
        result: dict[str, Any] | None = None
        async for item in self.generate(plan, request):
            result = item if isinstance(item, dict) else None
        if result is None or "error" in result:
            err = (result or {}).get("error") or {}
            raise RuntimeError(f"engine error: {err.get('message', 'no output')}")
        return (result["choices"][0]["message"].get("content") or "").strip()
