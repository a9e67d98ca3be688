"""What personalization costs a user, and what the Responses API costs over chat, side by side in one run.

Five kinds of streamed request on one stack, interleaved so the machine's noise hits all of them alike:
  personalized   the chat question with `user` set (persona, priming search, tools offered, write-back);
  plain          the same chat question without `user` (what a user compares against);
  floor          a plain chat carrying the personalized request's own final prompt (what the personal
                 context itself costs to prefill; the agent's overhead is personalized / floor);
  responses      the same question on `/v1/responses` with `user` set (the same agent, answered as a
                 Response, stored for `previous_response_id`);
  plain_resp     the same question on `/v1/responses` without `user`.
The Responses kinds ask as twin users (the same history, `<user>-r`) under an API key of their own, so no
chat request warms a Responses request's prefix cache or memory, nor the other way round. Users are warm
(history imported, persona made, one request done). Every request generates exactly `--max-tokens` tokens
(`ignore_eos`), so whole-answer times compare equal work. Printed: TTFT p50 and whole-answer p50 ratios at
concurrency 1 and `--concurrency` (personalized / plain, personalized / floor, responses / personalized
chat, plain Responses / plain chat), LLM calls per personalized request, and the persona-token cache hit
rate (share of persona tokens served from the prefix cache).

    .venv/bin/python -m loadtests.bench_agent                      # SmolLM2 (default config)
    .venv/bin/python -m loadtests.bench_agent --config configs/cpu-qwen1.5b.yaml --users 4 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from loadtests.servers import start_our_stack
from personaagent.settings import load_settings
from serving.auth import hash_key, new_key

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
KINDS = ("personalized", "plain", "floor", "responses", "plain_resp")
RESPONSES_KINDS = frozenset({"responses", "plain_resp"})
# One admin key per API: plain requests share the prefix cache within their key only.
KEYS = {"chat": new_key(), "responses": new_key()}


def history_for(n: int) -> list[dict[str, str]]:
    """Ten past interactions of user n, around two favourite topics (what memory search retrieves)."""
    likes = [TOPICS[n % len(TOPICS)], TOPICS[(n + 3) % len(TOPICS)]]
    return [
        {
            "input": f"Recommend something about {likes[i % 2]} (request {i}).",
            "output": f"{likes[i % 2]} pick {i}: rated 5",
        }
        for i in range(10)
    ]


async def stream_one(client: httpx.AsyncClient, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """One streamed request: TTFT (first answer text), whole answer (until the stream ends), usage (chat's
    shape), the agent's trace."""
    if kind in RESPONSES_KINDS:
        return await _stream_response(client, body)
    started = time.perf_counter()
    ttft = None
    first_trace: dict[str, Any] | None = None
    last_trace: dict[str, Any] | None = None
    usage: dict[str, Any] = {}
    headers = {"Authorization": f"Bearer {KEYS['chat']}"}
    async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            if "persona_agent" in data:
                first_trace = first_trace or data["persona_agent"]
                last_trace = data["persona_agent"]
            usage = data.get("usage") or usage
            if ttft is None and any((c.get("delta") or {}).get("content") for c in data.get("choices") or []):
                ttft = time.perf_counter() - started
    whole = time.perf_counter() - started
    return {
        "ttft": ttft or whole,
        "whole": whole,
        "usage": usage,
        "first_trace": first_trace,
        "trace": last_trace,
    }


