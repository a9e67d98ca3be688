"""OpenAI-style error responses for the HTTP layer."""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from personaagent.postgres import StoreUnavailable
from serving import vllm_compat

logger = logging.getLogger(__name__)

RETRY_AFTER_S = 1  # what a 503 for a transient outage asks a client to wait


class ReplicaUnavailable(RuntimeError):
    """A replica that a request needed went away while serving it (the replica, or its node, died): Ray
    Serve starts another and routes to the live ones, so a retry in a moment is answered. Raised by the
    port adapters (`serving.deployments.handles`) in place of Ray's own errors, so nothing here sees Ray."""


# Transient outages of a part the request needed: 503 with Retry-After, never a 500 with its traceback.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (StoreUnavailable, ReplicaUnavailable)


def transient_message(exc: BaseException) -> str:
    if isinstance(exc, StoreUnavailable):
        return "the database is unavailable; retry in a moment"
    return "a replica serving this request went away; retry in a moment"


_VALIDATOR_LOC = re.compile(r"function-(wrap|after|before|plain)\[")

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: int


class ErrorBody(BaseModel):
    """The OpenAI error shape every 4xx/5xx of this server has."""

    error: ErrorDetail


# Declared on every route in the OpenAPI document, so clients and fuzzers know the error statuses.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in {
        400: "invalid request", 401: "missing or invalid API key", 403: "the key may not act on this user",
        404: "unknown user, route or model", 413: "body or batch too large", 429: "server busy (Retry-After)",
        503: "engine, database or a replica unavailable (Retry-After)",
    }.items()
}  # fmt: skip


class APIError(Exception):
    """Raised anywhere in a route to return an OpenAI-style error."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, type_: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.type = type_ or _TYPE_BY_STATUS.get(
            status, "server_error" if status >= 500 else "invalid_request_error"
        )


def error_payload(
    status: int, message: str, *, param: str | None = None, type_: str | None = None
) -> dict[str, Any]:
    err = APIError(status, message, param=param, type_=type_)
    return {"error": {"message": err.message, "type": err.type, "param": err.param, "code": status}}


def error_response(
    status: int, message: str, *, param: str | None = None, type_: str | None = None
) -> JSONResponse:
    return JSONResponse(error_payload(status, message, param=param, type_=type_), status_code=status)


def internal_error_payload(exc: BaseException, where: str) -> dict[str, Any]:
    """A 500 body that names no exception text, actor or traceback: a request id the log carries too.
    A transient outage (`TRANSIENT_ERRORS`, e.g. inside a stream that had begun) is a 503 body instead."""
    if isinstance(exc, TRANSIENT_ERRORS):
        logger.warning("%s in %s: %s", type(exc).__name__, where, exc)
        return error_payload(503, transient_message(exc))
    request_id = uuid.uuid4().hex[:16]
    logger.error("internal error in %s, request %s", where, request_id, exc_info=exc)
    return error_payload(500, f"internal error (request id {request_id})", type_="server_error")


def from_engine_error(body: dict[str, Any]) -> JSONResponse:
    """vLLM's ErrorResponse carries the HTTP status in `code` and an exception name in `type`."""
    err = body["error"]
    status = int(err.get("code") or 500)
    return error_response(status, str(err.get("message", "")), param=err.get("param"))


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request body", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        return "request body is not valid JSON", None
    kind = str(first.get("type", ""))
    if tuple(first.get("loc", ())) == ("body",) and (kind == "missing" or kind.endswith("_type")):
        return "request body must be a JSON object", None
    # Pydantic names validator functions in a loc ("function-wrap[__log_extra_fields__()]"): not a field.
    loc = [str(p) for p in first.get("loc", ()) if p != "body" and not _VALIDATOR_LOC.match(str(p))]
    param = ".".join(loc) or None
    msg = str(first.get("msg", "invalid value"))
    return (f"{param}: {msg}" if param else msg), param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, param=exc.param, type_=exc.type)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return error_response(400, message, param=param)

    not_found = vllm_compat.load("VLLMNotFoundError")

    async def _vllm_client_error(_: Request, exc: Exception) -> JSONResponse:
        # vLLM's request model raises these from its validators (e.g. top_logprobs without logprobs).
        status = 404 if isinstance(exc, not_found) else 400
        return error_response(status, str(exc), param=getattr(exc, "parameter", None))

    for client_error in vllm_compat.client_error_types():
        app.add_exception_handler(client_error, _vllm_client_error)

    async def _transient(request: Request, exc: Exception) -> JSONResponse:
        # The cause (which database, which replica) goes to the log; the client learns only when to retry.
        logger.warning("%s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        response = error_response(503, transient_message(exc))
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
        return response

    for transient in TRANSIENT_ERRORS:
        app.add_exception_handler(transient, _transient)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404 and exc.detail == "Not Found":
            return error_response(404, f"unknown route: {request.method} {request.url.path}")
        if exc.status_code == 405:
            return error_response(405, f"method {request.method} not allowed on {request.url.path}")
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            internal_error_payload(exc, f"{request.method} {request.url.path}"), status_code=500
        )
