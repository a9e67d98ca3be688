"""`/v1/responses`: the Responses API, answered by the chat path itself.

A request is translated into a chat body (`serving.responses_request`) and answered exactly as a chat with
the same identity is: that user's agent (`PersonalizedChat.start`: persona, memory, built-in tools inside
the generation, the write-back) or the plain model; only the encoding of the result differs
(`serving.responses_output`). Stored responses (`store`, default true) live in the memory deployment's
database (`memory.responses`): `previous_response_id` continues one across restarts and replicas, and a
response is visible only to its API key and user.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from openai.types.responses import Response as ResponseObject
from pydantic import ValidationError

from memory.records import utcnow
from memory.responses import ResponseScope, StoredResponse
from personaagent.salts import CacheSalts
from personaagent.settings import Settings
from serving.auth import principal_of
from serving.backend import ChatBackend
from serving.chat_request import ChatCompletionRequest
from serving.errors import APIError, error_response, from_engine_error, internal_error_payload
from serving.identity import resolve_user
from serving.personalized_chat import AgentRelayHooks, PersonalizedChat
from serving.ports import MemoryPort
from serving.responses_output import ResponseEventWriter, ResponseHead, dump, from_completion, warm_up
from serving.responses_request import (
    ResponsesRequest,
    chat_messages,
    chat_tool,
    chat_tool_choice,
    conversation_items,
    function_tools,
    refusal,
    response_format,
)
from serving.vllm_compat import client_error_types

logger = logging.getLogger(__name__)

# Responses fields that pass to the chat body as they are.
_SAMPLING = ("temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
             "repetition_penalty", "seed", "stop", "ignore_eos")  # fmt: skip
# A chat field named in an error (vLLM's checks of the chat body) -> the Responses field the client sent.
_CHAT_TO_RESPONSES_PARAM = {
    "messages": "input",
    "max_tokens": "max_output_tokens",
    "response_format": "text.format",
}


def _scope_for_reading(request: Request) -> ResponseScope:
    """GET/DELETE by id: the caller's key; a user-scoped key sees only its user's responses."""
    principal = principal_of(request)
    if principal is None:
        return ResponseScope(api_key=None, any_user=True)
    return ResponseScope(api_key=principal.name, user_id=principal.user_id, any_user=principal.is_admin)


def _not_found(response_id: str, param: str | None = None) -> APIError:
    return APIError(404, f"No response with id '{response_id}' found.", param=param)


def _sse_data(text: str) -> list[dict[str, Any]]:
    """The data events of an (upstream-coalesced) chat SSE string, `[DONE]` left out."""
    return [
        json.loads(event[6:])
        for event in text.split("\n\n")
        if event.startswith("data: ") and event != "data: [DONE]"
    ]


class ResponsesAPI:
    def __init__(
        self,
        backend: ChatBackend,
        settings: Settings,
        salts: CacheSalts,
        memory: MemoryPort,
        personalized: PersonalizedChat | None,
    ) -> None:
        self.backend, self.settings, self.salts = backend, settings, salts
        self.memory, self.personalized = memory, personalized

    def _chat_body(self, request: ResponsesRequest, items: list[dict[str, Any]]) -> dict[str, Any]:
        server = self.settings.server
        messages = chat_messages(request.instructions, items)
        if not messages:
            raise APIError(400, "input: must contain at least one item", param="input")
        if len(messages) > server.max_messages:
            raise APIError(
                400,
                f"input: {len(messages)} messages with the continued conversation; at most {server.max_messages}",
                param="input",
            )
        for message in messages:
            if len(message.get("content") or "") > server.max_message_chars:
                raise APIError(
                    400, f"input: at most {server.max_message_chars} characters per item", param="input"
                )
        body: dict[str, Any] = {"model": self.settings.engine.served_model_name, "messages": messages}
        cap = server.max_tokens
        if request.max_output_tokens is not None:
            if cap is not None and request.max_output_tokens > cap:
                raise APIError(400, f"max_output_tokens: at most {cap}", param="max_output_tokens")
            body["max_tokens"] = request.max_output_tokens
        elif cap is not None:  # as on chat: a request that names no limit gets the cap
            body["max_tokens"] = min(cap, self.settings.engine.max_model_len)
        for field in _SAMPLING:
            if getattr(request, field) is not None:
                body[field] = getattr(request, field)
        tools = function_tools(request.tools)
        if tools:
            body["tools"] = [chat_tool(t) for t in tools]
        choice = chat_tool_choice(request.tool_choice, tools)
        if choice is not None:
            body["tool_choice"] = choice
        if request.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = request.parallel_tool_calls
        fmt = response_format(request.text)
        if fmt is not None:
            body["response_format"] = fmt
        if request.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    async def create(
        self, request: ResponsesRequest, raw_request: Request, check_model: Callable[[Any], None]
    ) -> Response:
        refused = refusal(request)
        if refused is not None:
            raise refused
        principal = principal_of(raw_request)
        user_id = resolve_user(
            principal, {"user": request.user, "safety_identifier": request.safety_identifier}
        )
        check_model(request.model)
        api_key = principal.name if principal is not None else None
        personalized = self.personalized if user_id is not None else None
        if request.persona_agent_options is not None and personalized is None:
            raise APIError(
                400,
                "persona_agent_options applies to personalized responses (set `user` or `safety_identifier`, "
                "or use a user-scoped API key)",
                param="user",
            )
        items = conversation_items(request.input)
        if request.previous_response_id is not None:
            previous = await self.memory.get_response(
                request.previous_response_id, ResponseScope(api_key=api_key, user_id=user_id)
            )
            if previous is None:
                raise _not_found(request.previous_response_id, "previous_response_id")
            items = previous.input_items + previous.response.get("output", []) + items
        body = self._chat_body(request, items)
        self._check_chat_body(body)
        head = ResponseHead(
            model=self.settings.engine.served_model_name, instructions=request.instructions,
            max_output_tokens=request.max_output_tokens, metadata=request.metadata,
            parallel_tool_calls=request.parallel_tool_calls is not False,
            previous_response_id=request.previous_response_id, temperature=request.temperature,
            top_p=request.top_p, tool_choice=request.tool_choice or "auto",
            tools=[t.model_dump(exclude_none=True) for t in function_tools(request.tools)],
            text=request.text.model_dump(by_alias=True, exclude_none=True) if request.text else None,
            store=request.store is not False, user=request.user, safety_identifier=request.safety_identifier,
            prompt_cache_key=request.prompt_cache_key,
        )  # fmt: skip
        hooks: AgentRelayHooks | None = None
        if personalized is not None:
            if request.persona_agent_options is not None:
                body["persona_agent_options"] = request.persona_agent_options
            output, hooks = await personalized.start(body | {"user": user_id})
        else:
            if principal is not None:  # plain requests share the prefix cache within their API key only
                body["cache_salt"] = self.salts.api_key(principal.name)
            output = self.backend.chat(body)
        record = StoredResponse(id=head.id, user_id=user_id, api_key=api_key, input_items=items, response={},
                                generation=hooks.plan.user_generation if hooks is not None else None)  # fmt: skip
        return await self._relay(output, hooks, head, record if head.store else None)

    def _check_chat_body(self, body: dict[str, Any]) -> None:
        """vLLM's own checks of the chat body (tool choice against tools, the format...), before the agent
        spends anything on a request the engine would refuse; named as the Responses fields."""
        try:
            ChatCompletionRequest.model_validate(copy.deepcopy(body))  # vLLM's validators rewrite fields
        except (ValidationError, RequestValidationError) as exc:
            first = exc.errors()[0]
            loc = [str(p) for p in first.get("loc", ()) if p != "body"]
            param = _CHAT_TO_RESPONSES_PARAM.get(loc[0], loc[0]) if loc else None
            raise APIError(
                400, f"{param or 'request'}: {first.get('msg', 'invalid value')}", param=param
            ) from exc
        except client_error_types() as exc:  # vLLM's own request checks: the client's mistake
            name = getattr(exc, "parameter", None)
            param = _CHAT_TO_RESPONSES_PARAM.get(name, name) if name else None
            raise APIError(400, str(exc), param=param) from exc

    async def _save(self, record: StoredResponse | None, response: ResponseObject) -> None:
        if record is None:
            return
        record.response = dump(response)
        record.created_at = utcnow()
        if not await self.memory.save_response(record):
            logger.info("response %s not stored: its user was deleted while it ran", record.id)

    async def _relay(
        self,
        output: AsyncIterator[dict[str, Any] | str],
        hooks: AgentRelayHooks | None,
        head: ResponseHead,
        record: StoredResponse | None,
    ) -> Response:
        first = await anext(output, None)
        if first is None:
            return error_response(500, "engine returned no output", type_="server_error")
        if isinstance(first, dict):
            if "error" in first:
                return from_engine_error(first)
            if hooks is not None:
                first["id"] = head.id  # written back under the id the client knows (feedback names it)
                await hooks.on_response(first)  # the trace, and the answer written back
            response = from_completion(head, first)
            await self._save(record, response)
            return JSONResponse(dump(response))
        return StreamingResponse(
            self._stream(first, output, hooks, head, record), media_type="text/event-stream"
        )

    async def _stream(
        self,
        first: str,
        output: AsyncIterator[dict[str, Any] | str],
        hooks: AgentRelayHooks | None,
        head: ResponseHead,
        record: StoredResponse | None,
    ) -> AsyncIterator[str]:
        writer = ResponseEventWriter(head)
        yield writer.start()
        try:
            item: dict[str, Any] | str | None = first
            while item is not None:
                events = []
                for data in _sse_data(item) if isinstance(item, str) else [item]:
                    if "error" in data:
                        events.append(writer.fail(str(data["error"].get("message", "engine error"))))
                        yield "".join(events)
                        return
                    changed = hooks.on_event(data | {"id": head.id}) if hooks is not None else None
                    events.append(writer.chunk(changed if changed is not None else data))
                yield "".join(events)
                item = await anext(output, None)
            if hooks is not None:
                await hooks.on_stream_end()  # written back before the client sees the end
            closing, response = writer.finish()
            await self._save(record, response)  # stored before the end: a continuation can follow at once
            yield closing + writer.complete(response)
        except Exception as exc:
            yield writer.fail(internal_error_payload(exc, "a streamed response")["error"]["message"])

    async def retrieve(self, response_id: str, request: Request) -> StoredResponse:
        stored = await self.memory.get_response(response_id, _scope_for_reading(request))
        if stored is None:
            raise _not_found(response_id)
        return stored


def build_responses_router(
    backend: ChatBackend,
    settings: Settings,
    salts: CacheSalts,
    memory: MemoryPort,
    personalized: PersonalizedChat | None,
    check_model: Callable[[Any], None],
) -> APIRouter:
    api = ResponsesAPI(backend, settings, salts, memory, personalized)
    warm_up(settings.engine.served_model_name)
    router = APIRouter()

    @router.post(
        "/v1/responses",
        summary="OpenAI Responses: the chat path (a user's agent, or the plain model), stored per user",
        responses={200: {"content": {"application/json": {}, "text/event-stream": {}},
                         "description": "a Response object, or its events as server-sent events"}},
    )  # fmt: skip
    async def create_response(request: ResponsesRequest, raw_request: Request) -> Response:
        return await api.create(request, raw_request, check_model)

    @router.get("/v1/responses/{response_id}", summary="A stored response (its API key and user only)")
    async def get_response(response_id: str, request: Request) -> JSONResponse:
        if request.query_params.get("stream") not in (None, "false"):
            raise APIError(
                400, "stream: replaying a stored response as events is not supported", param="stream"
            )
        for name in request.query_params:
            if name != "stream":  # `include`, `starting_after`...: nothing is ignored unsaid
                raise APIError(400, f"{name}: not supported", param=name)
        return JSONResponse((await api.retrieve(response_id, request)).response)

    @router.delete("/v1/responses/{response_id}", summary="Delete a stored response")
    async def delete_response(response_id: str, request: Request) -> JSONResponse:
        if not await memory.delete_response(response_id, _scope_for_reading(request)):
            raise _not_found(response_id)
        return JSONResponse({"id": response_id, "object": "response.deleted", "deleted": True})

    @router.get(
        "/v1/responses/{response_id}/input_items", summary="The input items a stored response answered"
    )
    async def list_input_items(
        response_id: str,
        request: Request,
        after: str | None = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        order: Literal["asc", "desc"] = "desc",
        include: Annotated[list[str] | None, Query()] = None,
    ) -> JSONResponse:
        if include:
            raise APIError(400, f"include: {include[0]!r} is not supported", param="include")
        items = (await api.retrieve(response_id, request)).input_items
        if order == "desc":
            items = items[::-1]
        if after is not None:
            ids = [item.get("id") for item in items]
            if after not in ids:
                raise APIError(400, f"after: no input item with id '{after}'", param="after")
            items = items[ids.index(after) + 1 :]
        page = items[:limit]
        return JSONResponse({
            "object": "list", "data": page, "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit,
        })  # fmt: skip

    return router