async def _stream_response(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    ttft = None
    final: dict[str, Any] = {}
    headers = {"Authorization": f"Bearer {KEYS['responses']}"}
    async with client.stream("POST", "/v1/responses", json=body, headers=headers) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            if ttft is None and event["type"] == "response.output_text.delta" and event["delta"]:
                ttft = time.perf_counter() - started
            if event["type"] in {"response.completed", "response.incomplete", "response.failed"}:
                final = event["response"]
    whole = time.perf_counter() - started
    if final.get("status") == "failed":
        raise RuntimeError(f"response failed: {final.get('error')}")
    usage = final.get("usage") or {}
    return {
        "ttft": ttft or whole,
        "whole": whole,
        "usage": {"prompt_tokens": usage.get("input_tokens", 0), "completion_tokens": usage.get("output_tokens", 0),
                  "prompt_tokens_details": {"cached_tokens": (usage.get("input_tokens_details") or {}).get("cached_tokens", 0)}},
        "first_trace": final.get("persona_agent"),
        "trace": final.get("persona_agent"),
    }  # fmt: skip


def twin(user: str) -> str:
    """The user the Responses kinds ask as: the same history, its own cache salt and memory."""
    return f"{user}-r"


def bodies_for(
    model: str, user: str, question: str, max_tokens: int, final_messages: Any
) -> dict[str, dict[str, Any]]:
    common = {"model": model, "stream": True, "max_tokens": max_tokens, "temperature": 0.0, "ignore_eos": True,
              "stream_options": {"include_usage": True}}  # fmt: skip
    responses = {"model": model, "stream": True, "max_output_tokens": max_tokens, "temperature": 0.0,
                 "ignore_eos": True, "input": question}  # fmt: skip
    ask = [{"role": "user", "content": question}]
    return {
        "personalized": common | {"user": user, "messages": ask},
        "plain": common | {"messages": ask},
        "floor": common | {"messages": final_messages},
        "responses": responses | {"user": twin(user)},
        "plain_resp": responses,
    }


async def run_phase(
    base_url: str, jobs: list[tuple[str, dict[str, Any]]], concurrency: int
) -> dict[str, list[dict[str, Any]]]:
    """Run (kind, body) jobs in the given order, `concurrency` at a time; results by kind."""
    sem = asyncio.Semaphore(concurrency)
    out: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
    async with httpx.AsyncClient(base_url=base_url, timeout=600) as client:

        async def one(kind: str, body: dict[str, Any]) -> None:
            async with sem:
                out[kind].append(await stream_one(client, kind, body))

        await asyncio.gather(*(one(k, b) for k, b in jobs))
    return out


def p50_ms(results: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in results) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=None)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4, help="questions per user (each asked three ways)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("loadtests/results/bench_agent.json"))
    args = parser.parse_args()
    console = Console()
    rng = random.Random(args.seed)
    settings = load_settings(args.config)
    model = settings.engine.served_model_name
    workdir = Path(tempfile.mkdtemp(prefix="pa-bench-agent-"))
    env = {
        "PERSONAAGENT_AGENT__TRACE_FINAL_PROMPT": "true",
        "PERSONAAGENT_ALIGNMENT__SCHEDULE_ON_IMPORT": "false",
        "PERSONAAGENT_AUTH__API_KEYS": json.dumps(
            [{"name": f"bench-{api}", "sha256": hash_key(key)} for api, key in KEYS.items()]
        ),
    }
    if args.config:
        env["PERSONAAGENT_CONFIG"] = str(args.config)
    ours = start_our_stack(settings, workdir / "logs", workdir / "data", env)
    users = [f"bench-{i:02d}@example.com" for i in range(args.users)]
    questions = {
        u: [
            f"What should I try next about {TOPICS[(n + r) % len(TOPICS)]}? (question {r})"
            for r in range(args.rounds)
        ]
        for n, u in enumerate(users)
    }
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    try:
        with console.status("starting the stack"):
            ready_s = ours.wait_ready()
        console.print(f"stack ready in {ready_s:.0f} s")
        admin = {"Authorization": f"Bearer {KEYS['chat']}"}
        with (
            httpx.Client(base_url=ours.base_url, timeout=600, headers=admin) as http,
            console.status("users (and their twins): history, persona, one request"),
        ):
            for n, user in enumerate(users):
                for who in (user, twin(user)):
                    http.post(f"/v1/users/{who}/interactions", json=history_for(n)).raise_for_status()
                http.post("/v1/chat/completions", json={"model": model, "user": user, "max_tokens": 4,
                          "messages": [{"role": "user", "content": "Hello!"}]}).raise_for_status()  # fmt: skip
                http.post("/v1/responses", json={"model": model, "user": twin(user), "max_output_tokens": 4,
                          "input": "Hello!"}, headers={"Authorization": f"Bearer {KEYS['responses']}"},
                          ).raise_for_status()  # fmt: skip

        # Concurrency 1: per question, the personalized request first (its final prompt is the floor's),
        # then plain and floor in random order. Salts differ, so no request warms another's cache; the
        # floor's persona blocks are warmed once per user beforehand, as the user's own are.
        async def sequential() -> dict[str, list[dict[str, Any]]]:
            out: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
            jobs: list[tuple[str, dict[str, Any]]] = []
            async with httpx.AsyncClient(base_url=ours.base_url, timeout=600) as client:
                for user in users:  # warm the floor's persona prefix
                    warm = await stream_one(
                        client,
                        "personalized",
                        bodies_for(model, user, "Hello again!", 4, None)["personalized"],
                    )
                    await stream_one(
                        client, "floor",
                        bodies_for(model, user, "", 4, warm["first_trace"]["final_messages"])["floor"],
                    )  # fmt: skip
                order = [(u, q) for r in range(args.rounds) for u in users for q in [questions[u][r]]]
                for n, (user, question) in enumerate(order):
                    mine = await stream_one(
                        client,
                        "personalized",
                        bodies_for(model, user, question, args.max_tokens, None)["personalized"],
                    )
                    out["personalized"].append(mine)
                    bodies = bodies_for(
                        model, user, question, args.max_tokens, mine["first_trace"]["final_messages"]
                    )
                    others = [k for k in KINDS if k != "personalized"]
                    rng.shuffle(others)
                    for kind in others:
                        out[kind].append(await stream_one(client, kind, bodies[kind]))
                        jobs.append((kind, bodies[kind]))
                    jobs.append(("personalized", bodies["personalized"]))
                    console.print(f"  concurrency 1: {n + 1}/{len(order)}", end="\r")
            console.print()
            results["jobs"] = jobs  # type: ignore[assignment]
            return out

        results["c1"] = asyncio.run(sequential())
        jobs: list[tuple[str, dict[str, Any]]] = results.pop("jobs")  # type: ignore[assignment]
        rng.shuffle(jobs)
        with console.status(f"concurrency {args.concurrency}: {len(jobs)} requests, kinds mixed"):
            results[f"c{args.concurrency}"] = asyncio.run(run_phase(ours.base_url, jobs, args.concurrency))
    finally:
        ours.stop()

    table = Table(title=f"Personalization cost: {model}, {args.users} warm users x {args.rounds} questions, "
                        f"{args.max_tokens} tokens per answer")  # fmt: skip
    ratios_of = {
        "pers./plain": ("personalized", "plain"),
        "pers./floor": ("personalized", "floor"),
        "resp./chat (pers.)": ("responses", "personalized"),
        "resp./chat (plain)": ("plain_resp", "plain"),
    }
    for col in ("measure", *(f"{k} p50 ms" for k in KINDS), *ratios_of):
        table.add_column(col, justify="right")
    summary: dict[str, Any] = {"model": model, "users": args.users, "rounds": args.rounds, "ready_s": ready_s}
    for phase, by_kind in results.items():
        for key, label in (("ttft", "TTFT"), ("whole", "whole answer")):
            p = {k: p50_ms(by_kind[k], key) for k in KINDS}
            ratios = {name: p[a] / p[b] for name, (a, b) in ratios_of.items()}
            table.add_row(f"{label}, concurrency {phase[1:]}", *(f"{p[k]:.0f}" for k in KINDS),
                          *(f"{r:.2f}x" for r in ratios.values()))  # fmt: skip
            summary[f"{phase}_{key}"] = p | {
                "personalized_over_plain": ratios["pers./plain"],
                "personalized_over_floor": ratios["pers./floor"],
                "responses_over_chat_personalized": ratios["resp./chat (pers.)"],
                "responses_over_chat_plain": ratios["resp./chat (plain)"],
            }
    personalized = [r for by_kind in results.values() for r in by_kind["personalized"]]
    calls = [r["trace"]["llm_calls"] for r in personalized]
    persona = [(r["trace"]["persona_tokens"], r["usage"].get("prompt_tokens_details", {}).get("cached_tokens") or 0)
               for r in personalized]  # fmt: skip
    hit = sum(min(c, p) for p, c in persona) / sum(p for p, _ in persona)
    summary |= {"llm_calls_per_request": statistics.mean(calls), "persona_token_hit_rate": hit}
    blank = [""] * (len(KINDS) + len(ratios_of) - 1)
    table.add_row("LLM calls per personalized request", f"{statistics.mean(calls):.2f}", *blank)
    table.add_row("persona tokens served from the cache", f"{hit:.1%}", *blank)
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    console.print(f"written: {args.out}")


if __name__ == "__main__":
    main()
