"""Ray Serve deployment that owns the alignment queue and drives the actor pool in rounds."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from ray import serve

from alignment.jobs import AlignmentJob, JobStore
from alignment.loop import AlignmentOutcome
from alignment.pool import AlignmentWorker
from personaagent.settings import Settings

logger = logging.getLogger(__name__)


class AlignmentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.queue_depth = Gauge(
            "personaagent_alignment_queue_depth", "Users waiting for alignment.", registry=r
        )
        self.rounds = Counter("personaagent_alignment_rounds_total", "Alignment rounds run.", registry=r)
        self.users = Counter("personaagent_alignment_users_total", "Users aligned.", ["outcome"], registry=r)
        self.tokens = Counter(
            "personaagent_alignment_tokens_total", "Tokens spent on alignment.", ["kind"], registry=r
        )


@serve.deployment(name="alignment")
class AlignmentDeployment:
    async def __init__(self, engine: Any, memory: Any, settings: Settings) -> None:  # type: ignore[misc]
        self._settings = settings
        self._memory = memory
        self._jobs = JobStore(Path(settings.data_dir) / "alignment_jobs.db")
        self._metrics = AlignmentMetrics()
        self._workers = [
            AlignmentWorker.remote(engine, memory, settings) for _ in range(settings.alignment.pool_size)
        ]
        self._wakeup = asyncio.Event()
        self._faults: dict[str, int] = {}
        self._loop_task = asyncio.get_running_loop().create_task(self._run_forever())
        if self._jobs.queued():
            self._wakeup.set()

    async def enqueue(self, user_id: str, reason: str, fail_after_calls: int | None = None) -> AlignmentJob:
        """Queue an alignment for the user; a user already queued or running keeps its one job."""
        existing = self._jobs.open_job_for(user_id)
        if existing is not None:
            return existing
        job = self._jobs.create(user_id, reason)
        if fail_after_calls is not None:
            self._faults[job.id] = fail_after_calls
        self._metrics.queue_depth.set(len(self._jobs.queued()))
        self._wakeup.set()
        return job

    async def forget_user(self, user_id: str) -> int:
        """The user was deleted: their job rows go, queued ones with them; a running one writes nothing."""
        removed = self._jobs.delete_user(user_id)
        self._metrics.queue_depth.set(len(self._jobs.queued()))
        return removed

    async def get_job(self, job_id: str) -> AlignmentJob | None:
        return self._jobs.get(job_id)

    async def metrics_text(self) -> str:
        return generate_latest(self._metrics.registry).decode()

    # -- the rounds --------------------------------------------------------------------------------

    async def _run_forever(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            try:
                while batch := self._jobs.queued()[: self._settings.alignment.round_size]:
                    await self._round(batch)
            except Exception:
                logger.exception("alignment round failed")

    async def _round(self, jobs: list[AlignmentJob]) -> None:
        self._metrics.rounds.inc()
        for job in jobs:
            self._jobs.update(job.id, "running")
        self._metrics.queue_depth.set(len(self._jobs.queued()))
        await asyncio.gather(*(self._one(n, job) for n, job in enumerate(jobs)))

    async def _one(self, n: int, job: AlignmentJob) -> None:
        worker = self._workers[n % len(self._workers)]
        try:
            if not await self._memory.user_exists.remote(job.user_id):
                return  # deleted since it was queued: its row is gone and nothing may re-create the user
            current = await self._memory.current_persona.remote(job.user_id)
            if current is None:
                current = await self._memory.ensure_persona.remote(job.user_id)
            outcome: AlignmentOutcome = await worker.align.remote(
                job.user_id, current.text, current.version, self._faults.pop(job.id, None)
            )
        except Exception as exc:
            self._metrics.users.labels("failed").inc()
            cause = getattr(exc, "cause", None) or exc  # unwrap Ray's RayTaskError to the real error
            self._jobs.update(job.id, "failed", error=f"{type(cause).__name__}: {cause}"[:500])
            return
        self._metrics.tokens.labels("prompt").inc(outcome.prompt_tokens)
        self._metrics.tokens.labels("completion").inc(outcome.completion_tokens)
        result = outcome.model_dump()
        if outcome.accepted and outcome.candidate:
            details = {
                "feedback": outcome.feedback, "score_before": outcome.score_before, "score_after": outcome.score_after,
                "metric": outcome.metric, "interactions": outcome.interactions, "prompt_tokens": outcome.prompt_tokens,
                "completion_tokens": outcome.completion_tokens, "seconds": outcome.seconds, "job_id": job.id,
            }  # fmt: skip
            stored = await self._memory.set_persona_if_current.remote(
                job.user_id, outcome.candidate, outcome.base_version, details
            )
            result["persona_version"] = stored.version if stored else None
            if stored is None:
                result["accepted"] = False
                result["skipped"] = "the persona changed while aligning; kept the newer one"
        self._metrics.users.labels("accepted" if result.get("accepted") else "rejected").inc()
        self._jobs.update(job.id, "done", result=result)
