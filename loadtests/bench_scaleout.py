"""Scale-out benchmark: the state in SQLite vs PostgreSQL, one vs two memory replicas, side by side.

Two parts, each printing its backends side by side with the ratios the targets name:

- **service** (no Ray, no HTTP): `MemoryService` on each backend. Start time (`MemoryService.open` until
  ready) at each `--sizes` point, N users / M interactions generated straight into the store (random unit
  vectors; COPY on PostgreSQL, executemany on SQLite); the first search of a cold user (its index loads
  from the stored embeddings); warm search p50/p99 (version check + FAISS + row fetch; query pre-embedded)
  with where its time goes; import items/s (embedding + commit + index, and the commit alone).
- **stack** (`--part stack`: Ray + vLLM, `personaagent serve` on configs/cpu.yaml): SQLite, PostgreSQL with 1 and
  with 2 memory replicas. Search p50/p99 through the HTTP API (query embedding included), import items/s,
  personalized chat TTFT p50 (persona + priming search + tools, streamed through the official openai
  client), and the CPU seconds each process group spent in the search run (where the time goes).

PostgreSQL: a throwaway server of its own (initdb + pg_ctl, as the tests start one; durable: fsync and
synchronous commit on, as SQLite's WAL with synchronous=FULL), or `--postgres-url` (a database the run may
create databases in). Both parts run by default; `--part service` or `--part stack` runs one.

    .venv/bin/python -m loadtests.bench_scaleout --part service --sizes 1000x1000000 10000x1000000 \
        --start-runs 5 --plot docs/results/scaleout_service.png
    .venv/bin/python -m loadtests.bench_scaleout --part stack --stack-items 50   # one stack at a time

docs/benchmarks.md ("Scale-out: SQLite vs PostgreSQL") has the figures of 2026-12-07 and how to read them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import psycopg
from psycopg import sql
from psycopg.types.json import Json
from rich.console import Console
from rich.table import Table

from loadtests.servers import ServerProcess, start_our_stack
from memory.backends import sqlite_path
from memory.embedder import Embedder
from memory.records import InteractionIn
from memory.service import MemoryService
from memory.store import SQLiteStore, vector_bytes
from personaagent.postgres import PostgresDatabase
from personaagent.settings import Settings, StoreSettings, load_settings
from tests.postgres import PostgresCluster

BACKENDS = ("sqlite", "postgres")
DIM = 384  # all-MiniLM-L6-v2 (memory.embedder)
console = Console(width=150)


def pct(samples_s: Sequence[float], q: float) -> float:
    """The q-th percentile in milliseconds."""
    return float(np.percentile(np.asarray(samples_s) * 1000, q))


def unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def verdict(ok: bool) -> str:
    return "yes" if ok else "NO"


# -- generated data, bulk loaded -------------------------------------------------------------------------


def user_ids(n_users: int) -> list[str]:
    return [f"user-{i:06d}" for i in range(n_users)]


def histories(n_users: int, n_interactions: int) -> Iterator[tuple[str, int]]:
    """(user, how many interactions): M spread evenly over N users."""
    base, extra = divmod(n_interactions, n_users)
    for i, user in enumerate(user_ids(n_users)):
        yield user, base + (1 if i < extra else 0)


def _rows(
    n_users: int, n_interactions: int, seed: int, chunk: int = 20_000
) -> Iterator[list[tuple[Any, ...]]]:
    """Interaction rows (user, input, output, timestamp, metadata, source, created_at, embedding bytes) in
    chunks: the matrix of a chunk only, so 1M rows never sit in RAM at once."""
    rng = np.random.default_rng(seed)
    now = datetime.now(UTC)
    batch: list[tuple[Any, ...]] = []
    for user, count in histories(n_users, n_interactions):
        for j in range(count):
            batch.append(
                (user, f"{user} memory {j}: a note about topic {j % 97}", None, now, "{}", "import", now)
            )
            if len(batch) == chunk:
                yield _with_vectors(batch, rng)
                batch = []
    if batch:
        yield _with_vectors(batch, rng)


def _with_vectors(batch: list[tuple[Any, ...]], rng: np.random.Generator) -> list[tuple[Any, ...]]:
    vectors = unit_vectors(rng, len(batch))
    return [(*row, vector_bytes(v)) for row, v in zip(batch, vectors, strict=True)]


def load_sqlite(path: Path, n_users: int, n_interactions: int, seed: int) -> None:
    """The store's own schema (SQLiteStore creates it), then executemany in one transaction per chunk."""
    SQLiteStore(path).close()
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA synchronous=OFF")  # loading test data, not a measured write
        now = datetime.now(UTC).isoformat()
        with conn:
            conn.executemany(
                "INSERT INTO users(user_id, created_at, version) VALUES (?, ?, ?)",
                [(u, now, i + 1) for i, u in enumerate(user_ids(n_users))],
            )
            conn.execute("UPDATE version_counter SET value = ?", (n_users,))
        for chunk in _rows(n_users, n_interactions, seed):
            with conn:
                conn.executemany(
                    "INSERT INTO interactions(user_id, input, output, timestamp, metadata, source, created_at,"
                    " embedding) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(r[0], r[1], r[2], r[3].isoformat(), r[4], r[5], r[6].isoformat(), r[7]) for r in chunk],
                )
        conn.execute("ANALYZE")
    finally:
        conn.close()


