"""Alignment benchmark: 32 users through the actor pool vs the seed's sequential loop, same engine.

Pool: `POST /v1/users/{id}/align` for every user, wait for all jobs (rounds over the Ray actor pool,
all calls concurrent, vLLM batching them). Sequential: the same `alignment.loop.align_user` code in this
process, one user after another and one LLM call after another, against the same running engine
(through the stack's plain chat endpoint and user data API). Also: chat TTFT p50 with and without the
pool's alignment traffic running (alignment runs at a lower vLLM priority, and the engine replica holds
new alignment calls back while chat runs: `alignment.yield_to_chat`), for steady chat (one request a
second) and sparse chat (one every 4 s, longer than `alignment.chat_quiet_s`, so alignment runs freely
between chats); and the engine's own batching ceiling on these calls: a sample of the recorded alignment
calls replayed one at a time and then all at once, which bounds what any pool can gain on this hardware.

    .venv/bin/python -m loadtests.bench_alignment --users 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from agent.core import PersonaAgent
from alignment.loop import align_user
from evaluation.client import ServeClient
from loadtests.servers import start_our_stack
from memory.records import DocumentHit, Interaction, MemoryHit, PersonaVersion
from personaagent.llm import LLM
from personaagent.salts import CacheSalts
from personaagent.settings import load_settings

LABELS = ["romance", "violence", "comedy", "horror"]


class HttpRunner:
    """Engine access through the stack's OpenAI endpoint (no `user`: no agent), one call at a time."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.lock = asyncio.Lock()
        self.recorded: list[dict[str, Any]] = []  # every call's body, for the batching-ceiling replay

    async def chat(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any] | str]:
        self.recorded.append(body)
        async with self.lock:
            resp = await self.client.post("/v1/chat/completions", json=body)
        yield resp.json()


class HttpMemory:
    """The alignment loop's memory port over the public API (`evaluation.client.ServeClient`)."""

    def __init__(self, api: ServeClient) -> None:
        self.api = api

    async def ensure_persona(self, user_id: str) -> PersonaVersion:
        return await self.api.create_persona(user_id)

    async def search(
        self, user_id: str, query: str, k: int, exclude_ids: tuple[int, ...] = ()
    ) -> list[MemoryHit]:
        hits = await self.api.search(user_id, query[:4000], k + len(exclude_ids))
        return [h for h in hits if h.interaction.id not in exclude_ids][:k]

    async def get_profile_text(self, user_id: str) -> str | None:
        profile = await self.api.get_profile(user_id)
        return profile.text if profile else None

    async def search_documents(self, query: str, k: int) -> list[DocumentHit]:
        return []

    async def document_count(self) -> int:
        return 0

    async def ground_truth(self, user_id: str, n: int) -> list[Interaction]:
        items = await self.api.interactions(user_id)
        with_truth = sorted((i for i in items if i.output), key=lambda i: (i.timestamp, i.id), reverse=True)
        return with_truth[:n]


async def chat_ttft(base_url: str, model: str, n: int, interval_s: float = 1.0) -> list[float]:
    """TTFT of `n` short chats, one starting every `interval_s` (or when the last one ends, if later)."""
    out = []
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=base_url, timeout=600) as client:
        for i in range(n):
            if i:
                await asyncio.sleep(max(0.0, interval_s - (time.perf_counter() - started)))
            body = {
                "model": model,
                "stream": True,
                "max_tokens": 16,
                "messages": [{"role": "user", "content": f"Say hello number {i}."}],
            }
            started = time.perf_counter()
            async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
                async for line in resp.aiter_lines():
                    if '"content":"' in line and '"content":""' not in line:
                        out.append(time.perf_counter() - started)
                        break
    return out


async def run_pool(base_url: str, users: list[str], progress: Progress) -> tuple[float, list[dict[str, Any]]]:
    api = ServeClient(base_url, timeout_s=120)
    try:
        started = time.perf_counter()
        jobs = [await api.align(u) for u in users]
        task = progress.add_task("pool: aligning", total=len(jobs))
        done: dict[str, dict[str, Any]] = {}
        while len(done) < len(jobs):
            await asyncio.sleep(1)
            for job in jobs:
                if job.id not in done:
                    current = await api.get_job(job.id)
                    if current.state in {"done", "failed"}:
                        done[job.id] = current.model_dump(mode="json")
                        progress.advance(task)
        return time.perf_counter() - started, list(done.values())
    finally:
        await api.close()


async def run_sequential(
    base_url: str, model: str, users: list[str], settings: Any, progress: Progress
) -> tuple[float, list[Any], list[dict[str, Any]]]:
    api = ServeClient(base_url)
    async with httpx.AsyncClient(base_url=base_url, timeout=600) as client:
        memory = HttpMemory(api)
        runner = HttpRunner(client)
        # Over the public API the server replaces any salt with the key's own: a throwaway secret will do.
        salts = CacheSalts(secrets.token_hex(16))
        agent = PersonaAgent(LLM(runner, model), memory, salts, settings.agent)
        cfg = settings.alignment
        task = progress.add_task("sequential: aligning", total=len(users))
        outcomes = []
        started = time.perf_counter()
        for user in users:
            persona = await memory.ensure_persona(user)
            outcomes.append(await align_user(agent, memory, user, persona.text, persona.version, cfg))
            progress.advance(task)
        await api.close()
        return time.perf_counter() - started, outcomes, runner.recorded


