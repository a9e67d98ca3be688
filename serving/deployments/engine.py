"""Ray Serve deployment around `serving.engine.EngineService` (one vLLM AsyncLLM per replica)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from personaagent.settings import Settings
from serving.engine import EngineService


@serve.deployment(name="engine")
class EngineDeployment:
    async def __init__(self, settings: Settings) -> None:  # type: ignore[misc]
        self.service = EngineService(settings)
        await self.service.start()

    async def chat(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any] | str]:
        """Called through a streaming handle: yields one dict, or SSE strings."""
        async for item in self.service.chat(body):
            yield item

    async def list_models(self) -> dict[str, Any]:
        return await self.service.list_models()

    async def metrics_text(self) -> str:
        return self.service.metrics_text()

    async def engine_info(self) -> dict[str, Any]:
        return {
            "model": self.service.model_name,
            "block_size": self.service.block_size,
            "max_model_len": self.service.max_model_len,
        }

    async def check_health(self) -> None:
        """Ray Serve's replica health check: restarts the replica if the engine died."""
        await self.service.check_health()

    def __del__(self) -> None:
        service = getattr(self, "service", None)
        if service is not None:
            service.shutdown()
