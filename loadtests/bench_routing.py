"""User-affinity routing across engine replicas: Ray Serve's routers side by side, in one run.

For each router (Ray Serve's default power-of-two, Ray Serve LLM's PrefixCacheAffinityRouter, the
experimental ConsistentHashRouter keyed on the user's cache salt) the stack starts with two engine
replicas; 50 users with distinct ~1k-token personas (set through the persona API) cycle through
personalized requests without tools (`persona_agent_options.tools: false`: the prompt is the persona and
the question; the routers see the user's secret cache salt), streamed. Round 1 fills the caches; rounds
2.. are measured: prefix-cache hit rate (cached / prompt tokens, from usage.prompt_tokens_details)
and TTFT p50/p99. The per-replica KV cache is sized below the users' total persona tokens, as it is
in production with many users, so where a user lands decides whether their persona is still cached.

    .venv/bin/python -m loadtests.bench_routing [--users 50 --rounds 3 --kv-gib 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from loadtests.bench_agent import TOPICS, stream_one
from loadtests.servers import start_our_stack
from personaagent.settings import load_settings

ROUTERS = ("default", "prefix_affinity", "consistent_hash")


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


def bodies_for_round(model: str, users: int, round_no: int, max_tokens: int) -> list[dict[str, Any]]:
    return [
        {
            "model": model,
            "user": f"bench-{u}",
            "messages": [
                {"role": "user", "content": f"Round {round_no}: suggest one thing for me to try this week."}
            ],
            "persona_agent_options": {"tools": False},
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        for u in range(users)
    ]


async def run_load(base_url: str, bodies: list[dict[str, Any]], concurrency: int) -> list[dict[str, Any]]:
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=600) as client:

        async def one(body: dict[str, Any]) -> dict[str, Any]:
            async with sem:
                result = await stream_one(client, body)
            usage = result["usage"]
            cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
            return {
                "ttft": result["ttft"],
                "prompt_tokens": usage.get("prompt_tokens", 0),
                "cached_tokens": cached,
            }

        return list(await asyncio.gather(*(one(b) for b in bodies)))


def measure(router: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    settings = load_settings(args.config)
    env = {
        "PERSONAAGENT_ENGINE__NUM_REPLICAS": str(args.replicas),
        "PERSONAAGENT_ENGINE__REQUEST_ROUTER": router,
        "PERSONAAGENT_ENGINE__CPU_KVCACHE_SPACE_GIB": str(args.kv_gib),
    }
    server = start_our_stack(settings, work / "logs" / router, work / "data" / router, env)
    try:
        ready_s = server.wait_ready()
        model = settings.engine.served_model_name
        with httpx.Client(base_url=server.base_url, timeout=120) as http:
            for u in range(args.users):
                http.post(
                    f"/v1/users/bench-{u}/interactions", json=[{"input": "hello", "output": "hi"}]
                ).raise_for_status()
                http.put(f"/v1/users/bench-{u}/persona", json={"text": persona_for(u)}).raise_for_status()
        rounds = []
        for r in range(args.rounds):
            bodies = bodies_for_round(model, args.users, r, args.max_tokens)
            rounds.append(asyncio.run(run_load(server.base_url, bodies, args.concurrency)))
        measured = [res for rnd in rounds[1:] for res in rnd]
        ttfts = sorted(res["ttft"] * 1000 for res in measured)
        prompt = sum(res["prompt_tokens"] for res in measured)
        return {
            "router": router,
            "ready_s": ready_s,
            "hit_rate": sum(res["cached_tokens"] for res in measured) / max(1, prompt),
            "ttft_p50_ms": statistics.median(ttfts),
            "ttft_p99_ms": ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))],
            "req_s": statistics.mean(rnd["req_s"] for rnd in rounds[1:]),
            "requests": len(measured),
            "prompt_tokens_per_request": prompt / max(1, len(measured)),
        }
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=None)
    parser.add_argument("--routers", default=",".join(ROUTERS))
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3, help="round 1 warms the caches and is not measured")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--kv-gib", type=int, default=1, help="KV cache per engine replica")
    parser.add_argument("--out", default="loadtests/results/bench_routing.json")
    args = parser.parse_args()

    console = Console()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for router in args.routers.split(","):
            console.print(f"[bold]{router}[/]: starting {args.replicas} engine replicas ...")
            results.append(measure(router, args, Path(tmp)))
            console.print(results[-1])
    base = results[0]
    table = Table(
        title=f"Routing, {args.replicas} engine replicas, {args.users} users cycling, rounds 2..{args.rounds}"
    )
    for column in ("router", "hit rate", "vs default", "TTFT p50 ms", "vs default", "TTFT p99 ms", "req/s"):
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(
            r["router"], f"{r['hit_rate']:.1%}", f"{r['hit_rate'] / max(1e-9, base['hit_rate']):.2f}x",
            f"{r['ttft_p50_ms']:.0f}", f"{r['ttft_p50_ms'] / base['ttft_p50_ms']:.2f}x",
            f"{r['ttft_p99_ms']:.0f}", f"{r['req_s']:.2f}",
        )  # fmt: skip
    console.print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "results": results}, indent=2) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
