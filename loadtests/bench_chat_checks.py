"""The personalized chat check set: everyday requests as users send them, personalized vs plain, one run.

`evaluation/data/chat_checks/chat_checks.json` holds 8 users with imported history and 5 requests each (a
greeting, a preference question, a request in their domain, a follow-up that continues the conversation, a
request that needs the profile). Each request is sent streamed, with `user` (the agent: persona, memory,
tools offered) and without (plain), interleaved so the machine's noise hits both alike. Printed, for the
served model: how many personalized answers hold a tool call written as text or markup (target 0 of N),
LLM calls and tool rounds per request, TTFT and whole-answer p50, personalized vs plain. Then the budget
probe: a personalized "Say hi." with `max_tokens` 8, 24 and 64, streamed and not, for the first user: the
answer's own tokens (the last round's), the finish reason, and whether the answer holds call text (tool
rounds have their own budget, `agent.tool_round_max_tokens`, and count in `usage` only).

    .venv/bin/python -m loadtests.bench_chat_checks                       # starts the default stack
    .venv/bin/python -m loadtests.bench_chat_checks --url http://127.0.0.1:8000   # a running server
"""

from __future__ import annotations

import argparse
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
from personaagent.settings import REPO_ROOT, load_settings
from personaagent.written_calls import contains_call_text

CHECKS = REPO_ROOT / "evaluation" / "data" / "chat_checks" / "chat_checks.json"


