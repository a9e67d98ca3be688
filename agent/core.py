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

import asyncio
import copy
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from agent.prompts import FINAL_ANSWER, NO_ANSWER, TOOL_CONTEXT, TOOLS_PROMPTED
from agent.tools import BUILTIN_TOOLS, ToolSpec, ToolStep, client_tool_specs
from memory.records import DocumentHit, MemoryHit, PersonaVersion
from personaagent.llm import LLM, TokenUsage
from personaagent.quoting import history_block, history_lines, quote_data
from personaagent.salts import CacheSalts
from personaagent.settings import AgentSettings
from personaagent.written_calls import CallTextGuard, echoes, parse_written_call

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
    async def document_count(self) -> int: ...


class OneMemoryCallAtATime:
    """An `AgentMemory` whose calls run one at a time: the memory port of the `n` side-by-side runs of one
    request. Why: calls made within one request share Ray Serve's internal request id, and its
    consistent-hash router (the memory deployment's) indexes pending calls by that id, so two at once could
    lose one and hang the chat (Ray 2.60.0). Memory calls take milliseconds; the engine calls, which take
    the time, still run side by side."""

    def __init__(self, memory: AgentMemory) -> None:
        self._memory = memory
        self._lock = asyncio.Lock()

    async def _one(self, method: str, *args: Any) -> Any:
        async with self._lock:
            return await getattr(self._memory, method)(*args)

    async def ensure_persona(self, user_id: str) -> PersonaVersion:
        return await self._one("ensure_persona", user_id)

    async def search(
        self, user_id: str, query: str, k: int, exclude_ids: tuple[int, ...] = ()
    ) -> list[MemoryHit] | None:
        return await self._one("search", user_id, query, k, exclude_ids)

    async def get_profile_text(self, user_id: str) -> str | None:
        return await self._one("get_profile_text", user_id)

    async def search_documents(self, query: str, k: int) -> list[DocumentHit]:
        return await self._one("search_documents", query, k)

    async def document_count(self) -> int:
        return await self._one("document_count")


class AgentOptions(BaseModel):
    """Per-request switches (the `persona_agent_options` chat field): the paper's ablations, over HTTP."""

    model_config = ConfigDict(extra="forbid")
    persona: bool = Field(True, description="false: no persona system prompt")
    memory: bool = Field(True, description="false: no episodic or semantic memory (search, profile, priming)")
    tools: bool = Field(True, description="false: no action module (no tools, no memory priming)")


class RoundRecord(BaseModel):
    """One engine call of a request, as reported in `persona_agent.rounds`."""

    kind: Literal["tools", "answer"] = Field(description="tools offered, or the answer round (no tools)")
    outcome: str = Field(
        description="builtin_calls, client_calls, answer; why a tool round's text was not the answer: "
        "repeated_calls, call_text, over_budget, empty, cut_call (the same round again with room for the "
        "call); call_text_dropped: the answer round wrote call text"
    )
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = Field(0, description="tool calls the round made")
    written_calls: bool = Field(False, description="written as text (read by `parse_written_call`), not markup")
    choice: int = 0


class AgentPlan(BaseModel):
    """A prepared personalized request: its prompt, the tools it offers, and what it did so far."""

    user_id: str
    cache_salt: str
    persona_version: int | None
    persona: str | None
    persona_tokens: int | None = None
    user_generation: int | None = Field(
        None, description="the user's generation when the request began: its write-back names it"
    )
    persona_transient: str | None = Field(
        None, description="why this request's persona is a stand-in, not stored (e.g. the profile was late)"
    )
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
    rounds: list[RoundRecord] = Field(default_factory=list)
    base_turns: int = Field(0, description="messages of the prompt before any tool round")
    observations: list[str] = Field(default_factory=list, description="what the built-in tools returned")

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
            "persona_transient": self.persona_transient,
            "tool_calls": [s.model_dump() for s in self.steps],
            "memory_ids": self.memory_ids,
            "llm_calls": self.usage.calls,
            "tool_llm_calls": self.tool_llm_calls,
            "rounds": [r.model_dump() for r in self.rounds],
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


def new_call_id() -> str:
    """An id for a tool call the parser gave none: 9 alphanumeric characters, the one format every chat
    template accepts (Mistral's tokenizer refuses any other when the call is rendered back; OpenAI clients
    take any string)."""
    return uuid.uuid4().hex[:9]


