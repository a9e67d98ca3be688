"""LLM access for the agent core, over anything that speaks OpenAI chat bodies (no Ray, no HTTP here).

The serving layer passes an object whose `chat(body)` yields vLLM's OpenAI responses: the engine
service itself, or a Ray Serve handle wrapper. Structured output (JSON schema, choice), per-user
`cache_salt` and request `priority` are vLLM request fields, passed straight through.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from pydantic import BaseModel


class ChatBodyRunner(Protocol):
    def chat(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any] | str]: ...


class LLMError(RuntimeError):
    """The engine rejected or failed a request."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.status = status


class TokenUsage(BaseModel):
    """The one token meter: what a group of LLM calls cost (an agent's request, one alignment)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    calls: int = 0

    def add_openai(self, usage: dict[str, Any] | None) -> None:
        """Add one OpenAI `usage` object (the call itself is counted apart, when it is made)."""
        usage = usage or {}
        self.prompt_tokens += int(usage.get("prompt_tokens") or 0)
        self.completion_tokens += int(usage.get("completion_tokens") or 0)
        self.cached_tokens += int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)

    def add(self, other: TokenUsage) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cached_tokens += other.cached_tokens
        self.calls += other.calls

    def openai(self) -> dict[str, Any]:
        """As an OpenAI `usage` object (with vLLM's cache hits in `prompt_tokens_details`)."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }


class LLMResult(BaseModel):
    id: str
    text: str
    finish_reason: str | None
    usage: TokenUsage


class LLM:
    def __init__(self, runner: ChatBodyRunner, model: str) -> None:
        self._runner = runner
        self.model = model

    def run(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any] | str]:
        """A raw request: one dict (response or error) or, with `stream`, vLLM's SSE strings."""
        return self._runner.chat({"model": self.model, **body})

    async def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        json_schema: dict[str, Any] | None = None,
        choice: list[str] | None = None,
        cache_salt: str | None = None,
        priority: int = 0,
        seed: int | None = None,
    ) -> LLMResult:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        if json_schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": json_schema},
            }
        if choice is not None:
            body["structured_outputs"] = {"choice": choice}
        if cache_salt is not None:
            body["cache_salt"] = cache_salt
        if priority:
            body["priority"] = priority
        if seed is not None:
            body["seed"] = seed
        result: dict[str, Any] | None = None
        async for item in self._runner.chat(body):
            if isinstance(item, dict):
                result = item
        if result is None:
            raise LLMError("engine returned no response")
        if "error" in result:
            err = result["error"]
            raise LLMError(str(err.get("message")), int(err.get("code") or 500))
        choice0 = result["choices"][0]
        usage = TokenUsage(calls=1)
        usage.add_openai(result.get("usage"))
        return LLMResult(
            id=result["id"],
            text=choice0["message"].get("content") or "",
            finish_reason=choice0.get("finish_reason"),
            usage=usage,
        )