def stream_chat(http: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    """One streamed chat: its text, TTFT (first content), whole-answer time, finish reason, trace."""
    started = time.perf_counter()
    ttft, text, finish, trace = None, [], None, {}
    with http.stream("POST", "/v1/chat/completions", json=body) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            trace = data.get("persona_agent") or trace
            for choice in data.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content") or ""
                if piece and ttft is None:
                    ttft = time.perf_counter() - started
                text.append(piece)
                finish = choice.get("finish_reason") or finish
    whole = time.perf_counter() - started
    return {"text": "".join(text), "ttft": ttft or whole, "whole": whole, "finish": finish, "trace": trace}


PROBE_BUDGETS = (8, 24, 64)


def budget_probe(http: httpx.Client, model: str, uid: str) -> list[dict[str, Any]]:
    """"Say hi." with small budgets (the case where a tool round used to eat the answer's tokens)."""
    rows = []
    for max_tokens in PROBE_BUDGETS:
        for stream in (False, True):
            body = {"model": model, "user": uid, "temperature": 0.0, "max_tokens": max_tokens,
                    "messages": [{"role": "user", "content": "Say hi."}], "stream": stream}  # fmt: skip
            if stream:
                result = stream_chat(http, body)
                text, finish, trace = result["text"], result["finish"], result["trace"]
                usage = None
            else:
                reply = http.post("/v1/chat/completions", json=body)
                reply.raise_for_status()
                data = reply.json()
                text = data["choices"][0]["message"].get("content") or ""
                finish, trace = data["choices"][0]["finish_reason"], data.get("persona_agent") or {}
                usage = data["usage"]["completion_tokens"]
            rounds = trace.get("rounds") or [{}]
            rows.append({
                "max_tokens": max_tokens, "stream": stream, "text": text, "finish": finish,
                "answer_tokens": rounds[-1].get("completion_tokens"), "usage_completion_tokens": usage,
                "llm_calls": trace.get("llm_calls"), "call_text": contains_call_text(text, None, finish == "length"),
            })  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="settings file of the stack to start (default cpu.yaml)")
    parser.add_argument("--url", default=None, help="use this running server instead of starting one")
    parser.add_argument("--api-key", default="not-needed")
    parser.add_argument("--max-tokens", type=int, default=64, help="the answer's budget, as a client sets it")
    parser.add_argument("--users", type=int, default=None, help="only the first N users of the set (quick runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("loadtests/results/bench_chat_checks.json"))
    args = parser.parse_args()
    console = Console()
    rng = random.Random(args.seed)
    checks = json.loads(CHECKS.read_text())["users"][: args.users]
    server = None
    if args.url is None:
        settings = load_settings(args.config)
        workdir = Path(tempfile.mkdtemp(prefix="pa-chat-checks-"))
        env = {"PERSONAAGENT_ALIGNMENT__SCHEDULE_ON_IMPORT": "false"}
        if args.config:
            env["PERSONAAGENT_CONFIG"] = str(args.config)
        server = start_our_stack(settings, workdir / "logs", workdir / "data", env)
    try:
        if server is not None:
            with console.status("starting the stack"):
                console.print(f"stack ready in {server.wait_ready():.0f} s")
        base_url = args.url or server.base_url  # type: ignore[union-attr]
        headers = {"Authorization": f"Bearer {args.api_key}"}
        with httpx.Client(base_url=base_url, timeout=900, headers=headers) as http:
            model = http.get("/v1/models").json()["data"][0]["id"]
            run = f"{int(time.time())}"
            with console.status("users: history, profile, persona"):
                for user in checks:
                    uid = f"{user['user']}.{run}"
                    http.post(f"/v1/users/{uid}/interactions", json=user["history"]).raise_for_status()
                    http.post(f"/v1/users/{uid}/persona").raise_for_status()  # waits for the profile
            results: dict[str, list[dict[str, Any]]] = {"personalized": [], "plain": []}
            total = sum(len(u["requests"]) for u in checks)
            done = 0
            for user in checks:
                uid = f"{user['user']}.{run}"
                conversation: dict[str, list[dict[str, str]]] = {"personalized": [], "plain": []}
                for request in user["requests"]:
                    kinds = ["personalized", "plain"]
                    rng.shuffle(kinds)
                    for kind in kinds:
                        # A follow-up continues the conversation; every other request starts afresh.
                        past = conversation[kind] if request["kind"] == "follow-up" else []
                        messages = [*past, {"role": "user", "content": request["content"]}]
                        body = {"model": model, "messages": messages, "stream": True, "temperature": 0.0,
                                "max_tokens": args.max_tokens} | ({"user": uid} if kind == "personalized" else {})  # fmt: skip
                        result = stream_chat(http, body) | {"user": user["user"], "kind": request["kind"]}
                        result["call_text"] = contains_call_text(result["text"], None, result["finish"] == "length")
                        results[kind].append(result)
                        conversation[kind] = [*messages, {"role": "assistant", "content": result["text"]}]
                    done += 1
                    console.print(f"  {done}/{total}", end="\r")
            with console.status("budget probe"):
                try:
                    probe = budget_probe(http, model, f"{checks[0]['user']}.{run}")
                except httpx.HTTPError as exc:  # the check set's results are kept either way
                    console.print(f"[red]budget probe failed[/red]: {exc!r}")
                    probe = []
            for user in checks:  # a running server keeps none of the check users
                http.delete(f"/v1/users/{user['user']}.{run}")
    finally:
        if server is not None:
            server.stop()

    mine = results["personalized"]
    n = len(mine)
    call_text = sum(r["call_text"] for r in mine)
    calls = statistics.mean(r["trace"].get("llm_calls", 1) for r in mine)
    rounds = statistics.mean(r["trace"].get("tool_llm_calls", 0) for r in mine)
    p50 = {k: {m: statistics.median(r[m] for r in v) * 1000 for m in ("ttft", "whole")} for k, v in results.items()}
    table = Table(title=f"Chat check set: {model}, {len(checks)} users x {n // len(checks)} requests, "
                        f"max_tokens {args.max_tokens}")  # fmt: skip
    for col in ("measure", "personalized", "plain", "ratio"):
        table.add_column(col, justify="right")
    table.add_row("answers with call text", f"{call_text} of {n}", f"{sum(r['call_text'] for r in results['plain'])} of {n}", "")
    table.add_row("LLM calls per request", f"{calls:.2f}", "1.00", "")
    table.add_row("tool rounds per request", f"{rounds:.2f}", "0.00", "")
    for m, label in (("ttft", "TTFT p50 ms"), ("whole", "whole answer p50 ms")):
        a, b = p50["personalized"][m], p50["plain"][m]
        table.add_row(label, f"{a:.0f}", f"{b:.0f}", f"{a / b:.2f}x")
    console.print(table)
    budget = Table(title='Budget probe: personalized "Say hi."')
    for col in ("max_tokens", "stream", "answer tokens", "usage completion", "finish", "LLM calls", "call text", "answer"):
        budget.add_column(col)
    for row in probe:
        budget.add_row(str(row["max_tokens"]), str(row["stream"]), str(row["answer_tokens"]),
                       str(row["usage_completion_tokens"] or "-"), str(row["finish"]), str(row["llm_calls"]),
                       str(row["call_text"]), repr(row["text"][:60]))  # fmt: skip
    console.print(budget)
    for r in mine:
        if r["call_text"]:
            console.print(f"[red]call text[/red] {r['user']} {r['kind']}: {r['text'][:120]!r}")
    summary = {
        "model": model, "requests": n, "max_tokens": args.max_tokens, "call_text": call_text,
        "plain_call_text": sum(r["call_text"] for r in results["plain"]), "llm_calls_per_request": calls,
        "tool_rounds_per_request": rounds, "p50_ms": p50,
        "answers": [{k: r[k] for k in ("user", "kind", "text", "finish", "call_text")} for r in mine],
        "budget_probe": probe,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    console.print(f"written: {args.out}")


if __name__ == "__main__":
    main()
