"""PersonaAgent: persona-driven, bounded tool loop; produces the final prompt (or a client tool call).

No Ray and no HTTP here: memory, documents and the LLM come in through small protocols, so the serving
layer (chat), the alignment loop and the evaluation all run this same code.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any, Protocol

import jsonschema
from pydantic import BaseModel, ConfigDict, Field

from agent.llm import LLM, LLMError
from agent.prompts import ACTION_STEP, TOOL_CONTEXT
from agent.tools import ANSWER, BUILTIN_TOOLS, ToolSpec, ToolStep, client_tool_specs
from memory.documents import DocumentHit
from memory.records import MemoryHit, PersonaVersion
from personaagent.settings import AgentSettings

logger = logging.getLogger(__name__)


class AgentMemory(Protocol):
    """What the agent needs from the memory service (implemented over a Ray handle or in-process)."""

    async def ensure_persona(self, user_id: str) -> PersonaVersion: ...
    async def search(
        self, user_id: str, query: str, k: int, exclude_ids: tuple[int, ...] = ()
    ) -> list[MemoryHit] | None: ...
    async def get_profile_text(self, user_id: str) -> str | None: ...
    async def search_documents(self, query: str, k: int) -> list[DocumentHit]: ...


class AgentConfig(BaseModel):
    max_steps: int = Field(3, ge=0, description="tool steps before the agent must answer")
    memory_k: int = Field(4, ge=1)
    document_k: int = Field(3, ge=1)
    step_max_tokens: int = Field(96, ge=16)
    observation_chars: int = Field(1200, ge=100, description="per tool result, in the final prompt")
    trace_result_chars: int = Field(200, ge=20, description="per tool result, in the response trace")
    use_tools: bool = True
    use_persona: bool = True
    use_memory: bool = True
    # Retrieve the user's memories for the request before the loop: even a small model then answers
    # with the user's own history in view; the persona still decides any further searches.
    auto_memory_search: bool = True

    @classmethod
    def from_settings(cls, agent: AgentSettings) -> AgentConfig:
        """The agent's loop settings from the service settings (chat and alignment use the same)."""
        return cls(
            max_steps=agent.max_steps,
            memory_k=agent.memory_k,
            document_k=agent.document_k,
            step_max_tokens=agent.step_max_tokens,
        )


class AgentOptions(BaseModel):
    """Per-request switches (the `persona_agent_options` chat field): the paper's ablations, over HTTP."""

    model_config = ConfigDict(extra="forbid")
    persona: bool = Field(True, description="false: no persona system prompt")
    memory: bool = Field(True, description="false: no episodic or semantic memory (search, profile, priming)")
    tools: bool = Field(True, description="false: no action module (no tool loop, no memory priming)")

    def apply(self, config: AgentConfig) -> AgentConfig:
        return config.model_copy(
            update={
                "use_persona": config.use_persona and self.persona,
                "use_memory": config.use_memory and self.memory,
                "use_tools": config.use_tools and self.tools,
            }
        )


class ClientToolCall(BaseModel):
    id: str
    name: str
    arguments: dict[str, Any]


class AgentPlan(BaseModel):
    """What the agent decided: the final prompt to answer with, or a call of one of the client's tools."""

    user_id: str
    persona_version: int | None
    persona: str | None
    persona_tokens: int | None = None
    final_messages: list[dict[str, Any]]
    trace_final_prompt: bool = False
    client_tool_call: ClientToolCall | None = None
    steps: list[ToolStep] = Field(default_factory=list)
    fallbacks: int = 0
    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

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
            "fallbacks": self.fallbacks,
            "tool_llm_calls": self.llm_calls,
        } | ({"final_messages": self.final_messages} if self.trace_final_prompt else {})


def cache_salt_for(user_id: str) -> str:
    """vLLM prefix-cache salt: blocks are shared within one user's requests and never across users."""
    return f"user:{user_id}"


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def normalize_conversation(messages: Sequence[dict[str, Any]]) -> tuple[list[dict[str, str]], list[str]]:
    """Client messages -> plain system/user/assistant text turns, plus trailing client-tool observations.

    Small chat templates know nothing of tool roles, so assistant tool calls and tool results are
    rendered as text; tool results after the last user turn become observations of the current loop.
    """
    turns: list[dict[str, str]] = []
    trailing: list[str] = []
    for msg in messages:
        role = msg.get("role")
        if role == "tool":
            text = f"Result of tool call {msg.get('tool_call_id', '')}: {_text(msg.get('content'))}"
            trailing.append(text)
            continue
        if role == "assistant" and msg.get("tool_calls"):
            calls = "; ".join(
                f"{c.get('function', {}).get('name')}({c.get('function', {}).get('arguments', '')})"
                for c in msg["tool_calls"]
            )
            turns.append({"role": "assistant", "content": f"[called tools: {calls}]"})
            continue
        if trailing:
            turns.append({"role": "user", "content": "\n".join(trailing)})
            trailing = []
        if role in {"system", "developer"}:
            turns.append({"role": "system", "content": _text(msg.get("content"))})
        elif role in {"user", "assistant"}:
            turns.append({"role": role, "content": _text(msg.get("content"))})
    return turns, trailing


