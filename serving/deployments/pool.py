"""The alignment actor pool: Ray actors that run many users' alignments concurrently.

Each actor sends all of its users' simulation, feedback and update calls to the engine at once (so vLLM
batches them), bounded by a cap on in-flight calls, at a lower vLLM priority than chat.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import ray

from agent.core import PersonaAgent
from alignment.loop import AlignmentOutcome, align_user
from personaagent.llm import LLM
from personaagent.salts import cache_salts
from personaagent.settings import Settings
from serving.deployments.handles import EngineHandle, MemoryHandle


class CappedRunner:
    """Bounds concurrent engine calls; optionally fails after N calls (fault-injection tests)."""

    def __init__(self, inner: EngineHandle, cap: int) -> None:
        self._inner = inner
        self._sem = asyncio.Semaphore(cap)
        self.fail_after: dict[str, int] = {}  # user cache_salt -> calls left before an injected failure

    async def chat(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any] | str]:
        salt = body.get("cache_salt")
        if salt in self.fail_after:
            self.fail_after[salt] -= 1
            if self.fail_after[salt] < 0:
                raise RuntimeError("injected failure (test)")
        async with self._sem:
            async for item in self._inner.chat(body):
                yield item


@ray.remote(num_cpus=0)
class AlignmentWorker:
    def __init__(self, engine_handle: Any, memory_handle: Any, settings: Settings) -> None:
        self.runner = CappedRunner(EngineHandle(engine_handle), settings.alignment.max_inflight_calls)
        llm = LLM(self.runner, settings.engine.served_model_name)
        self.memory = MemoryHandle(memory_handle, cache_salts(settings).user)
        self.agent = PersonaAgent(
            llm,
            self.memory,
            cache_salts(settings),
            settings.agent,
            tools_in_template=settings.engine.tools_in_template,
        )
        self.cfg = settings.alignment

    async def align(
        self, user_id: str, persona: str, base_version: int, fail_after_calls: int | None = None
    ) -> AlignmentOutcome:
        salt = self.agent.salts.user(user_id)
        if fail_after_calls is not None:
            self.runner.fail_after[salt] = fail_after_calls
        try:
            return await align_user(self.agent, self.memory, user_id, persona, base_version, self.cfg)
        finally:
            self.runner.fail_after.pop(salt, None)
