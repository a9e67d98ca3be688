"""Chat output -> Responses API output: the Response object, and the streamed event sequence.

Built with the `openai` package's own models (`openai.types.responses`: `Response`, the output items and
every stream event): they are what the official SDK parses, so an object they accept is one the SDK
reads, and a field the SDK requires cannot be forgotten. vLLM's `ResponsesResponse` subclasses them with
vLLM-only required fields (`background`, `service_tier`, `truncation`... set by its own server), so ours
are the SDK's own. `persona_agent` (the agent's trace) rides along as an extra field, as on chat.
"""

from __future__ import annotations

import json
import time
from typing import Any

from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseContentPartAddedEvent,
    ResponseContentPartDoneEvent,
    ResponseCreatedEvent,
    ResponseFailedEvent,
    ResponseFunctionCallArgumentsDeltaEvent,
    ResponseFunctionCallArgumentsDoneEvent,
    ResponseIncompleteEvent,
    ResponseInProgressEvent,
    ResponseOutputItemAddedEvent,
    ResponseOutputItemDoneEvent,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
)
from pydantic import BaseModel, Field

from serving.responses_request import new_id


class ResponseHead(BaseModel):
    """What a Response object echoes of its request (everything but its output, status and usage)."""

    id: str = Field(default_factory=lambda: new_id("resp"))
    created_at: int = Field(default_factory=lambda: int(time.time()))
    model: str
    instructions: str | None = None
    max_output_tokens: int | None = None
    metadata: dict[str, str] | None = None
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    tool_choice: Any = "auto"
    tools: list[dict[str, Any]] = Field(default_factory=list)
    text: dict[str, Any] | None = None
    store: bool = True
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None

    def response(
        self,
        status: str,
        output: list[dict[str, Any]],
        usage: dict[str, Any] | None = None,
        *,
        incomplete: str | None = None,
        error: dict[str, Any] | None = None,
        trace: dict[str, Any] | None = None,
    ) -> Response:
        return Response.model_validate(
            self.model_dump()
            | {"object": "response", "status": status, "output": output, "truncation": "disabled",
               "background": False, "usage": responses_usage(usage) if usage is not None else None,
               "incomplete_details": {"reason": incomplete} if incomplete else None, "error": error,
               "text": self.text or {"format": {"type": "text"}}}
            | ({"persona_agent": trace} if trace is not None else {})
        )  # fmt: skip


def responses_usage(usage: dict[str, Any]) -> dict[str, Any]:
    """A chat `usage` (with vLLM's cache hits) as a Responses `usage`."""
    prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + completion}  # fmt: skip


def dump(response: Response) -> dict[str, Any]:
    return response.model_dump(mode="json", by_alias=True, exclude_unset=True)


def _message(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "message", "role": "assistant", "status": status,
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}  # fmt: skip


def _function_call(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "function_call", "call_id": call_id, "name": name,
            "arguments": arguments, "status": status}  # fmt: skip


def _ending(finish_reason: str | None) -> tuple[str, str | None]:
    """(status, incomplete reason) of a chat `finish_reason`."""
    return ("incomplete", "max_output_tokens") if finish_reason == "length" else ("completed", None)


def from_completion(head: ResponseHead, completion: dict[str, Any]) -> Response:
    """A whole chat completion (one choice) as a Response."""
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    status, incomplete = _ending(choice.get("finish_reason"))
    output = []
    calls = message.get("tool_calls") or []
    if message.get("content") or not calls:
        output.append(_message(new_id("msg"), message.get("content") or "", status))
    for call in calls:
        fn = call.get("function") or {}
        output.append(_function_call(new_id("fc"), call.get("id") or new_id("call"), fn.get("name", ""),
                                     fn.get("arguments") or "", "completed"))  # fmt: skip
    return head.response(
        status, output, completion.get("usage"), incomplete=incomplete, trace=completion.get("persona_agent")
    )


def sse(event: BaseModel) -> str:
    data = event.model_dump(mode="json", by_alias=True, exclude_unset=True)
    return f"event: {data['type']}\ndata: {json.dumps(data)}\n\n"


