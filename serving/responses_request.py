"""The Responses API request, and its translation into the chat body that the chat path answers.

Our own request model, not vLLM's `ResponsesRequest` (vllm.entrypoints.openai.responses.protocol, 0.32):
vLLM's carries engine fields a tenant must not set here (`cache_salt`, `priority`, `kv_transfer_params`,
`vllm_xargs`...), accepts hosted tools, `background` and `include` values that this server would have to
refuse anyway, and its `mode="before"` validators assume field types (the crash `serving.chat_request`
works around for chat). This model declares what is supported, types it for the OpenAPI document, and
names every field it refuses (`refusal`). Input items and tools are read one by one (`conversation_items`,
`function_tools`) so a refusal names the item: `input[3].type`, `tools[0].type`.

Conversation items are kept in one canonical form (the shapes of `openai.types.responses` items, each with
an id): that form is stored, listed by `/input_items`, and continued by `previous_response_id`.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from serving.errors import APIError

# Fields accepted only at their "off" value, each with why (the 400 names the field and says it).
REFUSED: dict[str, str] = {
    "background": "background responses are not supported",
    "conversation": "conversations are not supported; continue with previous_response_id",
    "prompt": "stored prompt templates are not supported",
    "max_tool_calls": "not supported",
    "top_logprobs": "logprobs are not supported on /v1/responses",
    "reasoning": "this server runs no reasoning model",
    "prompt_cache_retention": "not supported",
    "prompt_cache_options": "not supported",
    "context_management": "not supported",
}
SUPPORTED_ITEMS = "message, function_call, function_call_output"


class FunctionTool(BaseModel):
    """A client function tool, as the Responses API writes it."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class TextFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    type: Literal["text", "json_schema", "json_object"]
    name: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: TextFormat | None = None
    verbosity: None = Field(None, description="not supported: only null is accepted")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_obfuscation: bool | None = Field(None, description="accepted; no obfuscation field is ever sent")


class ResponsesRequest(BaseModel):
    """`POST /v1/responses`. Unknown fields are refused by name (a 400), as OpenAI does."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    input: str | list[dict[str, Any]] = Field(
        description=f"text, or items: {SUPPORTED_ITEMS} (text content parts only)"
    )
    instructions: str | None = Field(None, description="the system message; not carried to a continuation")
    previous_response_id: str | None = Field(None, description="continue a stored response's conversation")
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    text: TextConfig | None = None
    tools: list[dict[str, Any]] | None = Field(None, description="function tools only")
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    metadata: dict[str, str] | None = Field(None, description="up to 16 pairs; keys 64, values 512 chars")
    store: bool | None = Field(None, description="default true: kept for previous_response_id and GET")
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, description="the end user (deprecated by OpenAI): selects their agent")
    safety_identifier: str | None = Field(None, description="a stable end-user id: selects their agent")
    prompt_cache_key: str | None = Field(None, description="accepted; never selects a user")
    persona_agent_options: dict[str, Any] | None = Field(
        None, description="as on chat: the ablation switches"
    )
    truncation: Literal["disabled", "auto"] | None = Field(None, description="only `disabled`")
    include: list[str] | None = Field(None, description="no values are supported: only an empty list")
    service_tier: str | None = Field(None, description="only `auto` or `default`")
    # vLLM's sampling extensions, as vLLM's own /v1/responses accepts them.
    top_k: int | None = None
    min_p: float | None = Field(None, ge=0, le=1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, gt=0)
    seed: int | None = None
    stop: str | list[str] | None = None
    ignore_eos: bool | None = None
    # Refused unless null (see REFUSED).
    background: bool | None = None
    conversation: Any = None
    prompt: Any = None
    max_tool_calls: int | None = None
    top_logprobs: int | None = None
    reasoning: dict[str, Any] | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: dict[str, Any] | None = None
    context_management: Any = None

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None and (
            len(value) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in value.items())
        ):
            raise ValueError("at most 16 pairs, keys of at most 64 and values of at most 512 characters")
        return value


def refusal(request: ResponsesRequest) -> APIError | None:
    """The 400 for the first field this server does not support, or None."""
    for key in request.model_extra or {}:
        return APIError(400, f"{key}: unknown parameter", param=key)
    for field, why in REFUSED.items():
        value = getattr(request, field)
        # `reasoning: {"effort": null}` asks for nothing; so do false and 0 (what some clients send).
        off = (
            not any(v is not None for v in value.values())
            if isinstance(value, dict)
            else value in (None, False, 0)
        )
        if not off:
            return APIError(400, f"{field}: {why}", param=field)
    if request.include:
        return APIError(400, f"include: {request.include[0]!r} is not supported", param="include")
    if request.truncation == "auto":
        return APIError(400, "truncation: only `disabled` is supported", param="truncation")
    if request.service_tier not in (None, "auto", "default"):
        return APIError(400, "service_tier: only `auto` or `default`", param="service_tier")
    return None


# -- conversation items -----------------------------------------------------------------------------


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow")  # annotations, logprobs: what an output part carries back
    type: str
    text: str | None = None
    refusal: str | None = None


class _Message(BaseModel):
    # Items the SDKs send back carry what they received (status, phase...): output fields, not options.
    model_config = ConfigDict(extra="allow")
    type: Literal["message"] = "message"
    id: str | None = None
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[_Part]


class _FunctionCall(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["function_call"]
    id: str | None = None
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str


class _FunctionCallOutput(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["function_call_output"]
    id: str | None = None
    call_id: str = Field(min_length=1)
    output: str | list[_Part]


_ITEM_MODELS: dict[str, type[BaseModel]] = {
    "message": _Message,
    "function_call": _FunctionCall,
    "function_call_output": _FunctionCallOutput,
}
TEXT_PARTS = frozenset({"input_text", "output_text", "text", "refusal"})


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _validation_error(exc: ValidationError, where: str) -> APIError:
    first = exc.errors(include_url=False)[0]
    loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"])
    return APIError(400, f"{where}{loc}: {first['msg']}", param=f"{where}{loc}")


def _text_of(parts: str | list[_Part], where: str) -> str:
    if isinstance(parts, str):
        return parts
    texts = []
    for j, part in enumerate(parts):
        if part.type not in TEXT_PARTS:
            raise APIError(
                400,
                f"{where}[{j}].type: {part.type!r} content is not supported (text parts only)",
                param=f"{where}[{j}].type",
            )
        texts.append(part.text if part.text is not None else part.refusal or "")
    return "".join(texts)


def conversation_items(raw: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The request's `input` as canonical items (each with an id; text content as one text part)."""
    if isinstance(raw, str):
        return [_message_item("user", raw, None)]
    items = []
    for i, item in enumerate(raw):
        kind = item.get("type", "message")
        model = _ITEM_MODELS.get(kind) if isinstance(kind, str) else None
        if model is None:
            raise APIError(
                400,
                f"input[{i}].type: {kind!r} items are not supported (supported: {SUPPORTED_ITEMS})",
                param=f"input[{i}].type",
            )
        try:
            parsed = model.model_validate(item)
        except ValidationError as exc:
            raise _validation_error(exc, f"input[{i}]") from exc
        if isinstance(parsed, _Message):
            items.append(
                _message_item(parsed.role, _text_of(parsed.content, f"input[{i}].content"), parsed.id)
            )
        elif isinstance(parsed, _FunctionCall):
            items.append({"id": parsed.id or new_id("fc"), "type": "function_call", "call_id": parsed.call_id,
                          "name": parsed.name, "arguments": parsed.arguments, "status": "completed"})  # fmt: skip
        elif isinstance(parsed, _FunctionCallOutput):
            output = _text_of(parsed.output, f"input[{i}].output")
            items.append({"id": parsed.id or new_id("fco"), "type": "function_call_output",
                          "call_id": parsed.call_id, "output": output, "status": "completed"})  # fmt: skip
    return items


