"""Chat completions answered by a user's PersonaAgent (requests that carry the OpenAI `user` field)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from agent.core import AgentOptions, AgentPlan, PersonaAgent, cache_salt_for, last_user_text
from memory.records import USER_ID_RE, InteractionIn
from serving.errors import APIError, from_engine_error

# Request fields that belong to the agent loop, not to the final generation.
_AGENT_ONLY_FIELDS = (
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "functions",
    "function_call",
    "persona_agent_options",
)


def check_user_id(user_id: Any) -> str:
    if not isinstance(user_id, str) or not USER_ID_RE.match(user_id):
        raise APIError(400, "user: 1-128 characters of [A-Za-z0-9._@-]", param="user")
    return user_id


def parse_agent_options(raw: Any) -> AgentOptions | None:
    if raw is None:
        return None
    try:
        return AgentOptions.model_validate(raw)
    except ValidationError as exc:
        detail = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors())
        raise APIError(400, f"persona_agent_options: {detail}", param="persona_agent_options") from exc


def tool_call_response(plan: AgentPlan, model: str, stream: bool) -> Response:
    """The model chose one of the client's tools: answer exactly as OpenAI does (`tool_calls`)."""
    assert plan.client_tool_call is not None
    call = plan.client_tool_call
    created = int(time.time())
    cid = f"chatcmpl-tool-{call.id}"
    tool_call = {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
    }
    trace = plan.trace()
    if not stream:
        return JSONResponse(
            {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": None, "tool_calls": [tool_call]},
                        "finish_reason": "tool_calls",
                    }
                ],
                "usage": {
                    "prompt_tokens": plan.prompt_tokens,
                    "completion_tokens": plan.completion_tokens,
                    "total_tokens": plan.prompt_tokens + plan.completion_tokens,
                },
                "persona_agent": trace,
            }
        )

    def chunk(delta: dict[str, Any], finish: str | None, extra: dict[str, Any] | None = None) -> str:
        body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **(extra or {})}  # fmt: skip
        return f"data: {json.dumps(body)}\n\n"

    async def events() -> AsyncIterator[str]:
        yield chunk(
            {"role": "assistant", "content": None, "tool_calls": [{"index": 0, **tool_call}]},
            None,
            {"persona_agent": trace},
        )
        yield chunk({}, "tool_calls")
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


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
        user_id = check_user_id(body.get("user"))
        tool_choice = body.get("tool_choice")
        options = parse_agent_options(body.get("persona_agent_options"))
        client_tools = None if tool_choice == "none" else body.get("tools")
        plan = await self.agent.plan(
            user_id, body["messages"], client_tools=client_tools, tool_choice=tool_choice, options=options
        )
        stream = bool(body.get("stream"))
        plan.persona_tokens = await self.persona_tokens(plan)
        if plan.client_tool_call is not None:
            return tool_call_response(plan, body["model"], stream)

        final = {k: v for k, v in body.items() if k not in _AGENT_ONLY_FIELDS}
        final["messages"] = plan.final_messages
        final["cache_salt"] = cache_salt_for(user_id)
        plan.trace_final_prompt = self.trace_final_prompt
        items = self.engine.chat(final)
        first = await anext(items, None)
        if first is None:
            raise APIError(500, "engine returned no output", type_="server_error")
        question = last_user_text(body["messages"])
        if isinstance(first, dict):
            if "error" in first:
                return from_engine_error(first)
            first["persona_agent"] = plan.trace()
            answer = (first["choices"][0]["message"].get("content") or "") if first.get("choices") else ""
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
        """Relay the engine's SSE; the first event carries `persona_agent`; the answer is written back."""
        parts: list[str] = []
        completion_id = ""
        injected = False

        def process(text: str) -> str:
            nonlocal injected, completion_id
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
                for choice in data.get("choices") or []:
                    parts.append((choice.get("delta") or {}).get("content") or "")
                if not injected:
                    data["persona_agent"] = plan.trace()
                    injected = True
                    event = f"data: {json.dumps(data)}"
                out.append(event)
            return "".join(e + "\n\n" for e in out)

        yield process(first)
        async for chunk in items:
            yield process(chunk) if isinstance(chunk, str) else f"data: {json.dumps(chunk)}\n\n"
        await self._record(user_id, question, "".join(parts), completion_id, plan)
        yield "data: [DONE]\n\n"
