"""Ray Serve deployment over the alignment queue (`alignment.scheduler`) and the actor pool that runs it.

Every replica (`alignment.num_replicas`, PostgreSQL only) runs its own scheduler over the shared job
queue: jobs are claimed under a lease, so any replica takes any job, and one that dies mid-job leaves it
to another once its lease runs out. The pool's actors are placed on the replica's own node: they share
its fate (Ray ends an actor with its owner) and a node that goes takes the replica and its pool together.
"""

from __future__ import annotations

import asyncio
from typing import Any

import ray
from ray import serve
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from alignment.jobs import AlignmentJob, open_job_queue
from alignment.loop import AlignmentOutcome
from alignment.scheduler import AlignmentScheduler
from personaagent.salts import cache_salts
from personaagent.settings import Settings
from serving.deployments.handles import MemoryHandle, replica_metrics
from serving.deployments.pool import AlignmentWorker
from serving.metrics import ReplicaMetrics


@serve.deployment(name="alignment")
class AlignmentDeployment:
    async def __init__(self, engine: Any, memory: Any, settings: Settings) -> None:  # type: ignore[misc]
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        self._workers = [
            AlignmentWorker.options(scheduling_strategy=here).remote(engine, memory, settings)
            for _ in range(settings.alignment.pool_size)
        ]
        self.scheduler = AlignmentScheduler(
            open_job_queue(settings),  # alignment_jobs.db under data_dir, or PostgreSQL (store.url)
            MemoryHandle(memory, cache_salts(settings).user),
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

    async def stats(self) -> dict[str, Any]:
        """Which scheduler this replica runs (its job leases name it), and where the replica runs."""
        context = ray.get_runtime_context()
        return {
            "worker": self.scheduler.worker, "running": self.scheduler.held(),
            "replica": serve.get_replica_context().replica_tag, "node": context.get_node_id(),
            "actor": context.get_actor_name(),
        }  # fmt: skip

    async def metrics_text(self) -> str:
        return self.scheduler.metrics_text()

    async def replica_metrics(self) -> ReplicaMetrics:
        """This replica's metrics for the ingress's `/metrics` (called on every replica: `broadcast`)."""
        return replica_metrics(self.scheduler.metrics_text())
