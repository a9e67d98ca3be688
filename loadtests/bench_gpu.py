"""The stack on a model architecture without its weights: raw vLLM vs the stack, personalization, alignment.

vLLM's `load_format: dummy` fills a model with random weights and reads only its `config.json`, so a GPU host
without the 48 GB of Mistral-Small's weights still runs the real kernels on the real shapes. This script
writes a model folder from an architecture shipped here (`ARCHS`: Mistral-Small-24B's text model, or a tiny
one for the CPU) with the embedded SmolLM2 tokenizer (`vocab_size` set to its size, so every sampled id
decodes), derives a config from the architecture's base config (configs/gpu-mistral-small.yaml on a GPU,
configs/cpu.yaml on the CPU), and measures in one run, side by side:

  serving          raw vLLM `AsyncLLM` in this process vs the whole stack over HTTP on the same engine
                   settings and the same prompts (random `--input-len` tokens in, exactly `--output-len`
                   out): req/s, TTFT and TPOT at each `--concurrency`;
  personalization  personalized vs plain chat TTFT p50 for warm users (history, persona, one chat done),
                   and the share of persona tokens served from the prefix cache;
  alignment        the alignment actor pool vs the sequential loop (loadtests/bench_alignment.py), and chat
                   TTFT p50 while the pool runs vs idle.

The raw engine runs first and is shut down before the stack starts: each has the accelerator to itself.
Random weights write random tokens: never an end of text, never a tool call, so every generation runs to its
`max_tokens`, and the figures are the cost of the work, not of what a real model would choose to write.
The tokenizer's template (SmolLM2's) knows no tools, so the agent writes its own Hermes tool block, as it
does for SmolLM2. Writes JSON and a PNG (`--out`).

    .venv/bin/python -m loadtests.bench_gpu                 # Mistral-Small-24B's architecture on one GPU
    .venv/bin/python -m loadtests.bench_gpu --arch small    # a tiny architecture on the CPU
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from loadtests.bench_agent import bodies_for, history_for, run_phase, stream_one
from loadtests.bench_alignment import LABELS, chat_ttft, run_pool, run_sequential
from loadtests.servers import ServerProcess, start_our_stack
from personaagent.model_cache import prepare_embedded_model
from personaagent.settings import REPO_ROOT, Settings, load_settings
from serving import vllm_compat

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


@dataclass(frozen=True)
class Arch:
    """A model architecture (config.json without `vocab_size`), the config it runs under, and the run's
    defaults for it."""

    config: dict[str, Any]
    base_config: str
    engine: dict[str, Any]  # engine settings on top of the base config's
    input_len: int
    output_len: int
    concurrency: tuple[int, ...]
    users: int  # personalization: warm users
    rounds: int  # personalization: questions per user
    align_users: int
    align_seq_users: int  # the sequential loop's time is linear in users: a sample of them is timed
    chat_samples: int  # chat TTFT samples, idle and during the pool
    alignment: dict[str, Any] = field(default_factory=dict)


ARCHS: dict[str, Arch] = {
    # Mistral-Small-3.x 24B, its text model (MistralForCausalLM; 23.6B parameters, ~47 GB in bf16). The
    # released checkpoints carry the same shapes under Mistral's params.json.
    "mistral-small-24b": Arch(
        config={
            "architectures": ["MistralForCausalLM"],
            "model_type": "mistral",
            "hidden_size": 5120,
            "intermediate_size": 32768,
            "num_hidden_layers": 40,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "hidden_act": "silu",
            "max_position_embeddings": 32768,
            "rms_norm_eps": 1e-05,
            "rope_theta": 100000000.0,
            "sliding_window": None,
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
        },
        base_config="configs/gpu-mistral-small.yaml",
        # One GPU: one replica, no autoscaling (a second replica would wait for a GPU that is not there).
        engine={"autoscaling": None, "num_replicas": 1},
        input_len=512,
        output_len=128,
        concurrency=(1, 16, 64),
        users=8,
        rounds=2,
        align_users=32,
        align_seq_users=6,
        chat_samples=10,
        # Random weights never stop early: budgets that keep the run within minutes (the defaults are 64/400).
        alignment={"answer_max_tokens": 32, "update_max_tokens": 128},
    ),
    # A tiny model of the same family for the CPU: the stack test runs the whole script with it.
    "small": Arch(
        config={
            "architectures": ["MistralForCausalLM"],
            "model_type": "mistral",
            "hidden_size": 256,
            "intermediate_size": 512,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 64,
            "hidden_act": "silu",
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-05,
            "rope_theta": 10000.0,
            "sliding_window": None,
            "tie_word_embeddings": True,
            "torch_dtype": "float32",
        },
        base_config="configs/cpu.yaml",
        # No torch.compile: on 2 cores it would take longer than the whole run.
        engine={
            "extra_engine_args": {"load_format": "dummy", "enforce_eager": True},
            "cpu_kvcache_space_gib": 1,
        },
        input_len=128,
        output_len=16,
        concurrency=(1, 8),
        users=2,
        rounds=1,
        align_users=4,
        align_seq_users=1,
        chat_samples=3,
        alignment={"answer_max_tokens": 4, "update_max_tokens": 32},
    ),
}


def write_model_folder(arch: Arch, target: Path) -> Path:
    """config.json of `arch` plus the embedded model's tokenizer: all vLLM's dummy loader reads."""
    tokenizer_dir = prepare_embedded_model(Settings().model_cache_dir / "smollm2-135m-instruct-bf16")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    target.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy(tokenizer_dir / name, target / name)
    config = {
        **arch.config,
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    (target / "config.json").write_text(json.dumps(config, indent=2))
    return target


def write_config(arch_name: str, arch: Arch, model_dir: Path, workdir: Path) -> Path:
    """The architecture's base config, served from `model_dir` with random weights, data in `workdir`."""
    config = yaml.safe_load((REPO_ROOT / arch.base_config).read_text())
    engine = config.setdefault("engine", {})
    engine.update(
        model=str(model_dir),
        served_model_name=f"dummy-{arch_name}",
        # An HF-format folder: Mistral's own format (tokenizer_mode/config_format/load_format) does not apply.
        extra_engine_args={"load_format": "dummy"},
        # SmolLM2's template ignores `tools`: the agent writes its Hermes tool block (tests/unit/test_configs.py).
        tool_call_parser="hermes",
        tools_in_template=False,
    )
    engine.update(arch.engine)
    config["data_dir"] = str(workdir / "data")
    config["model_cache_dir"] = str(workdir / "cache")
    config.setdefault("memory", {})["placement_resource"] = None  # one node: no resource to place by
    config.setdefault("alignment", {}).update(arch.alignment)
    path = workdir / f"bench-{arch_name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def random_prompts(model_dir: Path, n: int, input_len: int, seed: int) -> list[list[dict[str, str]]]:
    """`n` user messages of `input_len` random tokens (decoded to text), the same for both sides."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rng = random.Random(seed)
    special = set(tokenizer.all_special_ids)
    pool = [i for i in range(len(tokenizer)) if i not in special]
    return [
        [{"role": "user", "content": tokenizer.decode([rng.choice(pool) for _ in range(input_len)])}]
        for _ in range(n)
    ]


def summarize(results: list[dict[str, Any]], wall_s: float) -> dict[str, float]:
    """req/s, output tok/s, TTFT p50/p99 and TPOT p50 (ms) of one concurrency level."""
    ttft = sorted(r["ttft"] for r in results)
    tpot = [(r["whole"] - r["ttft"]) / (r["tokens"] - 1) for r in results if r["tokens"] > 1]
    return {
        "requests": len(results),
        "req_per_s": len(results) / wall_s,
        "output_tok_per_s": sum(r["tokens"] for r in results) / wall_s,
        "ttft_p50_ms": statistics.median(ttft) * 1000,
        "ttft_p99_ms": ttft[min(len(ttft) - 1, round(0.99 * (len(ttft) - 1)))] * 1000,
        "tpot_p50_ms": statistics.median(tpot) * 1000 if tpot else float("nan"),
        "prompt_tokens_mean": statistics.mean(r["prompt_tokens"] for r in results),
    }


def requests_at(concurrency: int) -> int:
    return max(4, 2 * concurrency)


# -- raw vLLM -----------------------------------------------------------------------------------------


async def raw_serving(
    settings: Settings, prompts: list[list[dict[str, str]]], args: argparse.Namespace, console: Console
) -> tuple[float, dict[str, dict[str, float]]]:
    """AsyncLLM with the stack's own engine arguments (serving.engine.EngineService), fed token ids."""
    from serving.engine import EngineService

    started = time.monotonic()
    service = EngineService(settings)
    await service.start()
    ready_s = time.monotonic() - started
    console.print(f"raw AsyncLLM ready in {ready_s:.0f} s")
    try:
        tokenizer = service.engine.get_tokenizer()
        token_ids = [
            tokenizer.encode(
                tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True),
                add_special_tokens=False,
            )
            for m in prompts
        ]
        sampling = vllm_compat.load("SamplingParams")(
            temperature=0.0, max_tokens=args.output_len, ignore_eos=True
        )

        async def one(ids: list[int]) -> dict[str, Any]:
            sent = time.perf_counter()
            ttft = None
            tokens = 0
            async for out in service.engine.generate({"prompt_token_ids": ids}, sampling, uuid.uuid4().hex):
                tokens = len(out.outputs[0].token_ids)
                if ttft is None and tokens:
                    ttft = time.perf_counter() - sent
            whole = time.perf_counter() - sent
            return {"ttft": ttft or whole, "whole": whole, "tokens": tokens, "prompt_tokens": len(ids)}

        async def level(concurrency: int, ids: list[list[int]]) -> tuple[list[dict[str, Any]], float]:
            gate = asyncio.Semaphore(concurrency)

            async def gated(x: list[int]) -> dict[str, Any]:
                async with gate:
                    return await one(x)

            t0 = time.perf_counter()
            results = await asyncio.gather(*(gated(x) for x in ids))
            return list(results), time.perf_counter() - t0

        await level(2, token_ids[:2])  # warm-up
        out = {}
        for concurrency in args.concurrency:
            results, wall = await level(concurrency, token_ids[: requests_at(concurrency)])
            out[f"c{concurrency}"] = summarize(results, wall)
        return ready_s, out
    finally:
        service.shutdown()