class _Call(BaseModel):
    """A tool call read from the engine's output (streamed in pieces, or whole)."""

    id: str = ""
    name: str = ""
    arguments: str = ""
    index: int = 0

    def openai(self) -> dict[str, Any]:
        return {
            "id": self.id or new_call_id(),
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


def answer_budget(request: dict[str, Any]) -> int | None:
    """The client's token budget for the answer (`max_completion_tokens` wins, as in vLLM)."""
    for field in ("max_completion_tokens", "max_tokens"):
        value = request.get(field)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _engine_error(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "server_error", "param": None, "code": 500}}


class _Round(BaseModel):
    """One engine call of a request, as read so far (streamed or whole)."""

    calls: dict[int, _Call] = Field(default_factory=dict)
    relayed: dict[int, int] = Field(
        default_factory=dict, description="engine index -> index the client sees, of its calls relayed"
    )
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    held: list[str] = Field(default_factory=list, description="answer text not yet sent (small budgets)")
    error: bool = False
    written_call: bool = Field(False, description="its call was written as text, not in parser markup")

    model_config = ConfigDict(arbitrary_types_allowed=True)


class _StreamState(BaseModel):
    """What one streamed response has sent so far, across its rounds."""

    id: str = ""
    created: int = 0
    model: str = ""
    started: bool = False  # anything sent to the client
    shown: bool = False  # any answer text sent

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> str:
        data = {
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }  # fmt: skip
        return f"data: {json.dumps(data)}\n\n"


def _sse_data(item: str) -> list[dict[str, Any]]:
    """The data events of one (possibly coalesced) SSE string from the engine, `[DONE]` left out."""
    return [
        json.loads(event[6:])
        for event in item.split("\n\n")
        if event.startswith("data: ") and event != "data: [DONE]"
    ]


async def _parse_written(
    content: str, tools: Sequence[ToolSpec], prompt: Sequence[dict[str, Any]]
) -> _Call | None:
    """A whole answer that is one call written as text (`parse_written_call`) and not a copy of anything in
    the prompt (`echoes`), with a fresh id. Linear, but a long answer is still read off the event loop, so no
    answer ever holds up the replica's other requests."""
    schemas = {t.name: t.parameters for t in tools}

    def parse() -> tuple[str, dict[str, Any]] | None:
        written = parse_written_call(content, schemas)
        return None if written is None or echoes(content, (_text(m.get("content")) for m in prompt)) else written

    written = await asyncio.to_thread(parse) if len(content) > _INLINE_PARSE_CHARS else parse()
    if written is None:
        return None
    name, arguments = written
    return _Call(id=new_call_id(), name=name, arguments=json.dumps(arguments))


_INLINE_PARSE_CHARS = 20_000