def load_postgres(url: str, n_users: int, n_interactions: int, seed: int) -> None:
    """The store's own schema (its migrations), then binary COPY."""
    from memory.pg_store import PostgresStore

    db = PostgresDatabase(StoreSettings(url=url), name="bench-load")
    try:
        PostgresStore(db)
    finally:
        db.close()
    with psycopg.connect(url, autocommit=True) as conn:
        now = datetime.now(UTC)
        with conn.cursor().copy(
            "COPY users (user_id, created_at, version) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["text", "timestamptz", "int8"])
            for i, user in enumerate(user_ids(n_users)):
                copy.write_row((user, now, i + 1))
        conn.execute("SELECT setval('user_versions', %s)", (n_users,))
        for chunk in _rows(n_users, n_interactions, seed):
            with conn.cursor().copy(
                "COPY interactions (user_id, input, output, timestamp, metadata, source, created_at, embedding)"
                " FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(
                    ["text", "text", "text", "timestamptz", "json", "text", "timestamptz", "bytea"]
                )
                for row in chunk:
                    copy.write_row((*row[:4], Json(json.loads(row[4])), *row[5:]))
        conn.execute("ANALYZE")


# -- the service-level part ------------------------------------------------------------------------------


@dataclass
class Backend:
    """Where one backend's databases go: SQLite files under a folder, PostgreSQL databases on a server."""

    name: str
    root: Path
    server_url: str | None = None
    server_pid: int | None = None  # the PostgreSQL server's postmaster (its CPU time is counted)
    made: list[str] = field(default_factory=list)

    def new_database(self, label: str) -> Settings:
        """Settings of a fresh, empty database for `label`."""
        data_dir = self.root / self.name / label
        data_dir.mkdir(parents=True, exist_ok=True)
        if self.name == "sqlite":
            return Settings(data_dir=data_dir, memory={"device": "cpu"})
        assert self.server_url is not None
        db = f"bench_{label}_{uuid.uuid4().hex[:6]}".replace("-", "_").lower()
        with psycopg.connect(self.server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
        self.made.append(db)
        return Settings(data_dir=data_dir, memory={"device": "cpu"}, store={"url": self.url_of(db)})

    def url_of(self, db: str) -> str:
        assert self.server_url is not None
        return self.server_url.rsplit("/", 1)[0] + f"/{db}"

    def load(self, settings: Settings, n_users: int, n_interactions: int, seed: int) -> None:
        if self.name == "sqlite":
            load_sqlite(sqlite_path(settings), n_users, n_interactions, seed)
        else:
            load_postgres(settings.store.url.get_secret_value(), n_users, n_interactions, seed)

    def drop_all(self) -> None:
        """Every database made so far (on SQLite: the files too; a 1M-interaction one is 2 GB)."""
        shutil.rmtree(self.root / self.name, ignore_errors=True)
        if self.server_url is None:
            return
        with psycopg.connect(self.server_url, autocommit=True) as conn:
            for db in self.made:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
        self.made.clear()


def close_service(service: MemoryService) -> None:
    service.store.close()
    if service.documents is not None:
        with contextlib.suppress(Exception):
            service.documents.close()


# The machine is shared and its load moves: every measurement below alternates between the backends, one
# sample each in turn, so both see the same conditions and their ratio is what to read.


def timed_starts(settings: dict[str, Settings], runs: int) -> dict[str, dict[str, Any]]:
    """Seconds of `MemoryService.open` until it returns (ready to serve), per backend, runs alternating."""
    samples: dict[str, list[float]] = defaultdict(list)
    loaded: dict[str, int] = {}
    for _ in range(runs):
        for name, backend_settings in settings.items():
            started = time.perf_counter()
            service = MemoryService.open(backend_settings)
            samples[name].append(time.perf_counter() - started)
            loaded[name] = service.index.total()
            close_service(service)
    return {
        name: {
            "start_s": statistics.median(samples[name]),
            "start_runs_s": samples[name],
            "vectors_loaded_at_start": loaded[name],
        }
        for name in settings
    }


def searches(
    services: dict[str, MemoryService], users: list[str], rng: np.random.Generator, k: int, warm_queries: int
) -> dict[str, dict[str, float]]:
    """The first search of each of `users` with their index not in the cache (as after an eviction, or on a
    replica that has not served them yet), then warm searches over them (same queries on every backend),
    and the two store reads a warm search makes, each timed on its own (where the time goes)."""
    times: dict[str, dict[str, list[float]]] = {name: defaultdict(list) for name in services}
    for service in services.values():
        for user in users:
            service.index.remove_user(user)
    for user in users:
        q = unit_vectors(rng, 1)
        for name, service in services.items():
            started = time.perf_counter()
            service.search_vectors(user, q, k)
            times[name]["cold"].append(time.perf_counter() - started)
    queries = unit_vectors(rng, warm_queries)
    who = rng.integers(0, len(users), size=warm_queries)
    for i in range(warm_queries):
        user = users[who[i]]
        for name, service in services.items():
            started = time.perf_counter()
            hits = service.search_vectors(user, queries[i : i + 1], k)
            times[name]["warm"].append(time.perf_counter() - started)
            started = time.perf_counter()
            service.store.user_version(user)
            times[name]["version_read"].append(time.perf_counter() - started)
            started = time.perf_counter()
            service.store.get_interactions([h.interaction.id for h in hits[0]])
            times[name]["row_fetch"].append(time.perf_counter() - started)
    out = {}
    for name, t in times.items():
        out[name] = {
            "cold_p50_ms": pct(t["cold"], 50), "cold_p99_ms": pct(t["cold"], 99),
            "warm_p50_ms": pct(t["warm"], 50), "warm_p99_ms": pct(t["warm"], 99),
            "version_read_p50_ms": pct(t["version_read"], 50), "row_fetch_p50_ms": pct(t["row_fetch"], 50),
        }  # fmt: skip
    return out


def imports(
    services: dict[str, MemoryService], items: int, rng: np.random.Generator
) -> dict[str, dict[str, float]]:
    """Items/s of imports in batches of 100: the whole path (embedding + commit + index), and the commit
    alone (pre-embedded vectors, `Store.add_interactions`: what the backend decides)."""
    topics = ["love", "war", "space", "crime"]
    texts = [f"Tag the movie number {i}: a story about {topics[i % 4]}" for i in range(items)]
    batches = [
        [InteractionIn(input=t, output="tag") for t in texts[s : s + 100]] for s in range(0, items, 100)
    ]
    whole: dict[str, float] = defaultdict(float)
    commits: dict[str, list[float]] = defaultdict(list)
    for n, batch in enumerate(batches):
        vectors = unit_vectors(rng, len(batch))
        for name, service in services.items():
            started = time.perf_counter()
            service.add_interactions_sync(f"importer-{n % 10}", batch, "import")
            whole[name] += time.perf_counter() - started
            started = time.perf_counter()
            service.store.add_interactions(f"committer-{n % 10}", batch, vectors, "import")
            commits[name].append(time.perf_counter() - started)
    return {
        name: {
            "import_items_s": items / whole[name],
            "commit_items_s": items / sum(commits[name]),
            "commit_p50_ms": pct(commits[name], 50),
        }
        for name in services
    }


def service_part(args: argparse.Namespace, backends: dict[str, Backend]) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    Embedder()  # the first load in the process imports torch and sentence-transformers: not a start's cost
    results: dict[str, Any] = {"first_encoder_load_s": time.perf_counter() - started, "sizes": {}}
    for size in args.sizes:
        n_users, n_interactions = size
        label = f"{n_users}x{n_interactions}"
        settings = {}
        per_size: dict[str, Any] = {}
        for name, backend in backends.items():
            settings[name] = backend.new_database(f"svc_{label}")
            t = time.perf_counter()
            backend.load(settings[name], n_users, n_interactions, args.seed)
            per_size[name] = {"load_s": time.perf_counter() - t}
            console.print(f"{name} {label}: generated and bulk loaded in {per_size[name]['load_s']:.0f} s")
            MemoryService.open(
                settings[name]
            ).store.close()  # the other tables' migrations: once, not a start
        for name, row in timed_starts(settings, args.start_runs).items():
            per_size[name] |= row
        if size == args.sizes[-1]:  # searches and imports on the largest data set
            services = {name: MemoryService.open(s) for name, s in settings.items()}
            try:
                users = [user_ids(n_users)[i] for i in rng.choice(n_users, args.cold_users, replace=False)]
                for name, row in searches(services, users, rng, args.k, args.warm_queries).items():
                    per_size[name] |= row
                for name, row in imports(services, args.import_items, rng).items():
                    per_size[name] |= row
            finally:
                for service in services.values():
                    close_service(service)
        for backend in backends.values():
            backend.drop_all()
        results["sizes"][label] = per_size
    return results


def print_service(results: dict[str, Any], args: argparse.Namespace) -> None:
    sizes = list(results["sizes"])
    table = Table(title=f"Memory service ready: MemoryService.open, median of {args.start_runs} (the encoder's "
                        f"load included; its first, {results['first_encoder_load_s']:.0f} s of imports, is not)")  # fmt: skip
    for col in ("users x interactions", "SQLite (s)", "vectors loaded", "PostgreSQL (s)", "vectors loaded",
                "PG / SQLite"):  # fmt: skip
        table.add_column(col, justify="right")
    for label in sizes:
        s, p = results["sizes"][label]["sqlite"], results["sizes"][label]["postgres"]
        table.add_row(label, f"{s['start_s']:.2f}", f"{s['vectors_loaded_at_start']:,}", f"{p['start_s']:.2f}",
                      f"{p['vectors_loaded_at_start']:,}", ratio(p["start_s"], s["start_s"]))  # fmt: skip
    if len(sizes) >= 2:
        first, last = results["sizes"][sizes[0]], results["sizes"][sizes[-1]]
        growth = {b: last[b]["start_s"] / first[b]["start_s"] for b in BACKENDS}
        table.add_row(f"{sizes[-1]} / {sizes[0]}", f"{growth['sqlite']:.2f}x", "", f"{growth['postgres']:.2f}x", "",
                      f"target PG <= 1.2x: {verdict(growth['postgres'] <= 1.2)}")  # fmt: skip
    console.print(table)
    last = results["sizes"][sizes[-1]]
    s, p = last["sqlite"], last["postgres"]
    t2 = Table(title=f"Search and import, service level, on the {sizes[-1]} data set (top-{args.k}, query "
                     "pre-embedded)")  # fmt: skip
    for col in ("metric", "SQLite", "PostgreSQL", "PG / SQLite", "target"):
        t2.add_column(col, justify="right")
    rows = [
        ("cold user, first search p50 (ms)", "cold_p50_ms", ""),
        ("cold user, first search p99 (ms)", "cold_p99_ms", ""),
        ("warm search p50 (ms)", "warm_p50_ms", ""),
        ("warm search p99 (ms)", "warm_p99_ms", "<= 1.2x"),
        ("  of which: version read p50 (ms)", "version_read_p50_ms", ""),
        ("  of which: row fetch p50 (ms)", "row_fetch_p50_ms", ""),
        ("import, whole path (items/s)", "import_items_s", ">= 0.8x"),
        ("import, commit alone (items/s)", "commit_items_s", ""),
        ("commit of 100 items p50 (ms)", "commit_p50_ms", ""),
    ]
    for label, key, target in rows:
        r = p[key] / s[key]
        ok = "" if not target else verdict(r <= 1.2 if target.startswith("<=") else r >= 0.8)
        t2.add_row(label, f"{s[key]:.2f}", f"{p[key]:.2f}", f"{r:.2f}x", f"{target} {ok}".strip())
    console.print(t2)


def plot_service(results: dict[str, Any], path: Path) -> None:
    """Start time per data set and backend, and the first vs warm search of a user (a PNG for the docs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(results["sizes"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    x = np.arange(len(sizes))
    for offset, (name, color) in zip(
        (-0.2, 0.2), (("sqlite", "#4c72b0"), ("postgres", "#dd8452")), strict=True
    ):
        starts = [results["sizes"][size][name]["start_s"] for size in sizes]
        left.bar(x + offset, starts, 0.4, label="SQLite" if name == "sqlite" else "PostgreSQL", color=color)
        for xi, value in zip(x + offset, starts, strict=True):
            left.annotate(f"{value:.2f} s", (xi, value), ha="center", va="bottom", fontsize=8)
    left.set_xticks(x, [size.replace("x", " users x ") + " interactions" for size in sizes], fontsize=8)
    left.set_ylabel("memory service ready (s)")
    left.set_title("Start time")
    left.legend()
    last = results["sizes"][sizes[-1]]
    metrics = [
        ("cold_p50_ms", "first search\n(cold) p50"),
        ("warm_p50_ms", "warm p50"),
        ("warm_p99_ms", "warm p99"),
    ]
    x = np.arange(len(metrics))
    for offset, (name, color) in zip(
        (-0.2, 0.2), (("sqlite", "#4c72b0"), ("postgres", "#dd8452")), strict=True
    ):
        right.bar(x + offset, [last[name][key] for key, _ in metrics], 0.4, color=color)
    right.set_xticks(x, [label for _, label in metrics], fontsize=8)
    right.set_ylabel("ms (query pre-embedded)")
    right.set_title(f"Search, {sizes[-1]} data set")
    fig.suptitle("Memory service: SQLite vs PostgreSQL (loadtests/bench_scaleout.py)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


# -- the through-the-stack part --------------------------------------------------------------------------

STACK_CONFIGS = (("sqlite", 1), ("postgres", 1), ("postgres", 2))


def process_groups(roots: Sequence[psutil.Process]) -> dict[str, float]:
    """CPU seconds (user + system) so far of every process under `roots`, by what it is."""
    seen: dict[int, psutil.Process] = {}
    for root in roots:
        with contextlib.suppress(psutil.NoSuchProcess):
            for proc in [root, *root.children(recursive=True)]:
                seen[proc.pid] = proc
    groups: dict[str, float] = defaultdict(float)
    for proc in seen.values():
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            name = " ".join(proc.cmdline())[:160] or proc.name()
            times = proc.cpu_times()
            groups[_group_of(name)] += times.user + times.system
    return dict(groups)


def _group_of(cmdline: str) -> str:
    for key, group in (("memory", "memory replicas"), ("Engine", "engine (vLLM)"), ("VLLM", "engine (vLLM)"),
                       ("ingress", "ingress"), ("Ingress", "ingress"), ("alignment", "alignment"),
                       ("Alignment", "alignment"), ("postgres", "PostgreSQL"), ("Proxy", "Serve proxy")):  # fmt: skip
        if key in cmdline:
            return group
    return "Ray and the rest"


async def search_load(
    base_url: str, users: list[str], queries: int, concurrency: int
) -> tuple[list[float], float]:
    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=base_url, timeout=120) as client:

        async def one(i: int) -> None:
            async with sem:
                started = time.perf_counter()
                resp = await client.get(
                    f"/v1/users/{users[i % len(users)]}/memories",
                    params={"query": f"what about topic {i % 97}?", "k": 4},
                )
                resp.raise_for_status()
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(queries)))
        return latencies, queries / (time.perf_counter() - started)


async def import_load(base_url: str, users: list[str], per_user: int, concurrency: int) -> float:
    sem = asyncio.Semaphore(concurrency)
    batches = [(u, s) for u in users for s in range(0, per_user, 50)]
    async with httpx.AsyncClient(base_url=base_url, timeout=300) as client:

        async def one(user: str, start: int) -> None:
            body = [{"input": f"{user} says note {start + j} about topic {(start + j) % 97}", "output": "ok"}
                    for j in range(min(50, per_user - start))]  # fmt: skip
            async with sem:
                (await client.post(f"/v1/users/{user}/interactions", json=body)).raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(one(u, s) for u, s in batches))
        return len(users) * per_user / (time.perf_counter() - started)


def chat_ttfts(base_url: str, model: str, users: list[str], chats: int, max_tokens: int) -> list[float]:
    """Personalized chats one at a time (the memory hop is on each request's critical path), streamed through
    the official openai client: seconds to the first content chunk."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{base_url}/v1", api_key="unused-on-loopback", timeout=300, max_retries=0)
    out = []
    for i in range(chats):
        started = time.perf_counter()
        ttft = None
        stream = client.chat.completions.create(
            model=model, user=users[i % len(users)], stream=True, max_tokens=max_tokens, temperature=0,
            messages=[{"role": "user", "content": f"Round {i // len(users)}: what do my notes say about topic {i % 97}?"}],
        )  # fmt: skip
        for chunk in stream:
            if ttft is None and any(c.delta.content for c in chunk.choices):
                ttft = time.perf_counter() - started
        out.append(ttft if ttft is not None else time.perf_counter() - started)
    return out


def stack_run(backend: str, replicas: int, label: str, args: argparse.Namespace, work: Path,
              pg: Backend | None) -> dict[str, Any]:  # fmt: skip
    settings = load_settings(args.config)
    env = {
        "PERSONAAGENT_CONFIG": str(Path(args.config).resolve()),
        "PERSONAAGENT_MEMORY__NUM_REPLICAS": str(replicas),
        # Imports and searches measure the memory path: no profile rewrites or alignments on the engine
        # beside them (a user's profile is written on their first chat, which is not measured).
        "PERSONAAGENT_MEMORY__PROFILE_ON_IMPORT": "false",
        "PERSONAAGENT_ALIGNMENT__SCHEDULE_ON_IMPORT": "false",
    }
    if backend == "postgres":
        assert pg is not None
        env["PERSONAAGENT_STORE__URL"] = pg.new_database(f"stack_{replicas}").store.url.get_secret_value()
    server: ServerProcess = start_our_stack(settings, work / "logs" / label, work / "data" / label, env)
    try:
        ready_s = server.wait_ready()
        users = [f"stack-user-{u}" for u in range(args.stack_users)]
        imports = asyncio.run(import_load(server.base_url, users, args.stack_items, args.concurrency))
        asyncio.run(search_load(server.base_url, users, len(users) * 2, args.concurrency))  # warm every cache
        roots = [psutil.Process(server.proc.pid)] if server.proc else []
        if pg is not None and pg.server_pid is not None:
            roots.append(psutil.Process(pg.server_pid))
        cpu_before, wall = process_groups(roots), time.perf_counter()
        latencies, search_rps = asyncio.run(
            search_load(server.base_url, users, args.stack_queries, args.concurrency)
        )
        wall = time.perf_counter() - wall
        cpu_after = process_groups(roots)
        cpu = {g: cpu_after.get(g, 0.0) - cpu_before.get(g, 0.0) for g in cpu_after}
        model = settings.engine.served_model_name
        chat_ttfts(server.base_url, model, users, len(users), args.max_tokens)  # first chats: persona made
        ttfts = chat_ttfts(server.base_url, model, users, args.chats, args.max_tokens)
        return {
            "ready_s": ready_s, "import_items_s": imports,
            "search_p50_ms": pct(latencies, 50), "search_p99_ms": pct(latencies, 99), "search_req_s": search_rps,
            "search_wall_s": wall, "search_cpu_s": cpu,
            "ttft_p50_ms": pct(ttfts, 50), "ttft_p99_ms": pct(ttfts, 99),
        }  # fmt: skip
    finally:
        server.stop()


def stack_part(args: argparse.Namespace, pg: Backend) -> dict[str, Any]:
    """One stack after another (two at once do not fit 2 cores); the SQLite baseline again at the end
    (`--repeat-baseline`) shows how far the machine's load moved in between."""
    work = Path(tempfile.mkdtemp(prefix="pa-bench-scaleout-stack-"))
    runs = [(backend, replicas, f"{backend}-{replicas}") for backend, replicas in STACK_CONFIGS]
    if args.repeat_baseline:
        runs.append(("sqlite", 1, "sqlite-1 again"))
    results = {}
    for backend, replicas, label in runs:
        console.print(f"stack: {backend}, {replicas} memory replica(s)")
        results[label] = stack_run(
            backend, replicas, label, args, work, pg if backend == "postgres" else None
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)  # what is done so far, should a later run fail
        args.out.with_suffix(".partial.json").write_text(json.dumps(results, indent=2, default=str))
    pg.drop_all()
    shutil.rmtree(work, ignore_errors=True)  # kept when a run fails: its server logs are there
    return results


def print_stack(results: dict[str, Any], args: argparse.Namespace) -> None:
    base = results["sqlite-1"]
    table = Table(title=f"Through the stack (configs/cpu.yaml, one SmolLM2 engine; {args.stack_users} users x "
                        f"{args.stack_items} imported items; {args.stack_queries} searches and {args.chats} chats)")  # fmt: skip
    table.add_column("metric")
    for label in results:
        table.add_column(label, justify="right")
        if label != "sqlite-1":
            table.add_column(f"{label} / sqlite-1", justify="right")
    rows = [("search p50 (ms)", "search_p50_ms", None), ("search p99 (ms)", "search_p99_ms", "<= 1.2x"),
            ("search throughput (req/s)", "search_req_s", None), ("import (items/s)", "import_items_s", ">= 0.8x"),
            ("personalized chat TTFT p50 (ms)", "ttft_p50_ms", "<= 1.05x"), ("chat TTFT p99 (ms)", "ttft_p99_ms", None),
            ("stack ready (s)", "ready_s", None)]  # fmt: skip
    for name, key, target in rows:
        cells = [name]
        for label, r in results.items():
            cells.append(f"{r[key]:.1f}")
            if label != "sqlite-1":
                x = r[key] / base[key]
                ok = (
                    ""
                    if target is None
                    else (
                        " "
                        + verdict(
                            x <= float(target[3:-1]) if target.startswith("<=") else x >= float(target[3:-1])
                        )
                    )
                )
                cells.append(f"{x:.2f}x{ok}")
        table.add_row(*cells)
    console.print(table)
    groups = sorted({g for r in results.values() for g in r["search_cpu_s"]})
    t2 = Table(title="Where the search run's time goes: CPU seconds per process group (2 cores: at most "
                     "2 x wall seconds)")  # fmt: skip
    t2.add_column("process group")
    for label in results:
        t2.add_column(label, justify="right")
    for g in groups:
        t2.add_row(g, *[f"{r['search_cpu_s'].get(g, 0.0):.1f}" for r in results.values()])
    t2.add_row("wall seconds", *[f"{r['search_wall_s']:.1f}" for r in results.values()])
    t2.add_row("CPU / wall (cores busy)",
               *[f"{sum(r['search_cpu_s'].values()) / r['search_wall_s']:.2f}" for r in results.values()])  # fmt: skip
    console.print(t2)


# -- main ------------------------------------------------------------------------------------------------


def parse_size(text: str) -> tuple[int, int]:
    users, interactions = text.lower().split("x")
    return int(users), int(interactions)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=["service", "stack", "both"], default="both")
    parser.add_argument("--sizes", type=parse_size, nargs="+", default=[(1000, 1_000_000), (10_000, 1_000_000)],
                        help="USERSxINTERACTIONS data sets for the start-time comparison; searches and imports "
                             "run on the last")  # fmt: skip
    parser.add_argument("--start-runs", type=int, default=3)
    parser.add_argument("--cold-users", type=int, default=100)
    parser.add_argument("--warm-queries", type=int, default=2000)
    parser.add_argument("--import-items", type=int, default=2000)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--config", default="configs/cpu.yaml")
    parser.add_argument("--stack-users", type=int, default=20)
    parser.add_argument(
        "--stack-items", type=int, default=100, help="items imported per user (batches of 50)"
    )
    parser.add_argument("--stack-queries", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--chats", type=int, default=20)
    parser.add_argument("--repeat-baseline", action=argparse.BooleanOptionalAction, default=True,
                        help="run the SQLite stack again at the end (how far the machine's load moved)")  # fmt: skip
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--postgres-url", help="an existing server (default: a throwaway one of its own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("loadtests/results/bench_scaleout.json"))
    parser.add_argument("--plot", type=Path, help="a PNG of the service part's start times and searches")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="pa-bench-scaleout-"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, root, True)
        if args.postgres_url:
            server_url, server_pid = args.postgres_url, None
        else:
            cluster = PostgresCluster(durable=True)
            server_url = stack.enter_context(cluster)
            server_pid = int((cluster.data / "postmaster.pid").read_text().split()[0])
        backends = {
            "sqlite": Backend("sqlite", root),
            "postgres": Backend("postgres", root, server_url, server_pid),
        }
        stack.callback(backends["postgres"].drop_all)
        results: dict[str, Any] = {
            "args": {k: v for k, v in vars(args).items() if k != "out"} | {"out": str(args.out)}
        }
        if args.part in ("service", "both"):
            results["service"] = service_part(args, backends)
            print_service(results["service"], args)
            if args.plot:
                plot_service(results["service"], args.plot)
        if args.part in ("stack", "both"):
            results["stack"] = stack_part(args, backends["postgres"])
            print_stack(results["stack"], args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
