"""Memory benchmark: episodic search latency at 1,000 users x 100 memories, and import throughput.

Search is timed without the query embedding (queries are pre-embedded), as the target says:
index only, and index + SQLite row fetch (what the API returns), one query at a time ("unbatched") and
32 queries from different users per call ("batched", per-query time reported). Import throughput runs
the whole path (MiniLM embedding, SQLite commit, FAISS add) and reports where the time goes.

    .venv/bin/python -m loadtests.bench_memory
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import track
from rich.table import Table

from memory.embedder import Embedder
from memory.index import EpisodicIndex
from memory.records import InteractionIn
from memory.service import MemoryService, embedding_text
from memory.store import SQLiteStore
from personaagent.settings import MemorySettings


def percentiles(samples_s: list[float]) -> tuple[float, float]:
    arr = np.asarray(samples_s) * 1000
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--per-user", type=int, default=100)
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--import-items", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path("loadtests/results/bench_memory.json"))
    args = parser.parse_args()
    console = Console()
    rng = np.random.default_rng(0)
    workdir = Path(tempfile.mkdtemp(prefix="pa-bench-mem-"))
    embedder = Embedder()
    dim = embedder.dim
    store = SQLiteStore(workdir / "bench.db")
    service = MemoryService(store, embedder, EpisodicIndex(dim, "cpu"), MemorySettings(device="cpu"))

    def unit(n: int) -> np.ndarray:
        v = rng.standard_normal((n, dim)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    users = [f"user-{i:04d}" for i in range(args.users)]
    for user in track(users, description=f"loading {args.users} x {args.per_user} memories", console=console):
        items = [InteractionIn(input=f"{user} memory {j}") for j in range(args.per_user)]
        service.add_interactions_sync(user, items, "import", unit(args.per_user))
    console.print(f"{service.index.total()} vectors in {args.users} per-user indexes")

    queries = unit(args.queries)
    who = rng.integers(0, args.users, size=args.queries)
    results: dict[str, dict[str, float]] = {}

    def timed(label: str, fn, per_call: int = 1) -> None:  # type: ignore[no-untyped-def]
        samples = []
        for start in range(0, args.queries, per_call):
            t = time.perf_counter()
            fn(start)
            samples.append((time.perf_counter() - t) / per_call)
        p50, p99 = percentiles(samples)
        results[label] = {"p50_ms": p50, "p99_ms": p99}

    idx = service.index
    timed("index only, unbatched", lambda s: idx.search(users[who[s]], queries[s : s + 1], args.k))
    timed(
        "index + SQLite rows, unbatched",
        lambda s: service.search_vectors(users[who[s]], queries[s : s + 1], args.k),
    )

    def batched(start: int) -> None:
        for i in range(start, min(start + 32, args.queries)):
            service.search_vectors(users[who[i]], queries[i : i + 1], args.k)

    timed("index + SQLite rows, batched x32 (per query)", batched, per_call=32)

    # What serve.batch buys: the query embeddings of a batch are computed in one encoder call.
    texts = [f"what did user {i} say about films?" for i in range(args.queries)]
    n_embed = min(args.queries, 640)
    saved_queries = args.queries
    args.queries = n_embed
    timed(
        "with query embedding, unbatched",
        lambda s: service.search_vectors(users[who[s]], embedder.encode(texts[s : s + 1]), args.k),
    )

    def embedded_batch(start: int) -> None:
        vectors = embedder.encode(texts[start : start + 32])
        for j, i in enumerate(range(start, min(start + 32, args.queries))):
            service.search_vectors(users[who[i]], vectors[j : j + 1], args.k)

    timed("with query embedding, batched x32 (per query)", embedded_batch, per_call=32)
    args.queries = saved_queries

    # Import throughput, whole path, with a breakdown.
    texts = [f"Tag the movie number {i}: a story about {w}" for i, w in enumerate(rng.choice(["love", "war", "space", "crime"], args.import_items))]  # fmt: skip
    items = [InteractionIn(input=t, output="tag") for t in texts]
    t_embed = t_store = t_index = 0.0
    t0 = time.perf_counter()
    for start in track(range(0, len(items), 100), description="importing with embedding", console=console):
        batch = items[start : start + 100]
        t = time.perf_counter()
        vectors = embedder.encode([embedding_text(i) for i in batch])
        t_embed += time.perf_counter() - t
        t = time.perf_counter()
        ids = store.add_interactions("importer", batch, vectors, "import")
        t_store += time.perf_counter() - t
        t = time.perf_counter()
        service.index.add("importer", np.asarray(ids), vectors)
        t_index += time.perf_counter() - t
    total = time.perf_counter() - t0
    imp = {
        "items_per_s": len(items) / total,
        "embed_share": t_embed / total,
        "sqlite_share": t_store / total,
        "faiss_share": t_index / total,
    }

    table = Table(title=f"Episodic search, top-{args.k}, {args.users} users x {args.per_user} memories")
    for col in ("path", "p50 (ms)", "p99 (ms)", "target p99 <= 2 ms"):
        table.add_column(col, justify="right")
    for label, r in results.items():
        target = "n/a" if "embedding" in label else ("yes" if r["p99_ms"] <= 2 else "NO")
        table.add_row(label, f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}", target)
    console.print(table)
    t2 = Table(title=f"Import throughput ({args.import_items} items, batches of 100, embedding included)")
    for col in ("items/s", "embedder", "SQLite", "FAISS"):
        t2.add_column(col, justify="right")
    t2.add_row(
        f"{imp['items_per_s']:.0f}",
        f"{imp['embed_share']:.1%}",
        f"{imp['sqlite_share']:.1%}",
        f"{imp['faiss_share']:.1%}",
    )
    console.print(t2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"search": results, "import": imp}, indent=2))
    store.close()


if __name__ == "__main__":
    main()
