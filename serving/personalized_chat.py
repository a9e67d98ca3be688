"""Chat completions answered by a user's PersonaAgent (requests that carry the OpenAI `user` field)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from agent.core import AgentOptions, AgentPlan, PersonaAgent, last_user_text
from memory.records import USER_ID_RE, InteractionIn
from serving.errors import APIError, from_engine_error


def check_user_id(user_id: Any) -> str:
    if not isinstance(user_id, str) or not USER_ID_RE.match(user_id):
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
        engine: Any,
        memory_handle: Any,
        write_back: bool,
        trace_final_prompt: bool = False,
    ) -> None:
        self.agent = agent
        self.trace_final_prompt = trace_final_prompt
        self.engine = engine  # EngineHandleBackend: chat() and count_chat_tokens()
        self.memory = memory_handle
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

    async def _record(
        self, user_id: str, question: str, answer: str, completion_id: str, plan: AgentPlan
    ) -> None:
        if not self.write_back or not question.strip():
            return
        item = InteractionIn(
            input=question,
            metadata={
                "completion_id": completion_id,
                "answer": answer,
                "persona_version": plan.persona_version,
            },
        )
        await self.memory.record_chat.remote(user_id, item)

    async def handle(self, body: dict[str, Any]) -> Response:
        """One personalized chat: the agent prepares the prompt (no LLM), then one generation answers."""
        user_id = check_user_id(body.get("user"))
        tool_choice = body.get("tool_choice")
        options = parse_agent_options(body.get("persona_agent_options"))
        client_tools = None if tool_choice == "none" else body.get("tools")
        plan = await self.agent.prepare(
            user_id, body["messages"], client_tools=client_tools, tool_choice=tool_choice, options=options
        )
        plan.persona_tokens = await self.persona_tokens(plan)
        plan.trace_final_prompt = self.trace_final_prompt
        items = self.agent.generate(plan, body)
        first = await anext(items, None)
        if first is None:
            raise APIError(500, "engine returned no output", type_="server_error")
        question = last_user_text(body["messages"])
        if isinstance(first, dict):
            if "error" in first:
                return from_engine_error(first)
            first["persona_agent"] = plan.trace()
            choice = first["choices"][0]
            if choice.get("finish_reason") != "tool_calls":
                answer = choice["message"].get("content") or ""
                await self._record(user_id, question, answer, first["id"], plan)
            return JSONResponse(first)
        return StreamingResponse(
            self._stream(first, items, plan, user_id, question), media_type="text/event-stream"
        )

    async def _stream(
        self,
        first: str,
        items: AsyncIterator[dict[str, Any] | str],
        plan: AgentPlan,
        user_id: str,
        question: str,
    ) -> AsyncIterator[str]:
        """Relay the agent's SSE: the first event carries `persona_agent`, the finishing one its final
        state (tool rounds run while streaming); the answer is written back before [DONE]."""
        parts: list[str] = []
        completion_id = ""
        injected = False
        called_client_tool = False

        def process(text: str) -> str:
            nonlocal injected, completion_id, called_client_tool
            out: list[str] = []
            for event in text.split("\n\n"):
                if event == "data: [DONE]":
                    continue  # sent after the write-back: a client closes the stream on [DONE]
                if not event.startswith("data: "):
                    if event:
                        out.append(event)
                    continue
                data = json.loads(event[6:])
                completion_id = completion_id or data.get("id", "")
                finished = False
                for choice in data.get("choices") or []:
                    parts.append((choice.get("delta") or {}).get("content") or "")
                    called_client_tool |= choice.get("finish_reason") == "tool_calls"
                    finished |= bool(choice.get("finish_reason"))
                if not injected or finished:
                    data["persona_agent"] = plan.trace()
                    injected = True
                    event = f"data: {json.dumps(data)}"
                out.append(event)
            return "".join(e + "\n\n" for e in out)

        yield process(first)
        async for chunk in items:
            yield process(chunk) if isinstance(chunk, str) else f"data: {json.dumps(chunk)}\n\n"
        if not called_client_tool:
            await self._record(user_id, question, "".join(parts), completion_id, plan)
        yield "data: [DONE]\n\n"
