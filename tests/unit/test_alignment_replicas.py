"""Alignment replicas on one job queue and one memory store (SQLite and PostgreSQL, a real server): a job
that runs twice, because its first worker stopped renewing its lease, writes its persona once, and the
job's result names the version that was written."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from alignment.jobs import AlignmentJob, JobQueue, open_job_queue
from alignment.loop import AlignmentOutcome
from alignment.scheduler import AlignmentScheduler
from memory.backends import open_store
from memory.index import EpisodicIndex
from memory.records import InteractionIn, PersonaVersion
from memory.service import MemoryService
from personaagent.settings import AlignmentSettings, MemorySettings, Settings, StoreSettings

LEASE_S = 0.5


class Rules:
    def initial(self, profile_text: str | None) -> tuple[str, str]:
        return "You are helpful.", "persona@test"

    def bound(self, text: str) -> str:
        return text


class ServiceMemory:
    """`SchedulerMemory` over a real `MemoryService` (what the memory deployment runs)."""

    def __init__(self, service: MemoryService) -> None:
        self.service = service

    async def persona_for(self, user_id: str) -> PersonaVersion | None:
        return await self.service.persona_for(user_id)

    async def persona_history(self, user_id: str) -> list[PersonaVersion] | None:
        return self.service.persona_history(user_id)

    async def set_persona_if_current(
        self, user_id: str, text: str, base_version: int, details: dict[str, Any]
    ) -> PersonaVersion | None:
        return self.service.set_persona_if_current(user_id, text, base_version, details)


Align = Callable[[int, str, str, int, int | None], Awaitable[AlignmentOutcome]]


class Replicas:
    """Alignment replicas (each a scheduler on its own queue handle) and the memory they write through."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.opened: list[Any] = []
        store = open_store(settings)
        self.memory = MemoryService(
            store,
            None,
            EpisodicIndex(4, "cpu"),
            MemorySettings(device="cpu"),
            persona_rules=Rules(),  # type: ignore[arg-type]
        )
        self.opened.append(self.memory)

    def scheduler(self, align: Align) -> AlignmentScheduler:
        queue: JobQueue = open_job_queue(self.settings)
        queue.lease_s = LEASE_S  # sub-second: the tests wait out leases
        self.opened.append(queue)
        return AlignmentScheduler(queue, ServiceMemory(self.memory), align, 1, AlignmentSettings())

    def alignments(self, user_id: str) -> list[PersonaVersion]:
        return [p for p in self.memory.persona_history(user_id) or [] if p.reason == "alignment"]

    def close(self) -> None:
        for item in self.opened:
            item.close()


@pytest.fixture(params=["sqlite", "postgres"])
def replicas(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Replicas]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else ""
    built = Replicas(Settings(data_dir=tmp_path, store=StoreSettings(url=url)))
    built.memory.add_interactions_sync(
        "ivy", [InteractionIn(input="q", output="a")], "import", np.ones((1, 4), dtype=np.float32)
    )
    yield built
    built.close()


def _aligner(name: str, gate: asyncio.Event | None = None) -> Align:
    async def align(
        worker: int, user_id: str, text: str, version: int, faults: int | None
    ) -> AlignmentOutcome:
        if gate is not None:
            await gate.wait()
        return AlignmentOutcome(user_id=user_id, base_version=version, accepted=True, candidate=f"by {name}")

    return align


async def _lease_runs_out() -> None:
    await asyncio.sleep(LEASE_S * 2.5)


async def test_a_run_that_lost_its_lease_writes_nothing_and_the_holder_writes_once(
    replicas: Replicas,
) -> None:
    first_gate, second_gate = asyncio.Event(), asyncio.Event()
    first, second = (
        replicas.scheduler(_aligner("first", first_gate)),
        replicas.scheduler(_aligner("second", second_gate)),
    )
    job = await first.enqueue("ivy", "forced")
    (claimed,) = first.claim_round()
    # The first worker stalls (no lease renewals: `run_job` outside a round), as a replica that hangs.
    stalled = asyncio.ensure_future(first.run_job(0, claimed))
    await _lease_runs_out()
    (again,) = second.claim_round()
    assert again.id == job.id and again.attempts == 2
    rerun = asyncio.ensure_future(second.round([again]))
    await asyncio.sleep(0.1)
    first_gate.set()  # the stalled run wakes up first, aligned from the same version: it must not write
    await stalled
    assert replicas.alignments("ivy") == []
    second_gate.set()
    await rerun
    written = replicas.alignments("ivy")
    done: AlignmentJob | None = second.jobs.get(job.id)
    assert done is not None and done.state == "done" and done.result is not None
    assert [p.text for p in written] == ["by second"] and done.result["persona_version"] == written[0].version


async def test_a_job_whose_first_run_wrote_and_died_is_finished_with_that_write(replicas: Replicas) -> None:
    first, second = replicas.scheduler(_aligner("first")), replicas.scheduler(_aligner("second"))
    job = await first.enqueue("ivy", "forced")
    (claimed,) = first.claim_round()
    await first._align_and_store(0, claimed)  # the persona is written ... and the replica dies here
    assert [p.text for p in replicas.alignments("ivy")] == ["by first"]
    await _lease_runs_out()
    await second.round(second.claim_round())
    done = second.jobs.get(job.id)
    written = replicas.alignments("ivy")
    assert [p.text for p in written] == ["by first"]  # not aligned, not written a second time
    assert done is not None and done.state == "done" and done.attempts == 2 and done.result is not None
    assert done.result["persona_version"] == written[0].version and done.result["recovered"] is True
