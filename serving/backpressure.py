"""Admission for every HTTP request: key, body size, then a bounded number of requests in flight.

Written as plain ASGI rather than Starlette's `BaseHTTPMiddleware`, for two guarantees that middleware
cannot give: the in-flight slot is released in a `finally` around the whole app call, so it comes back on
every path (a response sent, a stream ended or broken, a client gone before its body was read), and a
body without `Content-Length` (chunked) is cut off at `server.max_body_bytes` while it is read, never
buffered whole first.

Beyond the bound a request gets 429 at once (OpenAI style, with `Retry-After`, which the openai client
retries by itself), not a queue: Ray Serve's own `max_queued_requests` answers 503 in plain text from the
proxy. One API key may hold at most `server.max_inflight_share_per_key` of the slots, so one tenant cannot
take them all.
"""

from __future__ import annotations

import math
from collections import Counter

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from personaagent.settings import ServerSettings
from serving.auth import Authenticator
from serving.errors import APIError, error_response

EXEMPT_PATHS = frozenset({"/health", "/metrics"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class InflightCounts:
    """Requests in flight on this replica, in all and per API key (shared with /metrics and tests)."""

    def __init__(self) -> None:
        self.total = 0
        self.by_key: Counter[str] = Counter()


class AdmissionMiddleware:
    def __init__(
        self, app: ASGIApp, authenticator: Authenticator, limits: ServerSettings, counts: InflightCounts
    ) -> None:
        self.app = app
        self.authenticator = authenticator
        self.max_body = limits.max_body_bytes
        self.limit = limits.max_inflight_requests
        self.per_key_limit = max(1, math.floor(self.limit * limits.max_inflight_share_per_key))
        self.retry_after_s = limits.retry_after_s
        self.counts = counts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        try:
            principal = self.authenticator.authenticate(request)
        except APIError as exc:
            await error_response(exc.status, exc.message)(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal

        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            too_big = f"request body of {declared} bytes exceeds the limit of {self.max_body} bytes"
            await error_response(413, too_big)(scope, receive, send)
            return
        if declared is None and scope["method"] in BODY_METHODS:
            body = await self._read_bounded(receive)
            if body is None:
                await error_response(413, f"request body exceeds the limit of {self.max_body} bytes")(
                    scope, receive, send
                )
                return
            receive = _replay(body, receive)

        if scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        key = principal.name if principal is not None else None
        busy = self._busy_message(key)
        if busy is not None:
            response = error_response(429, busy)
            response.headers["Retry-After"] = str(self.retry_after_s)
            await response(scope, receive, send)
            return
        self.counts.total += 1
        if key is not None:
            self.counts.by_key[key] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.counts.total -= 1
            if key is not None:
                self.counts.by_key[key] -= 1
                if self.counts.by_key[key] <= 0:
                    del self.counts.by_key[key]

    def _busy_message(self, key: str | None) -> str | None:
        wait = f"retry after {self.retry_after_s} s"
        if self.counts.total >= self.limit:
            return f"server busy: {self.limit} requests in flight on this replica; {wait}"
        if key is not None and self.counts.by_key[key] >= self.per_key_limit:
            return (
                f"this API key has {self.per_key_limit} requests in flight, its share of this replica "
                f"(server.max_inflight_share_per_key); {wait}"
            )
        return None

    async def _read_bounded(self, receive: Receive) -> bytes | None:
        """The whole body, or None as soon as it passes the limit (the rest is never read)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # client gone: the app sees an empty body
                return b"".join(chunks)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the app the body already read, then passes on later messages (disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
