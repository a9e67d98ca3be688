"""Ray Serve deployment over the alignment queue (`alignment.scheduler`) and the actor pool that runs it."""

from __future__ import annotations

import asyncio
from typing import Any

import ray
from ray import serve

from alignment.jobs import AlignmentJob, open_job_queue
from alignment.loop import AlignmentOutcome
from alignment.scheduler import AlignmentScheduler
from personaagent.settings import Settings
from serving.deployments.handles import MemoryHandle, replica_metrics
from serving.deployments.pool import AlignmentWorker
from serving.metrics import ReplicaMetrics


@serve.deployment(name="alignment")
class AlignmentDeployment:
    async def __init__(self, engine: Any, memory: Any, settings: Settings) -> None:  # type: ignore[misc]
        self._workers = [
            AlignmentWorker.remote(engine, memory, settings) for _ in range(settings.alignment.pool_size)
        ]
        self.scheduler = AlignmentScheduler(
            open_job_queue(settings),  # alignment_jobs.db under data_dir, or PostgreSQL (store.url)
            MemoryHandle(memory),
            self._align_on_worker,
            len(self._workers),
            settings.alignment,
        )
        self._loop_task = asyncio.get_running_loop().create_task(self.scheduler.run_forever())

    async def _align_on_worker(
        self, worker: int, user_id: str, persona: str, version: int, fail_after_calls: int | None
    ) -> AlignmentOutcome:
        ref = self._workers[worker].align.remote(user_id, persona, version, fail_after_calls)
        try:
            return await ref
        except asyncio.CancelledError:  # the job's time limit: stop the work on the actor too
            ray.cancel(ref)
            raise

    async def enqueue(self, user_id: str, reason: str, fail_after_calls: int | None = None) -> AlignmentJob:
        return await self.scheduler.enqueue(user_id, reason, fail_after_calls)

    async def forget_user(self, user_id: str) -> int:
        return self.scheduler.forget_user(user_id)

    async def get_job(self, job_id: str) -> AlignmentJob | None:
        return self.scheduler.jobs.get(job_id)

    async def metrics_text(self) -> str:
        return self.scheduler.metrics_text()

    async def replica_metrics(self) -> ReplicaMetrics:
        """This replica's metrics for the ingress's `/metrics` (called on every replica: `broadcast`)."""
        return replica_metrics(self.scheduler.metrics_text())
