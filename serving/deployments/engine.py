"""Ray Serve deployment around `serving.engine.EngineService` (one vLLM AsyncLLM per replica)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Any

from ray import serve

from personaagent.settings import Settings
from serving.backend import EngineRequest
from serving.background_gate import BackgroundGate
from serving.completions import CompletionEngineRequest
from serving.deployments.handles import replica_metrics
from serving.engine import EngineService, coalesce_sse
from serving.metrics import EngineGateMetrics, ReplicaMetrics


@serve.deployment(name="engine")
class EngineDeployment:
    async def __init__(self, settings: Settings) -> None:  # type: ignore[misc]
        self.service = EngineService(settings)
        await self.service.start()
        a = settings.alignment
        # Background is told apart by priority: with alignment at chat's 0 there is nothing to gate.
        gated = a.yield_to_chat and a.priority > 0
        # Alignment never holds every sequence slot: vLLM does not preempt for a slot, so chat would queue.
        idle_limit = max(a.inflight_calls_during_chat, int(settings.engine.max_num_seqs * a.max_engine_share))
        self.gate = (
            BackgroundGate(a.inflight_calls_during_chat, idle_limit, a.chat_quiet_s) if gated else None
        )
        self._background_priority = a.priority
        self._gate_metrics = EngineGateMetrics(self.gate)

    def _admission(self, body: dict[str, Any]) -> AbstractAsyncContextManager[None]:
        """Alignment-class requests (vLLM priority at or past `alignment.priority`) are background work.

        Profile writes (priority 1) are not held back: a first-time user's chat may be waiting on one.
        """
        if self.gate is None:
            return nullcontext()
        priority = body.get("priority") or 0
        if isinstance(priority, int) and priority >= self._background_priority:
            return self.gate.background()
        return self.gate.foreground()

    async def chat(self, request: EngineRequest) -> AsyncIterator[dict[str, Any] | str]:
        """Called through a streaming handle: yields one dict, or SSE strings.

        SSE chunks that pile up while the previous one is in flight are sent as one string: every item
        of a Ray streaming generator is a Ray message (and another hop from ingress to proxy), which on a
        small CPU costs throughput under load; the first chunk still goes out at once (TTFT).
        """
        async with self._admission(request.body):
            async for item in coalesce_sse(self.service.chat(request.body)):
                yield item

    async def complete(self, request: CompletionEngineRequest) -> AsyncIterator[dict[str, Any] | str]:
        """A `/v1/completions` request, streamed and admitted as `chat` (it is foreground work)."""
        async with self._admission(request.body):
            async for item in coalesce_sse(self.service.complete(request.body)):
                yield item

    async def list_models(self) -> dict[str, Any]:
        return await self.service.list_models()

    async def metrics_text(self) -> str:
        return self._gate_metrics.text() + self.service.metrics_text()

    async def replica_metrics(self) -> ReplicaMetrics:
        """This replica's metrics for the ingress's `/metrics` (called on every replica: `broadcast`)."""
        return replica_metrics(await self.metrics_text())

    async def count_chat_tokens(self, messages: list[dict[str, Any]]) -> int:
        return self.service.count_chat_tokens(messages)

    async def check_health(self) -> None:
        """Ray Serve's replica health check: restarts the replica if the engine died."""
        await self.service.check_health()

    def __del__(self) -> None:
        service = getattr(self, "service", None)
        if service is not None:
            service.shutdown()
