"""What the HTTP layer needs from the rest of the stack; deployments provide it over Ray handles."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from pydantic import BaseModel


class ChatBackend(Protocol):
    def chat(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any] | str]: ...

    async def list_models(self) -> dict[str, Any]: ...

    async def metrics_text(self) -> str: ...

    async def check_health(self) -> None: ...


class EngineRequest(BaseModel):
    """A chat body on its way to an engine replica.

    Request routers read the request before a replica is chosen: Ray Serve LLM's PrefixCacheAffinityRouter
    looks for a `.messages` attribute, so the body travels in this wrapper instead of as a bare dict.
    """

    body: dict[str, Any]

    @property
    def messages(self) -> Any:
        return self.body.get("messages")


def affinity_key(body: dict[str, Any]) -> str | None:
    """The user a request belongs to (its cache salt, else `user`): the consistent-hash router's key."""
    key = body.get("cache_salt") or body.get("user")
    return str(key) if key else None


class EngineHandleBackend:
    """`ChatBackend` over a Ray Serve handle to `EngineDeployment`."""

    def __init__(self, engine_handle: Any) -> None:
        self._engine = engine_handle
        self._streaming = engine_handle.options(stream=True)

    async def chat(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any] | str]:
        key = affinity_key(body)
        # session_id is what Ray Serve's ConsistentHashRouter hashes; other routers ignore it.
        handle = self._streaming.options(session_id=key) if key else self._streaming
        async for item in handle.chat.remote(EngineRequest.model_construct(body=body)):
            yield item

    async def list_models(self) -> dict[str, Any]:
        return await self._engine.list_models.remote()

    async def metrics_text(self) -> str:
        return await self._engine.metrics_text.remote()

    async def check_health(self) -> None:
        await self._engine.check_health.remote()

    async def count_chat_tokens(self, messages: list[dict[str, Any]]) -> int:
        return await self._engine.count_chat_tokens.remote(messages)
