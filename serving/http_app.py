"""The OpenAI-compatible FastAPI application (no Ray here: it talks to a `ChatBackend`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from memory.embedder import EmbeddingRefused
from personaagent.salts import CacheSalts
from personaagent.settings import Settings
from serving.alignment_routes import build_alignment_router
from serving.auth import Authenticator, principal_of, require_admin, require_user
from serving.backend import ChatBackend
from serving.backpressure import AdmissionMiddleware, InflightCounts
from serving.chat_request import ChatCompletionRequest
from serving.completions import CompletionRequest, check_completion_limits
from serving.embeddings import EmbeddingRequest, embedding_response, request_inputs
from serving.errors import (
    ERROR_RESPONSES,
    APIError,
    error_response,
    install_error_handlers,
)
from serving.identity import resolve_user
from serving.metrics import HTTPMetrics, LocalMetrics, MetricsSource, merge_replica_metrics
from serving.personalized_chat import PersonalizedChat
from serving.ports import AlignmentPort, CompletionBackend, MemoryPort
from serving.relay import relay_chat
from serving.responses import build_responses_router
from serving.user_routes import build_user_router


def content_chars(content: Any) -> int:
    """Characters of a message's content: a string, or OpenAI content parts (their text)."""
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(len(str(part.get("text", ""))) for part in content if isinstance(part, dict))
    return 0


def embedding_model_card(settings: Settings, created: int) -> dict[str, Any]:
    """The embedding model's `/v1/models` entry, in the shape of vLLM's model cards."""
    name = settings.embeddings.served_model_name
    return {"id": name, "object": "model", "created": created, "owned_by": "personaagent", "root": name,
            "parent": None, "permission": []}  # fmt: skip


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
    completions: CompletionBackend | None = None,
    http_metrics: HTTPMetrics | None = None,
    metrics_source: MetricsSource | None = None,
) -> FastAPI:
    """The app over its ports. `completions` adds `/v1/completions`; `memory` the user, document and
    `/v1/embeddings` routes; `metrics_source` is where `/metrics` reads every replica's metrics (default:
    this process's own, `serving.metrics.LocalMetrics`)."""

    def scope_user_routes(request: Request) -> None:
        """Routes under /v1/users/{user_id}: a user-scoped key reaches only its own user."""
        if "user_id" in request.path_params:
            require_user(request, request.path_params["user_id"])

    started_at = int(time.time())
    app = FastAPI(
        title="PersonaAgent Serve",
        version="0.1.0",
        description="OpenAI-compatible endpoint serving a personalized agent per user.",
        dependencies=[Depends(scope_user_routes)],
        responses=ERROR_RESPONSES,
    )
    metrics = http_metrics or HTTPMetrics()
    app.state.metrics = metrics
    metrics_source = metrics_source or LocalMetrics(metrics, backend, alignment)
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
    async def observe_http(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        elapsed = time.perf_counter() - started
        route = _route_label(request)
        metrics.requests.labels(request.method, route, str(response.status_code)).inc()
        metrics.latency.labels(request.method, route).observe(elapsed)
        if response.status_code == 200 and response.headers.get("content-type", "").startswith(
            "text/event-stream"
        ):
            # A stream's headers leave with its first event (the relay waits for it), which carries the
            # first token: a route that answers with a user's agent sets `request.state.personalized`.
            personalized_label = "true" if getattr(request.state, "personalized", False) else "false"
            metrics.first_token.labels(route, personalized_label).observe(elapsed)
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
        summary="Prometheus metrics of every replica (ingress HTTP, vLLM engines, memory, alignment), each "
        "series labelled with its deployment and replica",
        response_class=PlainTextResponse,
    )
    async def prometheus_metrics() -> Response:
        text = merge_replica_metrics(await metrics_source.collect())
        return Response(text, media_type=CONTENT_TYPE_PLAIN_0_0_4)

    @app.get("/v1/models", summary="List served models (the engine's, and the embedding model)")
    async def list_models() -> JSONResponse:
        models = await backend.list_models()
        if memory is not None:
            models["data"] = [*models.get("data", []), embedding_model_card(settings, started_at)]
        return JSONResponse(models)

    def check_model(model: Any) -> None:
        if model and model != settings.engine.served_model_name:
            # Answer as vLLM would, before the agent spends LLM calls on a request that cannot finish.
            raise APIError(404, f"The model `{model}` does not exist.", param="model")

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
        principal = principal_of(raw_request)
        user_id = resolve_user(principal, body)
        for field in ("safety_identifier", "prompt_cache_key"):  # read here; the engine has no use for them
            body.pop(field, None)
        if "persona_agent_options" in body and (user_id is None or personalized is None):
            raise APIError(
                400,
                "persona_agent_options applies to personalized chats (set `user` or `safety_identifier`, or "
                "use a user-scoped API key)",
                param="user",
            )
        if user_id is not None and personalized is not None:
            check_model(body.get("model"))
            raw_request.state.personalized = True  # the time-to-first-token metric's label
            return await personalized.handle(body | {"user": user_id})
        # A client never picks its cache salt: a guessed salt would share (and, through cached_tokens, reveal)
        # another tenant's prompt. Plain requests share the cache within their API key only.
        body.pop("cache_salt", None)
        if principal is not None:
            body["cache_salt"] = salts.api_key(principal.name)
        return await relay_chat(backend.chat(body))

    if completions is not None:

        @app.post(
            "/v1/completions",
            summary="OpenAI (legacy) completions through vLLM's own serving class; never personalized",
            responses={200: {"content": {"application/json": {}, "text/event-stream": {}},
                             "description": "a completion, or its chunks as server-sent events"}},
        )  # fmt: skip
        async def create_completion(request: CompletionRequest, raw_request: Request) -> Response:
            body = await raw_request.json()  # as sent: vLLM validates it again (see the chat route)
            check_completion_limits(request, body, settings)
            if request.priority < 0:
                require_admin(raw_request, "priority: values below 0 need an admin API key", param="priority")
            principal = principal_of(raw_request)
            # `user` and `safety_identifier` are checked as on chat (a user-scoped key may not name another
            # user) but select no agent: a completion is the plain model, salted within its API key.
            resolve_user(principal, body)
            for field in ("safety_identifier", "prompt_cache_key", "cache_salt"):
                body.pop(field, None)
            if principal is not None:
                body["cache_salt"] = salts.api_key(principal.name)
            return await relay_chat(completions.complete(body))

    if memory is not None:

        @app.post(
            "/v1/embeddings",
            summary="OpenAI embeddings from the memory encoder (all-MiniLM-L6-v2, 384 dimensions)",
        )
        async def create_embeddings(request: EmbeddingRequest, raw_request: Request) -> JSONResponse:
            limits = settings.embeddings
            if request.model != limits.served_model_name:
                raise APIError(404, f"The model `{request.model}` does not exist.", param="model")
            inputs = request_inputs(request, limits)
            resolve_user(principal_of(raw_request), {"user": request.user})
            result = await memory.embed(inputs)
            if isinstance(result, EmbeddingRefused):
                raise APIError(400, result.message, param="input")
            return JSONResponse(embedding_response(result, request.encoding_format, request.model))

        app.include_router(
            build_responses_router(backend, settings, salts, memory, personalized, check_model)
        )
        app.include_router(build_user_router(memory, settings, alignment))
        if alignment is not None:
            app.include_router(build_alignment_router(memory, alignment, settings))

        @app.post("/v1/documents/reload", summary="Reload the operator document collection from the database")
        async def reload_documents(request: Request) -> JSONResponse:
            require_admin(request)
            return JSONResponse({"chunks": await memory.reload_documents()})

    return app
