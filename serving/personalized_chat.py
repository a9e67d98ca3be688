"""Chat completions answered by a user's PersonaAgent (requests that carry the OpenAI `user` field)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import Response
from pydantic import ValidationError

from agent.core import AgentOptions, AgentPlan, PersonaAgent, last_user_text
from memory.records import InteractionIn, is_valid_user_id, strip_nul
from serving.errors import APIError
from serving.ports import MemoryPort, TokenCounter
from serving.relay import relay_chat


def check_user_id(user_id: Any) -> str:
    if not is_valid_user_id(user_id):
        raise APIError(400, "user: 1-128 characters of [A-Za-z0-9._@+-]", param="user")
    return user_id


def parse_agent_options(raw: Any) -> AgentOptions | None:
    if raw is None:
        return None
    try:
        return AgentOptions.model_validate(raw)
    except ValidationError as exc:
        detail = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors())
        raise APIError(400, f"persona_agent_options: {detail}", param="persona_agent_options") from exc


class PersonalizedChat:
    def __init__(
        self,
        agent: PersonaAgent,
        engine: TokenCounter,
        memory: MemoryPort,
        write_back: bool,
        trace_final_prompt: bool = False,
    ) -> None:
        self.agent = agent
        self.trace_final_prompt = trace_final_prompt
        self.engine = engine
        self.memory = memory
        self.write_back = write_back
        self._persona_tokens: dict[tuple[str, int | None], int] = {}

    async def persona_tokens(self, plan: AgentPlan) -> int | None:
        """Token length of the persona system turn (cached per user and version)."""
        if plan.persona is None:
            return None
        key = (plan.user_id, plan.persona_version)
        if key not in self._persona_tokens:
            if len(self._persona_tokens) > 10_000:
                self._persona_tokens.clear()
            persona_turn = [{"role": "system", "content": plan.persona}]
            self._persona_tokens[key] = await self.engine.count_chat_tokens(persona_turn)
        return self._persona_tokens[key]

    async def record(
        self, user_id: str, question: str, answer: str, completion_id: str, plan: AgentPlan, choice: int = 0
    ) -> None:
        """Write one choice's answer back (each of `n` choices is an interaction of its own). A NUL in the
        question is dropped from what is stored: the chat was answered, and no text column holds one."""
        question = strip_nul(question)
        if not self.write_back or not question.strip():
            return
        item = InteractionIn(
            input=question,
            metadata={
                "completion_id": completion_id,
                "answer": answer,
                "persona_version": plan.persona_version,
            }
            | ({"choice": choice} if choice else {}),
        )
        await self.memory.record_chat(user_id, item, plan.user_generation)

    async def handle(self, body: dict[str, Any]) -> Response:
        """One personalized chat, relayed as a chat completion."""
        items, hooks = await self.start(body)
        return await relay_chat(items, hooks)

    async def start(
        self, body: dict[str, Any]
    ) -> tuple[AsyncIterator[dict[str, Any] | str], AgentRelayHooks]:
        """One personalized chat: the agent prepares the prompt (no LLM), then one generation answers. Its
        engine-shaped output and the hooks (trace, write-back) that any relay of it runs: the chat relay,
        or the Responses API's (`serving.responses`)."""
        user_id = check_user_id(body.get("user"))
        tool_choice = body.get("tool_choice")
        options = parse_agent_options(body.get("persona_agent_options"))
        client_tools = None if tool_choice == "none" else body.get("tools")
        plan = await self.agent.prepare(
            user_id, body["messages"], client_tools=client_tools, tool_choice=tool_choice, options=options
        )
        plan.persona_tokens = await self.persona_tokens(plan)
        plan.trace_final_prompt = self.trace_final_prompt
        hooks = AgentRelayHooks(self, plan, user_id, last_user_text(body["messages"]))
        return self.agent.generate(plan, body), hooks


class AgentRelayHooks:
    """The relay hooks of one personalized chat: the trace goes on the response (on the first streamed
    chunk, and again on each finishing one, since tool rounds run while streaming); each choice's answer is
    written back on its own, unless the model handed that choice's tool call to the client."""

    def __init__(self, chat: PersonalizedChat, plan: AgentPlan, user_id: str, question: str) -> None:
        self.chat, self.plan, self.user_id, self.question = chat, plan, user_id, question
        self.parts: dict[int, list[str]] = {}
        self.finish: dict[int, str] = {}
        self.completion_id = ""
        self.traced = False

    async def on_response(self, response: dict[str, Any]) -> None:
        response["persona_agent"] = self.plan.trace()
        for choice in response["choices"]:
            if choice.get("finish_reason") != "tool_calls":
                answer = choice["message"].get("content") or ""
                await self.chat.record(
                    self.user_id, self.question, answer, response["id"], self.plan, choice.get("index", 0)
                )

    def on_event(self, data: dict[str, Any]) -> dict[str, Any] | None:
        self.completion_id = self.completion_id or data.get("id", "")
        finished = False
        for choice in data.get("choices") or []:
            index = choice.get("index", 0)
            self.parts.setdefault(index, []).append((choice.get("delta") or {}).get("content") or "")
            if choice.get("finish_reason"):
                self.finish[index] = choice["finish_reason"]
                finished = True
        if self.traced and not finished:
            return None
        self.traced = True
        return data | {"persona_agent": self.plan.trace()}

    async def on_stream_end(self) -> None:
        for index, parts in sorted(self.parts.items()):
            if self.finish.get(index) != "tool_calls":
                answer = "".join(parts)
                await self.chat.record(
                    self.user_id, self.question, answer, self.completion_id, self.plan, index
                )