async def replay(base_url: str, bodies: list[dict[str, Any]], concurrent: bool) -> float:
    """Wall time of sending `bodies` one at a time, or all at once (the engine batches them)."""
    async with httpx.AsyncClient(base_url=base_url, timeout=600) as client:

        async def one(body: dict[str, Any]) -> None:
            (await client.post("/v1/chat/completions", json=body)).raise_for_status()

        started = time.perf_counter()
        if concurrent:
            await asyncio.gather(*(one(b) for b in bodies))
        else:
            for body in bodies:
                await one(body)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=None)
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--ttft-samples", type=int, default=20, help="chats per TTFT measurement")
    parser.add_argument("--replay-calls", type=int, default=64, help="recorded calls in the ceiling replay")
    parser.add_argument("--out", type=Path, default=Path("loadtests/results/bench_alignment.json"))
    args = parser.parse_args()
    console = Console()
    settings = load_settings(args.config)
    model = settings.engine.served_model_name
    workdir = Path(tempfile.mkdtemp(prefix="pa-bench-align-"))
    stack = start_our_stack(
        settings, workdir / "logs", workdir / "data", {"PERSONAAGENT_ALIGNMENT__SCHEDULE_ON_IMPORT": "false"}
    )
    patterns = {"steady chat, 1 request/s": 1.0, "sparse chat, 1 request/4 s": 4.0}
    try:
        with console.status("starting the stack"):
            stack.wait_ready()
        users = [f"align-{i:03d}" for i in range(args.users)]
        with httpx.Client(base_url=stack.base_url, timeout=300) as http, console.status("creating users"):
            for n, user in enumerate(users):
                label = LABELS[n % len(LABELS)]
                items = [
                    {"input": f"Tag the movie: story {j} of user {n} about {label}", "output": label}
                    for j in range(4)
                ]
                http.post(f"/v1/users/{user}/interactions", json=items).raise_for_status()
                http.post(f"/v1/users/{user}/persona").raise_for_status()
        with console.status("chat TTFT, engine idle"):
            idle_ttft = asyncio.run(chat_ttft(stack.base_url, model, args.ttft_samples))
        with Progress(console=console) as progress:

            async def pool_with_chat() -> tuple[float, list[dict[str, Any]], dict[str, list[float]]]:
                pool_task = asyncio.create_task(run_pool(stack.base_url, users, progress))
                await asyncio.sleep(5)  # let the rounds start before measuring chat under load
                busy = {}
                for label, interval in patterns.items():
                    busy[label] = await chat_ttft(stack.base_url, model, args.ttft_samples, interval)
                    if pool_task.done():
                        console.print(f"[yellow]the pool finished during '{label}': use more users")
                wall, jobs = await pool_task
                return wall, jobs, busy

            pool_wall, pool_jobs, busy_ttft = asyncio.run(pool_with_chat())
            seq_wall, seq_outcomes, recorded = asyncio.run(
                run_sequential(stack.base_url, model, users, settings, progress)
            )
        sample = recorded[: args.replay_calls]
        with console.status(f"ceiling: {len(sample)} recorded calls one at a time, then all at once"):
            replay_seq = asyncio.run(replay(stack.base_url, sample, concurrent=False))
            replay_all = asyncio.run(replay(stack.base_url, sample, concurrent=True))
    finally:
        stack.stop()

    ok_jobs = [j for j in pool_jobs if j["state"] == "done"]
    pool_tokens = (
        statistics.mean(j["result"]["prompt_tokens"] + j["result"]["completion_tokens"] for j in ok_jobs)
        if ok_jobs
        else 0
    )
    seq_tokens = statistics.mean(o.prompt_tokens + o.completion_tokens for o in seq_outcomes)
    table = Table(
        title=f"Alignment of {args.users} users (n={settings.alignment.n}, {settings.alignment.iterations} iteration, gate {'on' if settings.alignment.gate else 'off'})"
    )
    for col in ("measure", "sequential", "concurrent", "ratio"):
        table.add_column(col, justify="right")
    speedup, ceiling = seq_wall / pool_wall, replay_seq / replay_all
    table.add_row(
        "alignment wall time (s): loop vs actor pool",
        f"{seq_wall:.1f}",
        f"{pool_wall:.1f}",
        f"{speedup:.1f}x faster",
    )
    table.add_row(f"engine ceiling: {len(sample)} recorded calls (s), one at a time vs all at once",
                  f"{replay_seq:.1f}", f"{replay_all:.1f}", f"{ceiling:.1f}x faster")  # fmt: skip
    table.add_row("pool speed-up / engine ceiling", "", "", f"{speedup / ceiling:.0%}")
    table.add_row("tokens per aligned user", f"{seq_tokens:.0f}", f"{pool_tokens:.0f}", "")
    table.add_row(
        "jobs done / failed",
        f"{len(seq_outcomes)} / 0",
        f"{len(ok_jobs)} / {len(pool_jobs) - len(ok_jobs)}",
        "",
    )
    table.add_row(
        "accepted by the gate",
        str(sum(o.accepted for o in seq_outcomes)),
        str(sum(bool(j["result"]["accepted"]) for j in ok_jobs)),
        "",
    )
    idle = statistics.median(idle_ttft) * 1000
    ttft = {"idle": idle}
    for label, samples in busy_ttft.items():
        busy = statistics.median(samples) * 1000
        ttft[label] = busy
        table.add_row(
            f"chat TTFT p50 (ms), {label}: idle vs pool running",
            f"{idle:.0f}",
            f"{busy:.0f}",
            f"{busy / idle:.2f}x",
        )
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"users": args.users, "sequential_s": seq_wall, "pool_s": pool_wall, "ratio": speedup,
                                    "ceiling": {"calls": len(sample), "one_at_a_time_s": replay_seq, "all_at_once_s": replay_all, "ratio": ceiling},
                                    "tokens_per_user": {"sequential": seq_tokens, "pool": pool_tokens},
                                    "chat_ttft_ms": ttft}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
