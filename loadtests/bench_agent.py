"""Personalized serving benchmark: 50 users with ~1k-token personas, cycling, vs plain vLLM, in one run.

Phases (our stack runs with `agent.trace_final_prompt` on, so each reply carries its final prompt):
  1. personalized: requests with `user` set (persona, memory, tool steps, final answer, write-back);
     we record each final prompt and the engine's prefix-cache counters.
  2. the same final prompts, sent without `user` to our endpoint and to a plain vLLM server on the same
     model (both with the user's `cache_salt`), alternating -- the serving overhead at equal prompts.
Reported: throughput and TTFT ratios for equal final prompts, the personalized end-to-end numbers with
the tool steps' extra LLM calls, and the persona prefix-cache hit rate in steady state (pass >= 2).

    .venv/bin/python -m loadtests.bench_agent --users 50 --requests 150
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from loadtests.servers import ServerProcess, start_our_stack, start_plain_vllm
from personaagent.settings import load_settings

TOPICS = [
    "films",
    "novels",
    "travel",
    "cooking",
    "music",
    "football",
    "gardening",
    "chess",
    "history",
    "science",
]


def persona_for(n: int, target_words: int = 650) -> str:
    """A distinct ~1k-token persona per user (rules vary by user, so no two share a prefix)."""
    rules = []
    i = 0
    while sum(len(r.split()) for r in rules) < target_words:
        topic = TOPICS[(n + i) % len(TOPICS)]
        rules.append(f"Rule {i + 1} for user {n}: when the request is about {topic}, prefer concrete, short examples "
                     f"that match this user's taste number {(n * 31 + i * 7) % 97}, and mention at most two options.")  # fmt: skip
        i += 1
    return "You are a helpful personalized assistant.\n" + "\n".join(rules)


def prefix_counters(text: str) -> tuple[float, float]:
    def get(name: str) -> float:
        m = re.search(rf"^vllm:{name}\{{[^}}]*\}} ([0-9.e+]+)$", text, re.M)
        return float(m.group(1)) if m else 0.0

    return get("prefix_cache_hits_total"), get("prefix_cache_queries_total")


async def stream_one(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    ttft = None
    trace = None
    tokens = prompt_tokens = cached_tokens = 0
    async with client.stream("POST", url, json=body) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            trace = trace or data.get("persona_agent")
            if usage := data.get("usage"):
                tokens, prompt_tokens = usage["completion_tokens"], usage["prompt_tokens"]
                cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
            if ttft is None and any((c.get("delta") or {}).get("content") for c in data.get("choices") or []):
                ttft = time.perf_counter() - started
    return {
        "ttft": ttft or (time.perf_counter() - started),
        "latency": time.perf_counter() - started,
        "tokens": tokens,
        "prompt_tokens": prompt_tokens,
        "cached_tokens": cached_tokens,
        "trace": trace,
    }


async def run_load(base_url: str, bodies: list[dict[str, Any]], concurrency: int) -> dict[str, Any]:
    sem = asyncio.Semaphore(concurrency)
    results: list[dict[str, Any]] = []
    async with httpx.AsyncClient(timeout=600) as client:

        async def one(body: dict[str, Any]) -> None:
            async with sem:
                results.append(await stream_one(client, f"{base_url}/v1/chat/completions", body))

        started = time.perf_counter()
        await asyncio.gather(*(one(b) for b in bodies))
        wall = time.perf_counter() - started
    ttfts = sorted(r["ttft"] * 1000 for r in results)
    return {
        "req_s": len(results) / wall,
        "out_tok_s": sum(r["tokens"] for r in results) / wall,
        "ttft_p50_ms": statistics.median(ttfts),
        "ttft_p99_ms": ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))],
        "results": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=None)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--requests", type=int, default=150, help="personalized requests (users cycle)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of the equal-prompt phase")
    parser.add_argument("--out", type=Path, default=Path("loadtests/results/bench_agent.json"))
    args = parser.parse_args()
    console = Console()
    settings = load_settings(args.config)
    model = settings.engine.served_model_name
    workdir = Path(tempfile.mkdtemp(prefix="pa-bench-agent-"))
    ours = start_our_stack(
        settings, workdir / "logs", workdir / "data", {"PERSONAAGENT_AGENT__TRACE_FINAL_PROMPT": "true"}
    )
    plain: ServerProcess | None = None
    try:
        with console.status("starting our stack"):
            ours.wait_ready()
        plain = start_plain_vllm(settings, workdir / "logs")
        users = [f"bench-{i:03d}" for i in range(args.users)]
        with (
            httpx.Client(base_url=ours.base_url, timeout=120) as http,
            console.status("creating users and personas"),
        ):
            for n, user in enumerate(users):
                topic = TOPICS[n % len(TOPICS)]
                http.post(
                    f"/v1/users/{user}/interactions",
                    json=[{"input": f"I loved a book about {topic}", "output": "5"}],
                ).raise_for_status()
                http.put(f"/v1/users/{user}/persona", json={"text": persona_for(n)}).raise_for_status()
        with console.status("starting plain vLLM"):
            plain.wait_ready()

        bodies = [
            {"model": model, "user": users[i % len(users)], "stream": True, "max_tokens": args.max_tokens,
             "temperature": 0.0, "stream_options": {"include_usage": True},
             "messages": [{"role": "user", "content": f"Suggest something about {TOPICS[i % len(TOPICS)]} for tonight ({i})."}]}
            for i in range(args.requests)
        ]  # fmt: skip
        # Phase 1: personalized. First pass warms each user's persona; steady state is measured after it.
        warm, steady = bodies[: len(users)], bodies[len(users) :]
        console.print(f"phase 1: {len(warm)} warm-up + {len(steady)} steady-state personalized requests")
        asyncio.run(run_load(ours.base_url, warm, args.concurrency))
        hits0, queries0 = prefix_counters(httpx.get(f"{ours.base_url}/metrics").text)
        personalized = asyncio.run(run_load(ours.base_url, steady, args.concurrency))
        hits1, queries1 = prefix_counters(httpx.get(f"{ours.base_url}/metrics").text)
        traces = [r["trace"] for r in personalized["results"] if r["trace"]]
        persona_tokens = statistics.median(t["persona_tokens"] for t in traces)
        llm_calls = sum(t["tool_llm_calls"] + 1 for t in traces)
        persona_hit = min(1.0, (hits1 - hits0) / max(1.0, llm_calls * persona_tokens))

        # Phase 2: the same final prompts, no agent, ours vs plain, alternating rounds.
        finals = [
            {"model": model, "stream": True, "max_tokens": args.max_tokens, "temperature": 0.0,
             "stream_options": {"include_usage": True}, "messages": t["final_messages"], "cache_salt": f"user:{t['user']}"}
            for t in traces
        ]  # fmt: skip
        equal: dict[str, list[dict[str, Any]]] = {"plain": [], "ours": []}
        # Plain vLLM has never seen these prompts: one unmeasured pass gives it the same warm prefix cache.
        asyncio.run(run_load(plain.base_url, finals, args.concurrency))
        for _ in range(args.rounds):
            for label, server in (("plain", plain), ("ours", ours)):
                res = asyncio.run(run_load(server.base_url, finals, args.concurrency))
                res.pop("results")
                equal[label].append(res)
                console.print(f"{label}: {res['req_s']:.2f} req/s, TTFT p50 {res['ttft_p50_ms']:.0f} ms")
    finally:
        ours.stop()
        if plain is not None:
            plain.stop()

    def med(label: str, key: str) -> float:
        return statistics.median(r[key] for r in equal[label])

    table = Table(
        title=f"Personalized serving: {args.users} users, ~{persona_tokens:.0f}-token personas, concurrency {args.concurrency}"
    )
    for col in ("measure", "plain vLLM", "ours", "ratio ours/plain"):
        table.add_column(col, justify="right")
    for key, label in (("req_s", "req/s, same final prompts"), ("out_tok_s", "output tok/s, same final prompts"),
                       ("ttft_p50_ms", "TTFT p50 ms, same final prompts"), ("ttft_p99_ms", "TTFT p99 ms, same final prompts")):  # fmt: skip
        p, o = med("plain", key), med("ours", key)
        table.add_row(label, f"{p:.2f}", f"{o:.2f}", f"{o / p:.3f}")
    table.add_row("personalized end to end: req/s", "", f"{personalized['req_s']:.2f}", "")
    table.add_row("personalized end to end: TTFT p50 ms", "", f"{personalized['ttft_p50_ms']:.0f}", "")
    table.add_row("LLM calls per personalized request", "", f"{llm_calls / len(traces):.2f}", "")
    table.add_row("persona tokens hit (steady state)", "", f"{persona_hit:.1%}", "")
    table.add_row(
        "prefix-cache hit rate, all tokens (steady state)",
        "",
        f"{(hits1 - hits0) / max(1, queries1 - queries0):.1%}",
        "",
    )
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    summary = {"equal_prompts": equal, "personalized": {k: v for k, v in personalized.items() if k != "results"},
               "persona_tokens": persona_tokens, "persona_hit": persona_hit, "llm_calls_per_request": llm_calls / len(traces)}  # fmt: skip
    args.out.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
