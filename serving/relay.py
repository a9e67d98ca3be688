"""The one relay from engine output (one dict, or SSE strings) to an HTTP response.

Plain chats pass through it as they are; personalized chats hand it `RelayHooks` that add the agent's
trace and write the answer back. `[DONE]` is always sent last by the relay itself, after the hooks' end
step, because a client closes the stream on `[DONE]` (the write-back must be done by then).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Protocol

from fastapi import Response
from fastapi.responses import JSONResponse, StreamingResponse

from serving.errors import error_response, from_engine_error, internal_error_payload

DONE_EVENT = "data: [DONE]"


class RelayHooks(Protocol):
    async def on_response(self, response: dict[str, Any]) -> None:
        """A whole (non-streamed) completion, before it is sent; may change it."""

    def on_event(self, data: dict[str, Any]) -> dict[str, Any] | None:
        """One streamed chunk's data, before it is sent: what to send instead, or None to send it as is."""

    async def on_stream_end(self) -> None:
        """After the last chunk, before `[DONE]`."""


async def relay_chat(items: AsyncIterator[dict[str, Any] | str], hooks: RelayHooks | None = None) -> Response:
    first = await anext(items, None)
    if first is None:
        return error_response(500, "engine returned no output", type_="server_error")
    if isinstance(first, dict):
        if "error" in first:
            return from_engine_error(first)
        if hooks is not None:
            await hooks.on_response(first)
        return JSONResponse(first)
    return StreamingResponse(_relay_stream(first, items, hooks), media_type="text/event-stream")


async def _relay_stream(
    first: str, items: AsyncIterator[dict[str, Any] | str], hooks: RelayHooks | None
) -> AsyncIterator[str]:
    try:
        chunk: dict[str, Any] | str = first
        while True:
            text = chunk if isinstance(chunk, str) else f"data: {json.dumps(chunk)}\n\n"
            yield _rewrite_events(text, hooks)
            next_chunk = await anext(items, None)
            if next_chunk is None:
                break
            chunk = next_chunk
        if hooks is not None:
            await hooks.on_stream_end()
    except Exception as exc:
        yield f"data: {json.dumps(internal_error_payload(exc, 'a streamed chat'))}\n\n"
    yield f"{DONE_EVENT}\n\n"


def _rewrite_events(text: str, hooks: RelayHooks | None) -> str:
    """`text` (one or more SSE events, as coalesced upstream) without `[DONE]`, each data event through
    the hooks; without hooks the events are not parsed."""
    out: list[str] = []
    for event in text.split("\n\n"):
        if not event or event == DONE_EVENT:
            continue
        if hooks is not None and event.startswith("data: "):
            changed = hooks.on_event(json.loads(event[6:]))
            if changed is not None:
                event = f"data: {json.dumps(changed)}"
        out.append(event)
    return "".join(e + "\n\n" for e in out)