# -- the stack ----------------------------------------------------------------------------------------


def stack_serving(
    stack: ServerProcess, model: str, prompts: list[list[dict[str, str]]], args: argparse.Namespace
) -> dict[str, dict[str, float]]:
    """The same prompts through the stack's OpenAI endpoint (no `user`: the plain path), streamed."""

    def body(messages: list[dict[str, str]]) -> dict[str, Any]:
        return {"model": model, "messages": messages, "max_tokens": args.output_len, "temperature": 0.0,
                "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip

    def as_raw(r: dict[str, Any]) -> dict[str, Any]:
        usage = r["usage"] or {}
        return r | {
            "tokens": usage.get("completion_tokens", 0),
            "prompt_tokens": usage.get("prompt_tokens", 0),
        }

    asyncio.run(run_phase(stack.base_url, [("plain", body(m)) for m in prompts[:2]], 2))  # warm-up
    out = {}
    for concurrency in args.concurrency:
        jobs = [("plain", body(m)) for m in prompts[: requests_at(concurrency)]]
        t0 = time.perf_counter()
        results = asyncio.run(run_phase(stack.base_url, jobs, concurrency))["plain"]
        out[f"c{concurrency}"] = summarize([as_raw(r) for r in results], time.perf_counter() - t0)
    return out


def personalization(stack: ServerProcess, model: str, args: argparse.Namespace) -> dict[str, Any]:
    """Warm users; then per question the personalized request and the same question plain, one at a time."""
    users = [f"gpu-bench-{i:02d}@example.com" for i in range(args.users)]
    with httpx.Client(base_url=stack.base_url, timeout=600) as http:
        for n, user in enumerate(users):
            http.post(f"/v1/users/{user}/interactions", json=history_for(n)).raise_for_status()
            http.post("/v1/chat/completions", json={"model": model, "user": user, "max_tokens": 4,
                      "messages": [{"role": "user", "content": "Hello!"}]}).raise_for_status()  # fmt: skip

    async def measure() -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {"personalized": [], "plain": []}
        async with httpx.AsyncClient(base_url=stack.base_url, timeout=600) as client:
            for r in range(args.rounds):
                for user in users:
                    bodies = bodies_for(model, user, f"What should I try next? (question {r})", 16, None)
                    for kind in ("personalized", "plain"):
                        out[kind].append(await stream_one(client, kind, bodies[kind]))
        return out

    results = asyncio.run(measure())
    ttft = {kind: statistics.median(r["ttft"] for r in rs) * 1000 for kind, rs in results.items()}
    persona = [
        (
            r["trace"]["persona_tokens"],
            (r["usage"].get("prompt_tokens_details") or {}).get("cached_tokens") or 0,
        )
        for r in results["personalized"]
    ]
    total = sum(p for p, _ in persona)
    return {
        "users": len(users),
        "questions": len(results["personalized"]),
        "ttft_p50_ms": ttft,
        "personalized_over_plain": ttft["personalized"] / ttft["plain"],
        "persona_token_hit_rate": sum(min(c, p) for p, c in persona) / total if total else None,
        "llm_calls_per_request": statistics.mean(r["trace"]["llm_calls"] for r in results["personalized"]),
    }


def alignment(
    stack: ServerProcess, model: str, settings: Settings, args: argparse.Namespace
) -> dict[str, Any]:
    """The actor pool on every user (chat TTFT measured while it runs) vs the sequential loop on a sample."""
    users = [f"gpu-align-{i:03d}" for i in range(args.align_users)]
    with httpx.Client(base_url=stack.base_url, timeout=600) as http:
        for n, user in enumerate(users):
            label = LABELS[n % len(LABELS)]
            items = [
                {"input": f"Tag the movie: story {j} of user {n} about {label}", "output": label}
                for j in range(4)
            ]
            http.post(f"/v1/users/{user}/interactions", json=items).raise_for_status()
            http.post(f"/v1/users/{user}/persona").raise_for_status()
    idle = asyncio.run(chat_ttft(stack.base_url, model, args.chat_samples))
    with Progress(transient=True) as progress:

        async def pool_with_chat() -> tuple[float, list[dict[str, Any]], list[float], bool]:
            pool = asyncio.create_task(run_pool(stack.base_url, users, progress))
            await asyncio.sleep(1)  # the first round has started
            busy = await chat_ttft(stack.base_url, model, args.chat_samples)
            overlapped = not pool.done()
            wall, jobs = await pool
            return wall, jobs, busy, overlapped

        pool_s, jobs, busy, overlapped = asyncio.run(pool_with_chat())
        sample = users[: args.align_seq_users]
        seq_s, outcomes, _ = asyncio.run(run_sequential(stack.base_url, model, sample, settings, progress))
    done = [j for j in jobs if j["state"] == "done"]
    pool_per_user, seq_per_user = pool_s / len(users), seq_s / len(sample)
    return {
        "users": len(users),
        "sequential_users": len(sample),
        "pool_s": pool_s,
        "sequential_s": seq_s,
        "pool_s_per_user": pool_per_user,
        "sequential_s_per_user": seq_per_user,
        "pool_speedup": seq_per_user / pool_per_user,
        "jobs_done": len(done),
        "sequential_done": len(outcomes),
        "jobs_failed": len(jobs) - len(done),
        "chat_ttft_p50_ms": {
            "idle": statistics.median(idle) * 1000,
            "pool_running": statistics.median(busy) * 1000,
        },
        "chat_measured_while_pool_ran": overlapped,
        "budgets": {
            "answer_max_tokens": settings.alignment.answer_max_tokens,
            "update_max_tokens": settings.alignment.update_max_tokens,
        },
    }


# -- report -------------------------------------------------------------------------------------------


def hardware() -> dict[str, Any]:
    found: dict[str, Any] = {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
    try:
        import torch

        if torch.cuda.is_available():
            found["gpu"] = torch.cuda.get_device_name(0)
            found["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    except ImportError:
        pass
    return found


def print_table(console: Console, summary: dict[str, Any]) -> None:
    table = Table(title=f"{summary['arch']} with random weights ({summary['hardware'].get('gpu', 'CPU')}), "
                        f"in {summary['input_len']} / out {summary['output_len']} tokens")  # fmt: skip
    for col in ("measure", "raw vLLM", "stack", "stack/raw"):
        table.add_column(col, justify="right")
    for level, raw in summary["serving"]["raw"].items():
        ours = summary["serving"]["stack"][level]
        for key, label in (
            ("req_per_s", "req/s"),
            ("ttft_p50_ms", "TTFT p50 ms"),
            ("tpot_p50_ms", "TPOT p50 ms"),
        ):
            table.add_row(f"{label}, concurrency {level[1:]}", f"{raw[key]:.2f}", f"{ours[key]:.2f}",
                          f"{ours[key] / raw[key]:.2f}x" if raw[key] else "")  # fmt: skip
    table.add_row(
        "engine start to ready (s)",
        f"{summary['ready_s']['raw']:.0f}",
        f"{summary['ready_s']['stack']:.0f}",
        "",
    )
    pers = summary["personalization"]
    table.add_row("TTFT p50 ms: plain vs personalized (warm users)", f"{pers['ttft_p50_ms']['plain']:.0f}",
                  f"{pers['ttft_p50_ms']['personalized']:.0f}", f"{pers['personalized_over_plain']:.2f}x")  # fmt: skip
    hit = pers["persona_token_hit_rate"]
    table.add_row("persona tokens from the prefix cache", "", f"{hit:.1%}" if hit is not None else "n/a", "")
    align = summary["alignment"]
    table.add_row("alignment s/user: sequential loop vs pool", f"{align['sequential_s_per_user']:.2f}",
                  f"{align['pool_s_per_user']:.2f}", f"{align['pool_speedup']:.1f}x faster")  # fmt: skip
    chat = align["chat_ttft_p50_ms"]
    table.add_row("chat TTFT p50 ms: idle vs pool running", f"{chat['idle']:.0f}", f"{chat['pool_running']:.0f}",
                  f"{chat['pool_running'] / chat['idle']:.2f}x")  # fmt: skip
    console.print(table)


def plot(summary: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    levels = list(summary["serving"]["raw"])
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    width = 0.38
    for ax, key, label in zip(axes[:3], ("req_per_s", "ttft_p50_ms", "tpot_p50_ms"),
                              ("req/s", "TTFT p50 (ms)", "TPOT p50 (ms)"), strict=True):  # fmt: skip
        for n, side in enumerate(("raw", "stack")):
            values = [summary["serving"][side][lv][key] for lv in levels]
            ax.bar([i + (n - 0.5) * width for i in range(len(levels))], values, width, label=side)
        ax.set_xticks(range(len(levels)), [f"c={lv[1:]}" for lv in levels])
        ax.set_title(label)
        ax.legend()
    pers, align = summary["personalization"], summary["alignment"]
    bars = {"plain": pers["ttft_p50_ms"]["plain"], "personalized": pers["ttft_p50_ms"]["personalized"],
            "chat idle": align["chat_ttft_p50_ms"]["idle"], "chat, pool on": align["chat_ttft_p50_ms"]["pool_running"]}  # fmt: skip
    axes[3].bar(list(bars), list(bars.values()), color=["C0", "C1", "C0", "C1"])
    axes[3].set_title(f"TTFT p50 (ms); pool {align['pool_speedup']:.1f}x the loop")
    axes[3].tick_params(axis="x", labelrotation=20)
    fig.suptitle(
        f"{summary['arch']}, random weights, {summary['hardware'].get('gpu', 'CPU')}, {summary['date']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", choices=sorted(ARCHS), default="mistral-small-24b")
    parser.add_argument("--model-dir", type=Path, default=None, help="reuse or write the model folder here")
    parser.add_argument("--input-len", type=int, default=None)
    parser.add_argument("--output-len", type=int, default=None)
    parser.add_argument("--concurrency", type=int, nargs="+", default=None)
    parser.add_argument("--users", type=int, default=None, help="personalization: warm users")
    parser.add_argument("--rounds", type=int, default=None, help="personalization: questions per user")
    parser.add_argument("--align-users", type=int, default=None)
    parser.add_argument("--align-seq-users", type=int, default=None)
    parser.add_argument("--chat-samples", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prepare-only", action="store_true", help="write the model folder and config, stop")
    parser.add_argument("--out", type=Path, default=Path("loadtests/results/bench_gpu.json"))
    args = parser.parse_args(argv)
    arch = ARCHS[args.arch]
    for name in ("input_len", "output_len", "concurrency", "users", "rounds", "align_users", "align_seq_users",
                 "chat_samples"):  # fmt: skip
        if getattr(args, name) is None:
            setattr(args, name, getattr(arch, name))
    console = Console()
    began = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="pa-bench-gpu-"))
    model_dir = args.model_dir or workdir / "model"
    if not (model_dir / "config.json").is_file():
        write_model_folder(arch, model_dir)
    config = write_config(args.arch, arch, model_dir.resolve(), workdir)
    console.print(f"model folder {model_dir}, config {config}")
    if args.prepare_only:
        return {}
    settings = load_settings(config)
    model = settings.engine.served_model_name
    prompts = random_prompts(model_dir, requests_at(max(args.concurrency)), args.input_len, args.seed)

    phase_s: dict[str, float] = {"prepare": time.monotonic() - began}
    raw_ready, raw = asyncio.run(raw_serving(settings, prompts, args, console))
    gc.collect()  # the raw engine's last references go now, not at interpreter exit
    phase_s["raw"] = time.monotonic() - began - sum(phase_s.values())
    env = {"PERSONAAGENT_CONFIG": str(config), "PERSONAAGENT_AGENT__TRACE_FINAL_PROMPT": "true",
           "PERSONAAGENT_ALIGNMENT__SCHEDULE_ON_IMPORT": "false"}  # fmt: skip
    stack = start_our_stack(settings, workdir / "logs", workdir / "data", env)
    try:
        with console.status("starting the stack"):
            stack_ready = stack.wait_ready()
        console.print(f"stack ready in {stack_ready:.0f} s")

        def lap(name: str) -> None:
            phase_s[name] = time.monotonic() - began - sum(phase_s.values())

        lap("stack_start")
        with console.status("serving: the same prompts through the stack"):
            ours = stack_serving(stack, model, prompts, args)
        lap("stack_serving")
        with console.status("personalization: warm users"):
            pers = personalization(stack, model, args)
        lap("personalization")
        with console.status("alignment: pool vs loop"):
            align = alignment(stack, model, settings, args)
        lap("alignment")
    except BaseException:
        console.print(f"failed; the stack's log: {stack.log_path}")
        raise
    finally:
        stack.stop()

    summary: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "command": " ".join(
            [Path(sys.executable).name, "-m", "loadtests.bench_gpu", *(argv or sys.argv[1:])]
        ),
        "hardware": hardware(),
        "vllm": vllm_compat.installed_version(),
        "arch": args.arch,
        "architecture": json.loads((model_dir / "config.json").read_text()),
        "engine": settings.engine.model_dump(mode="json"),
        "input_len": args.input_len,
        "output_len": args.output_len,
        "ready_s": {"raw": raw_ready, "stack": stack_ready},
        "serving": {"raw": raw, "stack": ours},
        "personalization": pers,
        "alignment": align,
    }
    summary["elapsed_s"] = time.monotonic() - began
    summary["phase_s"] = phase_s
    print_table(console, summary)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    png = args.out.with_suffix(".png")
    console.print(f"written: {args.out}" + (f", {png}" if plot(summary, png) else " (no matplotlib: no PNG)"))
    console.print(
        f"total {summary['elapsed_s']:.0f} s: " + ", ".join(f"{k} {v:.0f} s" for k, v in phase_s.items())
    )
    shutil.rmtree(workdir / "data", ignore_errors=True)
    return summary


if __name__ == "__main__":
    main()