class ResponseEventWriter:
    """Chat completion chunks in, Responses stream events out (SSE text), in the order the SDK expects:
    created, in_progress; per output item added, its parts and deltas, done; completed (or incomplete,
    failed). Every event carries the next `sequence_number`."""

    def __init__(self, head: ResponseHead) -> None:
        self.head = head
        self.sequence = 0
        self.output: list[dict[str, Any]] = []
        self.text_index: int | None = None  # the output index of the message being streamed
        self.text: list[str] = []
        self.calls: dict[int, int] = {}  # chat tool-call index -> output index of its function_call item
        self.usage: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self.trace: dict[str, Any] | None = None

    def _event(self, model: type[BaseModel], **fields: Any) -> str:
        event = model.model_validate(fields | {"sequence_number": self.sequence})
        self.sequence += 1
        return sse(event)

    def start(self) -> str:
        response = self.head.response("in_progress", [])
        return self._event(ResponseCreatedEvent, type="response.created", response=response) + self._event(
            ResponseInProgressEvent, type="response.in_progress", response=response
        )

    def chunk(self, data: dict[str, Any]) -> str:
        """One chat chunk's events (often none: the role delta, the usage chunk)."""
        self.trace = data.get("persona_agent") or self.trace
        if data.get("usage"):
            self.usage = data["usage"]
        out: list[str] = []
        for choice in data.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                out.append(self._text_delta(delta["content"]))
            for call in delta.get("tool_calls") or []:
                out.append(self._call_delta(call))
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return "".join(out)

    def _open_text(self) -> str:
        out = self._close_calls()
        self.text_index = len(self.output)
        item = _message(new_id("msg"), "", "in_progress")
        item["content"] = []
        self.output.append(item)
        out += self._event(ResponseOutputItemAddedEvent, type="response.output_item.added",
                           output_index=self.text_index, item=item)  # fmt: skip
        return out + self._event(ResponseContentPartAddedEvent, type="response.content_part.added",
                                 item_id=item["id"], output_index=self.text_index, content_index=0,
                                 part={"type": "output_text", "text": "", "annotations": []})  # fmt: skip

    def _text_delta(self, piece: str) -> str:
        out = self._open_text() if self.text_index is None else ""
        self.text.append(piece)
        return out + self._event(ResponseTextDeltaEvent, type="response.output_text.delta",
                                 item_id=self.output[self.text_index]["id"], output_index=self.text_index,
                                 content_index=0, delta=piece, logprobs=[])  # fmt: skip

    def _call_delta(self, call: dict[str, Any]) -> str:
        out = ""
        fn = call.get("function") or {}
        index = self.calls.get(call.get("index", 0))
        if index is None:
            out += self._close_text()
            index = self.calls[call.get("index", 0)] = len(self.output)
            item = _function_call(new_id("fc"), call.get("id") or new_id("call"), fn.get("name") or "", "",
                                  "in_progress")  # fmt: skip
            self.output.append(item)
            out += self._event(ResponseOutputItemAddedEvent, type="response.output_item.added",
                               output_index=index, item=item)  # fmt: skip
        item = self.output[index]
        piece = fn.get("arguments") or ""
        if piece:
            item["arguments"] += piece
            out += self._event(ResponseFunctionCallArgumentsDeltaEvent,
                               type="response.function_call_arguments.delta", item_id=item["id"],
                               output_index=index, delta=piece)  # fmt: skip
        return out

    def _close_text(self) -> str:
        if self.text_index is None:
            return ""
        index, self.text_index = self.text_index, None
        text = "".join(self.text)
        self.text = []
        status, _ = _ending(self.finish_reason)
        item = self.output[index] = _message(self.output[index]["id"], text, status)
        part = item["content"][0]
        return (
            self._event(ResponseTextDoneEvent, type="response.output_text.done", item_id=item["id"],
                        output_index=index, content_index=0, text=text, logprobs=[])
            + self._event(ResponseContentPartDoneEvent, type="response.content_part.done", item_id=item["id"],
                          output_index=index, content_index=0, part=part)
            + self._event(ResponseOutputItemDoneEvent, type="response.output_item.done", output_index=index,
                          item=item)
        )  # fmt: skip

    def _close_calls(self) -> str:
        out = ""
        for index in self.calls.values():
            item = self.output[index]
            if item["status"] == "completed":
                continue
            item["status"] = "completed"
            out += self._event(ResponseFunctionCallArgumentsDoneEvent,
                               type="response.function_call_arguments.done", item_id=item["id"],
                               output_index=index, arguments=item["arguments"])  # fmt: skip
            out += self._event(ResponseOutputItemDoneEvent, type="response.output_item.done",
                               output_index=index, item=item)  # fmt: skip
        return out

    def finish(self) -> tuple[str, Response]:
        """Close what is open: the events so far, and the final Response (for the store, then `complete`)."""
        # An empty answer is still a message, as in a whole response.
        out = "" if self.output else self._open_text()
        out += self._close_text() + self._close_calls()
        status, incomplete = _ending(self.finish_reason)
        return out, self.head.response(
            status, self.output, self.usage, incomplete=incomplete, trace=self.trace
        )

    def complete(self, response: Response) -> str:
        if response.status == "incomplete":
            return self._event(ResponseIncompleteEvent, type="response.incomplete", response=response)
        return self._event(ResponseCompletedEvent, type="response.completed", response=response)

    def fail(self, message: str) -> str:
        """The stream ends in error: `response.failed`, with what was streamed until then."""
        response = self.head.response(
            "failed", self.output, self.usage, error={"code": "server_error", "message": message},
            trace=self.trace,
        )  # fmt: skip
        return self._event(ResponseFailedEvent, type="response.failed", response=response)


def warm_up(model: str) -> None:
    """Run every event kind once: pydantic builds the `openai` models' validators on first use (about
    100 ms on one CPU core), which would otherwise fall on the first user's streamed response."""
    writer = ResponseEventWriter(ResponseHead(model=model))
    writer.start()
    writer.chunk({"choices": [{"index": 0, "delta": {"content": "a"}}]})
    call = {"index": 0, "id": "call_0", "function": {"name": "f", "arguments": "{}"}}
    writer.chunk({"choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": "length"}]})
    _, response = writer.finish()
    writer.complete(response)
    writer.complete(response.model_copy(update={"status": "completed"}))
    writer.fail("warm-up")
    from_completion(writer.head, {"choices": [{"message": {"content": "a"}, "finish_reason": "stop"}]})