def last_user_text(messages: Sequence[dict[str, Any]]) -> str:
    for msg in reversed(messages):
        if msg.get("role") == "user":
            return _text(msg.get("content"))
    return ""


def forced_tool(tool_choice: Any, tools: Sequence[ToolSpec]) -> ToolSpec | None:
    """OpenAI `tool_choice={"type": "function", "function": {"name": ...}}` forces that tool first."""
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name")
        return next((t for t in tools if t.name == name and not t.builtin), None)
    return None


def _call_key(name: str, arguments: dict[str, Any]) -> str:
    """Identity of a tool call, to stop a loop that repeats itself."""
    return json.dumps([name, arguments], sort_keys=True)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class PersonaAgent:
    def __init__(self, llm: LLM, memory: AgentMemory, config: AgentConfig | None = None) -> None:
        self.llm = llm
        self.memory = memory
        self.config = config or AgentConfig()

    # -- the action schema -------------------------------------------------------------------------

    @staticmethod
    def action_schema(
        tools: Sequence[ToolSpec], strict: bool = True, allow_answer: bool = True
    ) -> dict[str, Any]:
        names = [t.name for t in tools] + ([ANSWER] if allow_answer else [])
        if not strict:
            return {
                "type": "object",
                "properties": {"action": {"enum": names}, "arguments": {"type": "object"}},
                "required": ["action"],
            }
        variants: list[dict[str, Any]] = [
            {
                "type": "object",
                "properties": {"action": {"const": t.name}, "arguments": t.parameters},
                "required": ["action", "arguments"],
            }
            for t in tools
        ]
        variants.append(
            {"type": "object", "properties": {"action": {"const": ANSWER}}, "required": ["action"]}
        )
        return {"anyOf": variants}

    # -- the loop ----------------------------------------------------------------------------------

    async def plan(
        self,
        user_id: str,
        messages: Sequence[dict[str, Any]],
        *,
        client_tools: list[dict[str, Any]] | None = None,
        exclude_ids: Sequence[int] = (),
        persona_override: str | None = None,
        priority: int = 0,
        tool_choice: Any = None,
        options: AgentOptions | None = None,
    ) -> AgentPlan:
        cfg = options.apply(self.config) if options is not None else self.config
        persona_version: int | None = None
        persona: str | None = None
        if cfg.use_persona:
            if persona_override is not None:
                persona = persona_override
            else:
                record = await self.memory.ensure_persona(user_id)
                persona, persona_version = record.text, record.version
        turns, observations = normalize_conversation(messages)
        prefix = ([{"role": "system", "content": persona}] if persona else []) + turns
        plan = AgentPlan(user_id=user_id, persona_version=persona_version, persona=persona, final_messages=[])

        tools = list(BUILTIN_TOOLS) + client_tool_specs(client_tools) if cfg.use_tools else []
        if not cfg.use_memory:
            tools = [t for t in tools if t.name not in {"search_memory", "get_profile"}]
        # A forced tool applies to the first decision of a turn, not to the follow-up carrying its result.
        forced = None if observations else forced_tool(tool_choice, tools)
        seen_calls: set[str] = set()
        request_text = last_user_text(messages)
        # The priming search is an action too: without the action module the agent answers unaided.
        priming = cfg.use_tools and cfg.use_memory and cfg.auto_memory_search
        if priming and request_text.strip() and not observations:
            arguments = {"query": request_text[:200]}
            seen_calls.add(_call_key("search_memory", arguments))
            await self._run_step(plan, observations, "search_memory", arguments, exclude_ids, auto=True)
        for n in range(cfg.max_steps if tools else 0):
            options = [forced] if (forced is not None and n == 0) else tools
            decision = await self._decide(
                plan, prefix, options, observations, priority, allow_answer=options is tools
            )
            if decision is None or decision[0] == ANSWER:
                break
            name, arguments = decision
            key = _call_key(name, arguments)
            if key in seen_calls:  # small models repeat themselves: a repeated call adds nothing
                break
            seen_calls.add(key)
            spec = next(t for t in tools if t.name == name)
            if not spec.builtin:
                plan.client_tool_call = ClientToolCall(
                    id=f"call_{len(seen_calls)}_{abs(hash(key)) % 10**10}", name=name, arguments=arguments
                )
                plan.final_messages = prefix
                return plan
            await self._run_step(plan, observations, name, arguments, exclude_ids)

        plan.final_messages = self._final_messages(prefix, observations)
        return plan

    async def _run_step(
        self,
        plan: AgentPlan,
        observations: list[str],
        name: str,
        arguments: dict[str, Any],
        exclude_ids: Sequence[int],
        auto: bool = False,
    ) -> None:
        """Run a built-in tool; record it in the trace (clipped) and as an observation for the prompt."""
        cfg = self.config
        step, full = await self._run_builtin(plan.user_id, name, arguments, exclude_ids)
        step.auto = auto
        step.result = _clip(full, cfg.trace_result_chars)
        plan.steps.append(step)
        label = name if auto else f"{name}({json.dumps(arguments)})"
        observations.append(f"{label}:\n{_clip(full, cfg.observation_chars)}")

    def _final_messages(self, prefix: list[dict[str, str]], observations: list[str]) -> list[dict[str, Any]]:
        if not observations:
            return [dict(m) for m in prefix]
        context = TOOL_CONTEXT.render(observations="\n\n".join(f'"""\n{o}\n"""' for o in observations))
        out = [dict(m) for m in prefix]
        # Tool results go after the byte-stable persona and the conversation: the persona prefix stays cached.
        for i in range(len(out) - 1, -1, -1):
            if out[i]["role"] == "user":
                out[i] = {"role": "user", "content": f"{out[i]['content']}\n\n{context}"}
                return out
        out.append({"role": "user", "content": context})
        return out

    async def _decide(
        self,
        plan: AgentPlan,
        prefix: list[dict[str, str]],
        tools: list[ToolSpec],
        observations: list[str],
        priority: int,
        allow_answer: bool = True,
    ) -> tuple[str, dict[str, Any]] | None:
        """One structured decision; a step that fails to parse is retried once, then the agent answers."""
        tool_lines = "\n".join(
            f"- {t.name}: {t.description}; arguments: {json.dumps(t.parameters.get('properties', {}))}"
            for t in tools
        )
        prompt = ACTION_STEP.render(
            tools=tool_lines,
            observations="\n".join(f"- {_clip(o, 300)}" for o in observations) or "- none yet",
        )
        messages = [*prefix, {"role": "user", "content": prompt}]
        for attempt in range(2):
            strict = attempt == 0
            try:
                result = await self.llm.chat(
                    messages,
                    max_tokens=self.config.step_max_tokens,
                    temperature=0.0,
                    json_schema=self.action_schema(tools, strict=strict, allow_answer=allow_answer),
                    cache_salt=cache_salt_for(plan.user_id),
                    priority=priority,
                )
            except LLMError as exc:
                if exc.status >= 500:
                    raise
                logger.info("action step rejected by the engine (%s); retrying with a looser schema", exc)
                plan.fallbacks += 1
                continue
            plan.llm_calls += 1
            plan.prompt_tokens += result.prompt_tokens
            plan.completion_tokens += result.completion_tokens
            parsed = self._parse_decision(result.text, tools)
            if parsed is not None:
                return parsed
            plan.fallbacks += 1
        return None

    @staticmethod
    def _parse_decision(text: str, tools: list[ToolSpec]) -> tuple[str, dict[str, Any]] | None:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, TypeError):
            return None
        if not isinstance(data, dict):
            return None
        action = data.get("action")
        if action == ANSWER:
            return ANSWER, {}
        spec = next((t for t in tools if t.name == action), None)
        arguments = data.get("arguments", {})
        if spec is None or not isinstance(arguments, dict):
            return None
        try:
            jsonschema.validate(arguments, spec.parameters)
        except (jsonschema.ValidationError, jsonschema.SchemaError):
            return None
        return spec.name, arguments

    async def _run_builtin(
        self, user_id: str, name: str, arguments: dict[str, Any], exclude_ids: Sequence[int]
    ) -> tuple[ToolStep, str]:
        cfg = self.config
        step = ToolStep(name=name, arguments=arguments)
        full = ""
        try:
            if name == "search_memory":
                hits = (
                    await self.memory.search(
                        user_id, str(arguments["query"]), cfg.memory_k, tuple(exclude_ids)
                    )
                    or []
                )
                step.memory_ids = [h.interaction.id for h in hits]
                full = (
                    "\n".join(
                        f"- {h.interaction.input.strip()}"
                        + (f" -> {h.interaction.output.strip()}" if h.interaction.output else "")
                        for h in hits
                    )
                    or "(no memories found)"
                )
            elif name == "get_profile":
                full = await self.memory.get_profile_text(user_id) or "(no profile yet)"
            elif name == "search_documents":
                docs = await self.memory.search_documents(str(arguments["query"]), cfg.document_k)
                full = "\n".join(f"- [{d.source}] {d.text.strip()}" for d in docs) or "(no documents found)"
        except Exception as exc:
            step.error = f"{type(exc).__name__}: {exc}"
            full = f"(tool failed: {step.error})"
        return step, full

    async def answer(
        self,
        plan: AgentPlan,
        *,
        max_tokens: int = 256,
        choice: list[str] | None = None,
        priority: int = 0,
        temperature: float = 0.0,
    ) -> str:
        """Non-streaming final answer (alignment and evaluation use this; chat streams through the engine)."""
        result = await self.llm.chat(
            plan.final_messages,
            max_tokens=max_tokens,
            temperature=temperature,
            choice=choice,
            cache_salt=cache_salt_for(plan.user_id),
            priority=priority,
        )
        plan.llm_calls += 1
        plan.prompt_tokens += result.prompt_tokens
        plan.completion_tokens += result.completion_tokens
        return result.text.strip()
