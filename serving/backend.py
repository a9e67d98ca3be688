"""What the HTTP layer needs from the rest of the stack; deployments provide it over Ray handles."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol


class ChatBackend(Protocol):
    def chat(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any] | str]: ...

    async def list_models(self) -> dict[str, Any]: ...

    async def metrics_text(self) -> str: ...

    async def check_health(self) -> None: ...


class EngineHandleBackend:
    """`ChatBackend` over a Ray Serve handle to `EngineDeployment`."""

    def __init__(self, engine_handle: Any) -> None:
        self._engine = engine_handle
        self._streaming = engine_handle.options(stream=True)

    async def chat(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any] | str]:
        async for item in self._streaming.chat.remote(body):
            yield item

    async def list_models(self) -> dict[str, Any]:
        return await self._engine.list_models.remote()

    async def metrics_text(self) -> str:
        return await self._engine.metrics_text.remote()

    async def check_health(self) -> None:
        await self._engine.check_health.remote()

    async def count_chat_tokens(self, messages: list[dict[str, Any]]) -> int:
        return await self._engine.count_chat_tokens.remote(messages)
