"""`POST /v1/completions`: vLLM's own request model and serving class, behind the same rules as chat.

The route (serving/http_app.py) checks the limits here, salts the request like a plain chat (within its
API key), and hands the client's JSON to `EngineService.complete`, which runs vLLM's
`OpenAIServingCompletion` (prompt text or token ids, `n`, `stream`, `logprobs`, `echo`, `stop`, usage,
errors: vLLM's semantics, no copy of them here).
"""

from __future__ import annotations

from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, model_validator
from pydantic_core.core_schema import ValidatorFunctionWrapHandler

from personaagent.settings import Settings
from serving import vllm_compat
from serving.chat_request import SHAPE_ERRORS, field_errors
from serving.errors import APIError

VLLMCompletionRequest = vllm_compat.load("CompletionRequest")


class CompletionRequest(VLLMCompletionRequest):
    """vLLM's request model whose validation raises RequestValidationError (a 400), never TypeError (the
    same wrap as `serving.chat_request.ChatCompletionRequest`, for the same `mode="before"` validators)."""

    @model_validator(mode="wrap")
    @classmethod
    def _shape_errors_are_validation_errors(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(data)
        except SHAPE_ERRORS as exc:
            raise RequestValidationError(field_errors(cls, data)) from exc  # type: ignore[arg-type]


class CompletionEngineRequest(BaseModel):
    """A completion body on its way to an engine replica. Ray Serve LLM's PrefixCacheAffinityRouter reads a
    `.prompt` attribute (it tries `.messages` first, so this wrapper has none)."""

    body: dict[str, Any]

    @property
    def prompt(self) -> Any:
        return self.body.get("prompt")


def _prompts(prompt: Any) -> list[str | list[int]]:
    """The request's prompts as vLLM reads `prompt`: one text, one token list, or a list of either."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return [prompt]
    return list(prompt or [])


def check_completion_limits(request: CompletionRequest, body: dict[str, Any], settings: Settings) -> None:
    """The server's limits, before the engine sees the request (each a 400 that names its field); a body
    without `max_tokens` gets vLLM's default (16, as OpenAI's), or `server.max_tokens` where that is less."""
    server = settings.server
    if request.prompt_embeds is not None:
        # vLLM deserializes these as tensors from the client's bytes; this server takes text and token ids.
        raise APIError(
            400, "prompt_embeds: not supported; send prompt as text or token ids", param="prompt_embeds"
        )
    prompts = _prompts(request.prompt)
    if len(prompts) > server.max_prompts:
        raise APIError(400, f"prompt: at most {server.max_prompts} prompts per request", param="prompt")
    for n, prompt in enumerate(prompts):
        if isinstance(prompt, str) and len(prompt) > server.max_message_chars:
            raise APIError(400, f"prompt[{n}]: at most {server.max_message_chars} characters", param="prompt")
        if isinstance(prompt, list) and len(prompt) > settings.engine.max_model_len:
            limit = settings.engine.max_model_len
            raise APIError(400, f"prompt[{n}]: at most {limit} token ids (the context)", param="prompt")
    if request.n > server.max_n:
        raise APIError(400, f"n: at most {server.max_n} choices per request", param="n")
    cap = server.max_tokens
    if cap is None:
        return
    if body.get("max_tokens") is None:
        body["max_tokens"] = min(request.max_tokens or cap, cap)
    elif body["max_tokens"] > cap:
        raise APIError(400, f"max_tokens: at most {cap}", param="max_tokens")
