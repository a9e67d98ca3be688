"""Bounded in-flight work per ingress replica: beyond the bound a request gets 429 at once, not a queue.

Ray Serve's own `max_queued_requests` answers 503 in plain text from the proxy; this answers first, with an
OpenAI-style 429 and `Retry-After`, which the openai client retries by itself. A streamed response holds
its slot until the stream ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import Request, Response

from serving.errors import error_response

EXEMPT_PATHS = frozenset({"/health", "/metrics"})


class InflightLimiter:
    def __init__(self, limit: int, retry_after_s: int) -> None:
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.inflight = 0

    async def __call__(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if request.url.path in EXEMPT_PATHS:
            return await call_next(request)
        if self.inflight >= self.limit:
            response = error_response(
                429,
                f"server busy: {self.limit} requests in flight on this replica; retry after {self.retry_after_s} s",
            )
            response.headers["Retry-After"] = str(self.retry_after_s)
            return response
        self.inflight += 1
        try:
            response = await call_next(request)
        except BaseException:
            self.inflight -= 1
            raise
        # Behind Starlette's middleware every response streams its body: the slot is held until it is sent.
        if hasattr(response, "body_iterator"):
            response.body_iterator = self._release_after(response.body_iterator)
        else:
            self.inflight -= 1
        return response

    async def _release_after(self, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        try:
            async for chunk in body:
                yield chunk
        finally:
            self.inflight -= 1
