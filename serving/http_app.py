"""The OpenAI-compatible FastAPI application (no Ray here: it talks to a `ChatBackend`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from personaagent.salts import CacheSalts
from personaagent.settings import Settings
from serving.alignment_routes import build_alignment_router
from serving.auth import Authenticator, principal_of, require_admin, require_user
from serving.backend import ChatBackend
from serving.backpressure import AdmissionMiddleware, InflightCounts
from serving.chat_request import ChatCompletionRequest
from serving.errors import (
    ERROR_RESPONSES,
    APIError,
    error_response,
    install_error_handlers,
)
from serving.personalized_chat import PersonalizedChat
from serving.ports import AlignmentPort, MemoryPort
from serving.relay import relay_chat
from serving.user_routes import build_user_router


class HTTPMetrics:
    """Request counts and latencies of this ingress replica (its own registry: no global state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "personaagent_http_requests_total",
            "HTTP requests by route and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "personaagent_http_request_duration_seconds",
            "HTTP request latency (until headers for streamed responses).",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )

    def text(self) -> str:
        return generate_latest(self.registry).decode()


def content_chars(content: Any) -> int:
    """Characters of a message's content: a string, or OpenAI content parts (their text)."""
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(len(str(part.get("text", ""))) for part in content if isinstance(part, dict))
    return 0


def _route_label(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", "unmatched")


def build_http_app(
    backend: ChatBackend,
    settings: Settings,
    salts: CacheSalts,
    memory: MemoryPort | None = None,
    personalized: PersonalizedChat | None = None,
    alignment: AlignmentPort | None = None,
) -> FastAPI:
    def scope_user_routes(request: Request) -> None:
        """Routes under /v1/users/{user_id}: a user-scoped key reaches only its own user."""
        if "user_id" in request.path_params:
            require_user(request, request.path_params["user_id"])

    app = FastAPI(
        title="PersonaAgent Serve",
        version="0.1.0",
        description="OpenAI-compatible endpoint serving a personalized agent per user.",
        dependencies=[Depends(scope_user_routes)],
        responses=ERROR_RESPONSES,
    )
    metrics = HTTPMetrics()
    app.state.metrics = metrics
    app.state.inflight = InflightCounts()
    install_error_handlers(app)
    # Inside the metrics middleware below (added later, so outermost): 401/413/429 are counted too.
    app.add_middleware(
        AdmissionMiddleware,
        authenticator=Authenticator(settings.auth),
        limits=settings.server,
        counts=app.state.inflight,
    )

    @app.middleware("http")
    async def http_metrics(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = _route_label(request)
        metrics.requests.labels(request.method, route, str(response.status_code)).inc()
        metrics.latency.labels(request.method, route).observe(time.perf_counter() - started)
        return response

    @app.get("/health", summary="Liveness and readiness: 200 when the engine answers")
    async def health() -> JSONResponse:
        try:
            # Bounded: a probe must answer even while the engine replica is still starting.
            await asyncio.wait_for(backend.check_health(), timeout=settings.server.health_timeout_s)
        except Exception as exc:
            return error_response(503, f"engine unhealthy: {type(exc).__name__}")
        return JSONResponse({"status": "ok"})

    @app.get(
        "/metrics",
        summary="Prometheus metrics: HTTP layer and vLLM engine",
        response_class=PlainTextResponse,
    )
    async def prometheus_metrics() -> Response:
        engine_text = await backend.metrics_text()
        alignment_text = await alignment.metrics_text() if alignment is not None else ""
        return Response(metrics.text() + alignment_text + engine_text, media_type="text/plain; version=0.0.4")

    @app.get("/v1/models", summary="List served models")
    async def list_models() -> JSONResponse:
        return JSONResponse(await backend.list_models())

    @app.post(
        "/v1/chat/completions",
        summary="OpenAI chat completions (vLLM semantics)",
        responses={200: {"content": {"application/json": {}, "text/event-stream": {}},
                         "description": "a chat completion, or its chunks as server-sent events"}},
    )  # fmt: skip
    async def chat_completions(request: ChatCompletionRequest, raw_request: Request) -> Response:
        if not request.messages:
            raise APIError(400, "messages: must contain at least one message", param="messages")
        if len(request.messages) > settings.server.max_messages:
            raise APIError(
                400,
                f"messages: at most {settings.server.max_messages} messages per request",
                param="messages",
            )
        for n, message in enumerate(request.messages):
            # vLLM's request model also accepts non-dict message types (e.g. Harmony messages).
            content = (
                message.get("content") if isinstance(message, dict) else getattr(message, "content", None)
            )
            if content_chars(content) > settings.server.max_message_chars:
                raise APIError(
                    400,
                    f"messages[{n}].content: at most {settings.server.max_message_chars} characters",
                    param=f"messages.{n}.content",
                )
        cap = settings.server.max_tokens
        for field in ("max_tokens", "max_completion_tokens"):
            value = getattr(request, field, None)
            if cap is not None and value is not None and value > cap:
                raise APIError(400, f"{field}: at most {cap}", param=field)
        if request.n is not None and request.n > settings.server.max_n:
            raise APIError(400, f"n: at most {settings.server.max_n} choices per request", param="n")
        # Forward the client's JSON as sent: vLLM's request validators rewrite fields (response_format ->
        # structured_outputs), so a dump of the validated model would not validate the same way again.
        body = await raw_request.json()
        if cap is not None and request.max_tokens is None and request.max_completion_tokens is None:
            # The cap bounds every request: one that names no limit gets the cap, not the rest of the
            # context. Never above the context itself, which vLLM refuses as a max_tokens.
            body["max_tokens"] = min(cap, settings.engine.max_model_len)
        if request.priority < 0:
            # vLLM runs lower values first: only an admin may put a request ahead of everyone's chat.
            require_admin(raw_request, "priority: values below 0 need an admin API key", param="priority")
        if request.user is not None:
            require_user(raw_request, request.user)
        if "persona_agent_options" in body and (request.user is None or personalized is None):
            raise APIError(
                400, "persona_agent_options applies to personalized chats (set `user`)", param="user"
            )
        if request.user is not None and personalized is not None:
            model = body.get("model")
            if model and model != settings.engine.served_model_name:
                # Answer as vLLM would, before the agent spends LLM calls on a request that cannot finish.
                raise APIError(404, f"The model `{model}` does not exist.", param="model")
            return await personalized.handle(body)
        # A client never picks its cache salt: a guessed salt would share (and, through cached_tokens, reveal)
        # another tenant's prompt. Plain requests share the cache within their API key only.
        principal = principal_of(raw_request)
        body.pop("cache_salt", None)
        if principal is not None:
            body["cache_salt"] = salts.api_key(principal.name)
        return await relay_chat(backend.chat(body))

    if memory is not None:
        app.include_router(build_user_router(memory, settings, alignment))
        if alignment is not None:
            app.include_router(build_alignment_router(memory, alignment, settings))

        @app.post("/v1/documents/reload", summary="Reload the operator document collection from the database")
        async def reload_documents(request: Request) -> JSONResponse:
            require_admin(request)
            return JSONResponse({"chunks": await memory.reload_documents()})

    return app