def _message_item(role: str, text: str, item_id: str | None) -> dict[str, Any]:
    if role == "assistant":
        part: dict[str, Any] = {"type": "output_text", "text": text, "annotations": []}
    else:
        part = {"type": "input_text", "text": text}
    return {"id": item_id or new_id("msg"), "type": "message", "role": role, "content": [part],
            "status": "completed"}  # fmt: skip


def chat_messages(instructions: str | None, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Canonical items as chat messages: function calls join the assistant turn before them (as chat writes
    them), call outputs are tool messages; `developer` is a system message (not every chat template knows
    the role)."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": instructions}] if instructions else []
    for item in items:
        if item["type"] == "message":
            role = "system" if item["role"] == "developer" else item["role"]
            text = "".join(part.get("text") or "" for part in item["content"])
            messages.append({"role": role, "content": text})
        elif item["type"] == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}  # fmt: skip
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif item["type"] == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]})
    return messages


# -- tools, tool choice, output format ------------------------------------------------------------------


def function_tools(raw: list[dict[str, Any]] | None) -> list[FunctionTool]:
    tools = []
    for i, tool in enumerate(raw or []):
        kind = tool.get("type")
        if kind != "function":
            raise APIError(
                400,
                f"tools[{i}].type: {kind!r} tools are not supported: this server runs no hosted tools "
                "(only `function` tools, which the client runs)",
                param=f"tools[{i}].type",
            )
        try:
            tools.append(FunctionTool.model_validate(tool))
        except ValidationError as exc:
            raise _validation_error(exc, f"tools[{i}]") from exc
    return tools


def chat_tool(tool: FunctionTool) -> dict[str, Any]:
    function = {"name": tool.name, "parameters": tool.parameters or {"type": "object", "properties": {}}}
    if tool.description is not None:
        function["description"] = tool.description
    if tool.strict is not None:
        function["strict"] = tool.strict
    return {"type": "function", "function": function}


def chat_tool_choice(choice: str | dict[str, Any] | None, tools: list[FunctionTool]) -> Any:
    """Responses `tool_choice` -> chat `tool_choice` (None: not given)."""
    if choice is None or isinstance(choice, str):
        return choice
    name = choice.get("name")
    if choice.get("type") != "function" or not isinstance(name, str):
        raise APIError(
            400,
            f"tool_choice: {choice.get('type')!r} is not supported (`none`, `auto`, `required`, or "
            '{"type": "function", "name": ...})',
            param="tool_choice",
        )
    if not any(t.name == name for t in tools):
        raise APIError(400, f"tool_choice: no function tool named {name!r} in tools", param="tool_choice")
    return {"type": "function", "function": {"name": name}}


def response_format(text: TextConfig | None) -> dict[str, Any] | None:
    fmt = text.format if text is not None else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    if not fmt.name or fmt.schema_ is None:
        raise APIError(400, "text.format: json_schema needs `name` and `schema`", param="text.format")
    schema: dict[str, Any] = {"name": fmt.name, "schema": fmt.schema_}
    if fmt.description is not None:
        schema["description"] = fmt.description
    if fmt.strict is not None:
        schema["strict"] = fmt.strict
    return {"type": "json_schema", "json_schema": schema}