def _round_failure(guard: CallTextGuard, record: _Round, budget: int | None) -> str | None:
    """Why a tool round's answer cannot be the answer, or None: call text in it, or over the budget."""
    if guard.found:
        return "call_text"
    if not guard.text.strip():
        return "empty"
    if budget is not None and int((record.usage or {}).get("completion_tokens") or 0) > budget:
        return "over_budget"
    return None


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
        transient: str | None = None
        generation: int | None = None
        if switches.persona:
            if persona_override is not None:
                persona = persona_override
            else:
                record = await self.memory.ensure_persona(user_id)
                persona, persona_version = record.text, record.version
                transient = record.details.get("transient")
                generation = record.details.get("generation")

        tools = list(BUILTIN_TOOLS) + client_tool_specs(client_tools) if switches.tools else []
        # Asked after the persona, not beside it: Ray Serve's router indexes pending calls by the request id
        # they inherit from the HTTP request, so two concurrent calls of one request to the memory
        # deployment could lose one (Ray 2.60.0, consistent-hash router; seen as chats hanging for 600 s).
        if switches.tools and not await self._has_documents():
            # An empty collection is never offered: small models otherwise search it for greetings and
            # answer "No documents found" (Qwen2.5-Coder-1.5B did, 2 of 5 check-set answers, 2026-12-07).
            tools = [t for t in tools if t.name != "search_documents"]
        if not switches.memory:
            tools = [t for t in tools if t.name not in {"search_memory", "get_profile"}]
        plan = AgentPlan(
            user_id=user_id,
            cache_salt=self.salts.user(user_id),
            persona_version=persona_version,
            persona=persona,
            persona_transient=str(transient) if transient else None,
            user_generation=generation if isinstance(generation, int) else None,
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
        plan.base_turns = len(plan.messages)
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
    #
    # A request runs tool rounds (tools offered) while the model calls built-in tools, at most `max_steps`;
    # the first round that answers is the answer when it is clean (no call written as text, within the
    # client's token budget). However the rounds end otherwise (steps used up, a repeated call, a call the
    # parser could not use, call text in the answer, an answer over the client's budget), one last round
    # with no tools offered and an instruction to answer from what the agent has writes the answer. No text
    # the client gets ever holds a call written as text or parser markup (`CallTextGuard`).

    def _offered(self, plan: AgentPlan, request: dict[str, Any]) -> list[ToolSpec]:
        """The tools a round may offer. A requested output format (JSON schema, a choice of labels...) wins
        over tools: vLLM's grammar would not let a call be written anyway, so none is offered, and the
        formatted text is the answer as written."""
        return [] if constrains_output(request) else plan.tools

    @staticmethod
    def _guard(plan: AgentPlan, request: dict[str, Any]) -> CallTextGuard:
        """What keeps call text out of the answer. Under a requested format, a JSON object naming a tool may
        be exactly what the client's schema asks for: only parser markup is cut there."""
        return CallTextGuard(() if constrains_output(request) else (t.name for t in plan.tools))

    @staticmethod
    def _tool_round(plan: AgentPlan, tools: Sequence[ToolSpec], round_: int) -> bool:
        """Does round `round_` offer tools? While steps are left, and a forced first round always."""
        return bool(tools) and (round_ < plan.max_steps or (round_ == 0 and plan.tool_choice is not None))

    @staticmethod
    def _forced(plan: AgentPlan, round_: int) -> bool:
        """A round whose `tool_choice` forces a call: it writes only the call."""
        return round_ == 0 and plan.tool_choice is not None

    def _engine_body(
        self, plan: AgentPlan, request: dict[str, Any], round_: int, tools: Sequence[ToolSpec], widen: bool
    ) -> dict[str, Any]:
        """The engine's body for a tool round: `tools` offered. Its token budget is the client's, so an
        answer written in it streams as it comes; a round that must write a call (forced, or again after
        the client's budget cut a call off: `widen`) gets at least `agent.tool_round_max_tokens`."""
        body = self._answer_body(plan, request, after_tools=False)
        body["tools"] = [t.openai() for t in tools]
        body["tool_choice"] = plan.tool_choice if self._forced(plan, round_) else "auto"
        body["parallel_tool_calls"] = True
        budget = answer_budget(request)
        if budget is not None and (widen or self._forced(plan, round_)):
            body.pop("max_completion_tokens", None)
            body["max_tokens"] = max(budget, self.settings.tool_round_max_tokens)
        return body

    @classmethod
    def _answer_body(cls, plan: AgentPlan, request: dict[str, Any], after_tools: bool) -> dict[str, Any]:
        """The engine's body for a round with no tools; `after_tools`: the answer round after tool rounds."""
        body = {k: v for k, v in request.items() if k not in AGENT_ONLY_FIELDS and k != "n"}
        body["cache_salt"] = plan.cache_salt
        if request.get("stream"):  # every round's token counts, for the trace and the client's budget
            body["stream_options"] = {**(request.get("stream_options") or {}), "include_usage": True}
        body["messages"] = cls._answer_messages(plan) if after_tools else plan.messages
        return body

    @staticmethod
    def _answer_messages(plan: AgentPlan) -> list[dict[str, Any]]:
        """The answer round's prompt: the persona without the tool listing, the conversation as the client
        sent it, then what the tools returned (quoted data) and the instruction to answer now. The tool
        rounds' own call turns are left out: a small model shown calls writes another one."""
        messages = list(plan.messages[: plan.base_turns])
        if messages and messages[0].get("role") == "system":
            messages = ([{"role": "system", "content": plan.persona}] if plan.persona else []) + messages[1:]
        tail = FINAL_ANSWER.render()
        if plan.observations:
            tail = f"{TOOL_CONTEXT.render(observations=_quoted(plan.observations))}\n\n{tail}"
        last = messages[-1] if messages else {}
        if last.get("role") == "user" and isinstance(last.get("content"), str):
            # One user turn, not two in a row: some chat templates insist that roles alternate.
            return [*messages[:-1], {**last, "content": f"{last['content']}\n\n{tail}"}]
        return [*messages, {"role": "user", "content": tail}]

    def _round_record(
        self, plan: AgentPlan, kind: str, round_: _Round, outcome: str, calls: int = 0
    ) -> None:
        usage = round_.usage or {}
        plan.rounds.append(RoundRecord(
            kind=kind, outcome=outcome, finish_reason=round_.finish_reason,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            calls=calls, written_calls=round_.written_call,
        ))  # fmt: skip

    async def generate(self, plan: AgentPlan, request: dict[str, Any]) -> AsyncIterator[dict[str, Any] | str]:
        """Answer `plan` with the OpenAI body `request` (sampling fields, `stream`, `n`...): engine-shaped
        output. Yields one dict (response or error) without `stream`, else SSE strings, as the engine does.
        `n` > 1: each choice is its own agent run (its own tool rounds), run side by side."""
        n = request.get("n") or 1
        if isinstance(n, int) and n > 1:
            async for item in self._generate_choices(plan, request, n):
                yield item
        elif request.get("stream"):
            async for item in self._stream(plan, request):
                yield item
        else:
            yield await self._complete(plan, request)

    async def _run_engine(self, plan: AgentPlan, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] | None = None
        async for item in self.llm.run(body):
            if isinstance(item, dict):
                result = item
        plan.usage.calls += 1
        if result is None or (not result.get("choices") and "error" not in result):
            return _engine_error("engine returned no output")
        plan.usage.add_openai(result.get("usage"))
        return result

    async def _whole_round(
        self, plan: AgentPlan, request: dict[str, Any], body: dict[str, Any]
    ) -> tuple[dict[str, Any], _Round, CallTextGuard, str]:
        """One round, not streamed: the engine's result, the round read from it, its guard, and the text the
        client may see (`record.error`: the result is the engine's error)."""
        result = await self._run_engine(plan, body)
        guard = self._guard(plan, request)
        if "error" in result:
            return result, _Round(error=True), guard, ""
        choice = result["choices"][0]
        record = _Round(finish_reason=choice.get("finish_reason"), usage=result.get("usage"))
        content = (choice.get("message") or {}).get("content") or ""
        return result, record, guard, guard.feed(content) + guard.close(record.finish_reason == "length")

    async def _complete(self, plan: AgentPlan, request: dict[str, Any]) -> dict[str, Any]:
        """One choice, not streamed."""
        tools, budget = self._offered(plan, request), answer_budget(request)
        round_, widen = 0, False
        while self._tool_round(plan, tools, round_):
            body = self._engine_body(plan, request, round_, tools, widen)
            result, record, guard, shown = await self._whole_round(plan, request, body)
            if record.error:
                return result
            choice = result["choices"][0]
            message = choice.get("message") or {}
            calls = [
                _Call(id=c.get("id", ""), name=(c.get("function") or {}).get("name", ""),
                      arguments=(c.get("function") or {}).get("arguments", ""), index=n)
                for n, c in enumerate(message.get("tool_calls") or [])
            ]  # fmt: skip
            if not calls and guard.found:
                written = await _parse_written(guard.text, tools, plan.messages)
                calls = [written] if written is not None else []
                record.written_call = written is not None
            if self._cut_call(plan, record, guard, calls, widen):
                widen = True  # the same round again, with room for the call
                continue
            widen = False
            client = [c for c in calls if not self._is_builtin_name(plan, c.name)]
            if client:  # built-in calls beside a client call are not the client's
                self._round_record(plan, "tools", record, "client_calls", len(client))
                message["tool_calls"] = [c.openai() for c in client]
                message["content"] = shown.strip() or None
                choice["finish_reason"] = "tool_calls"  # also for a forced (named) call
                return self._finish(plan, result)
            step = await self._end_tool_round(plan, record, guard, calls, shown, budget)
            if step == "next":
                round_ += 1
                continue
            if step == "answer_round":
                break
            message["content"] = shown
            return self._finish(plan, result)
        # The answer round: no tools; after tool rounds, with the instruction to answer from what there is.
        after_tools = self._tool_round(plan, tools, 0)
        result, record, guard, content = await self._whole_round(
            plan, request, self._answer_body(plan, request, after_tools)
        )
        if record.error:
            return result
        choice = result["choices"][0]
        message = choice.get("message") or {}
        if guard.found and not content.strip() and not constrains_output(request):
            content = NO_ANSWER  # under a requested format, an apology would break it: the text stays empty
        self._round_record(plan, "answer", record, "call_text_dropped" if guard.found else "answer")
        message.pop("tool_calls", None)
        message["content"] = content
        if choice.get("finish_reason") == "tool_calls":
            choice["finish_reason"] = "stop"
        return self._finish(plan, result)

    def _cut_call(
        self, plan: AgentPlan, record: _Round, guard: CallTextGuard, calls: Sequence[_Call], widened: bool
    ) -> bool:
        """Did the client's token budget cut off a call this round began (recorded as `cut_call`)? Once
        per round: the widened round that follows has room for any call."""
        # Nothing written at all: vLLM's streaming parser holds back a call it is still reading.
        begun = guard.found or bool(calls) or not guard.text.strip()
        cut = record.finish_reason == "length" and not widened and begun
        if cut:
            self._round_record(plan, "tools", record, "cut_call")
        return cut

    async def _end_tool_round(
        self,
        plan: AgentPlan,
        record: _Round,
        guard: CallTextGuard,
        calls: Sequence[_Call],
        content: str,
        budget: int | None,
    ) -> Literal["next", "answer_round", "answer"]:
        """A tool round without client calls, streamed or not: its built-in calls run ("next" round), or the
        tool rounds are over ("answer_round": repeated calls, call text, over the budget), or its text is
        the answer."""
        if calls:
            ran = await self._run_builtin_round(plan, content, calls)
            self._round_record(plan, "tools", record, "builtin_calls" if ran else "repeated_calls", len(calls))
            return "next" if ran else "answer_round"
        failed = _round_failure(guard, record, budget)
        self._round_record(plan, "tools", record, failed or "answer")
        return "answer_round" if failed else "answer"

    @staticmethod
    def _finish(plan: AgentPlan, result: dict[str, Any]) -> dict[str, Any]:
        result["usage"] = plan.usage.openai()
        return result

    async def _stream(self, plan: AgentPlan, request: dict[str, Any]) -> AsyncIterator[dict[str, Any] | str]:
        """One choice, streamed: answer text is relayed as it comes (through the guard), built-in calls are
        held back and run, the client's calls are relayed as OpenAI `tool_calls` deltas."""
        tools, budget = self._offered(plan, request), answer_budget(request)
        state = _StreamState()
        round_, widen = 0, False
        while self._tool_round(plan, tools, round_):
            body = self._engine_body(plan, request, round_, tools, widen)
            record, guard = _Round(), self._guard(plan, request)
            # A round with the client's budget streams its answer as it comes; a widened one may write past
            # that budget, so its answer is sent only once it is known to fit.
            live = not (widen or self._forced(plan, round_))
            async for out in self._stream_round(plan, body, record, guard, state, live):
                yield out
            if record.error:
                return
            if record.relayed:
                self._round_record(plan, "tools", record, "client_calls", len(record.relayed))
                if record.held:
                    yield "".join(state.chunk({"content": piece}) for piece in record.held)
                async for out in self._stream_end(plan, request, state, "tool_calls"):
                    yield out
                return
            calls = [c for c in record.calls.values() if self._is_builtin_name(plan, c.name)]
            if self._cut_call(plan, record, guard, calls, widen):
                widen = True  # the same round again, with room for the call
                continue
            widen = False
            if not calls and guard.found and not state.shown:
                written = await _parse_written(guard.text, tools, plan.messages)
                record.written_call = written is not None
                if written is not None and not self._is_builtin_name(plan, written.name):
                    self._round_record(plan, "tools", record, "client_calls", 1)
                    yield state.chunk({"tool_calls": [{"index": 0, **written.openai()}]})
                    async for out in self._stream_end(plan, request, state, "tool_calls"):
                        yield out
                    return
                calls = [written] if written is not None else []
            step = await self._end_tool_round(plan, record, guard, calls, guard.clean(), budget)
            if step == "next":
                round_ += 1
                continue
            if step == "answer_round":
                break
            if record.held:
                yield "".join(state.chunk({"content": piece}) for piece in record.held)
            async for out in self._stream_end(plan, request, state, record.finish_reason or "stop"):
                yield out
            return
        record, guard = _Round(), self._guard(plan, request)
        body = self._answer_body(plan, request, after_tools=self._tool_round(plan, tools, 0))
        async for out in self._stream_round(plan, body, record, guard, state, True):
            yield out
        if record.error:
            return
        self._round_record(plan, "answer", record, "call_text_dropped" if guard.found else "answer")
        if guard.found and not state.shown and not constrains_output(request):
            yield state.chunk({"content": NO_ANSWER})
        finish = "stop" if record.finish_reason in (None, "tool_calls") else record.finish_reason
        async for out in self._stream_end(plan, request, state, finish):
            yield out

    async def _stream_round(
        self,
        plan: AgentPlan,
        body: dict[str, Any],
        record: _Round,
        guard: CallTextGuard,
        state: _StreamState,
        live: bool,
    ) -> AsyncIterator[dict[str, Any] | str]:
        """Run one round streamed: relay what the client may see now, keep the rest in `record`."""
        plan.usage.calls += 1
        async for item in self.llm.run(body):
            if isinstance(item, dict):  # an error before the engine began streaming
                record.error = True
                yield item if not state.started else f"data: {json.dumps(item)}\n\n"
                return
            out: list[str] = []
            for data in _sse_data(item):
                if "error" in data:
                    record.error = True
                    yield "".join(out) + f"data: {json.dumps(data)}\n\n"
                    return
                if not state.started:
                    state.id, state.created = data.get("id", ""), int(data.get("created") or time.time())
                    state.model = data.get("model", "")
                    state.started = True
                    out.append(state.chunk({"role": "assistant", "content": ""}))
                if not data.get("choices"):  # the closing usage chunk (asked of the engine on every round)
                    record.usage = data.get("usage")
                    plan.usage.add_openai(record.usage)
                    continue
                choice = data["choices"][0]
                delta = choice.get("delta") or {}
                finish = choice.get("finish_reason")
                client_deltas = []
                for tc in delta.get("tool_calls") or []:
                    call = record.calls.setdefault(tc.get("index", 0), _Call(index=tc.get("index", 0)))
                    fn = tc.get("function") or {}
                    call.id = tc.get("id") or call.id
                    call.name = fn.get("name") or call.name
                    call.arguments += fn.get("arguments") or ""
                    if not self._is_builtin_name(plan, call.name):  # the name comes in the call's first delta
                        relayed = record.relayed.setdefault(call.index, len(record.relayed))
                        client_deltas.append({**tc, "index": relayed})
                if client_deltas:
                    out.append(state.chunk({"tool_calls": client_deltas}))
                content = delta.get("content") or ""
                shown = guard.feed(content)
                if finish:
                    record.finish_reason = finish
                    shown += guard.close(truncated=finish == "length")
                if shown and live:
                    state.shown = True
                    out.append(state.chunk({"content": shown}))
                elif shown:
                    record.held.append(shown)
            if out:
                yield "".join(out)

    async def _stream_end(
        self, plan: AgentPlan, request: dict[str, Any], state: _StreamState, finish_reason: str
    ) -> AsyncIterator[str]:
        yield state.chunk({}, finish_reason)
        if (request.get("stream_options") or {}).get("include_usage"):
            data = {"id": state.id, "object": "chat.completion.chunk", "created": state.created,
                    "model": state.model, "choices": [], "usage": plan.usage.openai()}  # fmt: skip
            yield f"data: {json.dumps(data)}\n\n"
        yield "data: [DONE]\n\n"

    async def _generate_choices(
        self, plan: AgentPlan, request: dict[str, Any], n: int
    ) -> AsyncIterator[dict[str, Any] | str]:
        """`n` choices: `n` runs of the agent side by side, each with its own rounds; the trace and usage
        add them up. Streamed, their chunks interleave with each choice's own `index`."""
        runs = [plan.model_copy(deep=True) for _ in range(n)]
        one = {**request, "n": 1}
        side_by_side = copy.copy(self)  # the same agent, its memory calls one at a time (see the class)
        side_by_side.memory = OneMemoryCallAtATime(self.memory)
        if not request.get("stream"):
            results = await asyncio.gather(*(side_by_side._complete(run, one) for run in runs))
            self._merge_runs(plan, runs)
            for result in results:
                if "error" in result:
                    yield result
                    return
            merged = results[0]
            merged["choices"] = [r["choices"][0] | {"index": i} for i, r in enumerate(results)]
            yield self._finish(plan, merged)
            return
        queue: asyncio.Queue[tuple[int, dict[str, Any] | str | None]] = asyncio.Queue()

        async def pump(i: int, run: AgentPlan) -> None:
            try:
                async for item in side_by_side._stream(run, one):
                    await queue.put((i, item))
            finally:
                await queue.put((i, None))

        tasks = [asyncio.create_task(pump(i, run)) for i, run in enumerate(runs)]
        try:
            open_runs, completion_id, started = n, "", False
            while open_runs:
                i, item = await queue.get()
                if item is None:
                    open_runs -= 1
                    continue
                if isinstance(item, dict):  # an error
                    yield item if not started else f"data: {json.dumps(item)}\n\n"
                    return
                out = []
                for data in _sse_data(item):
                    if "error" in data:
                        yield "".join(out) + f"data: {json.dumps(data)}\n\n"
                        return
                    if not data.get("choices"):
                        continue  # each run's usage: the sum is sent once, at the end
                    completion_id = completion_id or data.get("id", "")
                    data["id"] = completion_id
                    for choice in data["choices"]:
                        choice["index"] = i
                    out.append(f"data: {json.dumps(data)}\n\n")
                if out:
                    started = True
                    yield "".join(out)
            self._merge_runs(plan, runs)
            if (request.get("stream_options") or {}).get("include_usage"):
                data = {"id": completion_id, "object": "chat.completion.chunk", "choices": [],
                        "usage": plan.usage.openai()}  # fmt: skip
                yield f"data: {json.dumps(data)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            for task in tasks:
                task.cancel()

    @staticmethod
    def _merge_runs(plan: AgentPlan, runs: Sequence[AgentPlan]) -> None:
        """The choices' runs into the request's plan: their steps, rounds and usage past what they share."""
        base_steps, base = len(plan.steps), plan.usage.model_copy()
        for i, run in enumerate(runs):
            plan.steps.extend(run.steps[base_steps:])
            plan.rounds.extend(r.model_copy(update={"choice": i}) for r in run.rounds)
            plan.tool_llm_calls += run.tool_llm_calls
            for field in ("prompt_tokens", "completion_tokens", "cached_tokens", "calls"):
                added = getattr(run.usage, field) - getattr(base, field)
                setattr(plan.usage, field, getattr(plan.usage, field) + added)
        if runs:
            plan.messages = runs[0].messages

    @staticmethod
    def _is_builtin_name(plan: AgentPlan, name: str) -> bool:
        return any(t.name == name and t.builtin for t in plan.tools)

    async def _run_builtin_round(self, plan: AgentPlan, content: Any, calls: Sequence[_Call]) -> bool:
        """Run the round's built-in calls and extend the prompt. False: every call repeats an earlier one
        (small models repeat themselves), nothing ran, and the tool rounds are over."""
        fresh = []
        seen = {_call_key(s.name, s.arguments) for s in plan.steps}
        for call in calls:
            arguments = _parse_arguments(call.arguments)
            if _call_key(call.name, arguments) not in seen:
                fresh.append((call if call.id else call.model_copy(update={"id": new_call_id()}), arguments))
        if not fresh:
            return False
        plan.tool_llm_calls += 1
        results = [await self._run_step(plan, call.name, arguments) for call, arguments in fresh]
        plan.observations.extend(results)
        text = _text(content).strip()
        if plan.tools_in_template:
            plan.messages = [
                *plan.messages,
                {"role": "assistant", "content": text or None, "tool_calls": [
                    {"id": call.id, "type": "function",
                     "function": {"name": call.name, "arguments": json.dumps(arguments)}}
                    for call, arguments in fresh]},
                *({"role": "tool", "tool_call_id": call.id, "content": quote_data(r, "tool_result")}
                  for (call, _), r in zip(fresh, results, strict=True)),
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
        return True

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

    async def _has_documents(self) -> bool:
        """Whether the shared document collection holds any chunk; unknown (the memory service failed to
        say) counts as no: its search would fail the same way."""
        try:
            return await self.memory.document_count() > 0
        except Exception as exc:  # the chat goes on without the tool, as with a failing tool
            logger.warning("document count unavailable: %s", exc)
            return False

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
