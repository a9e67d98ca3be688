"""The stack on a Ray cluster of two nodes on this machine, with its state in PostgreSQL (a real server:
tests/postgres.py): two memory replicas on different nodes, two alignment replicas.

- a write through one memory replica is read through the other at once (each called directly, through
  the deployment's handle and its consistent-hash router);
- a memory replica killed (`ray.kill` of its actor) while imports and personalized chats run: no
  acknowledged write is lost, every chat is answered (a client retry on 503 is fine, a 500 never is);
- an alignment replica killed mid-job: every one of N queued jobs ends `done`, and each writes its
  persona at most once (the job's result names the version it wrote);
- then the whole worker node removed (`Cluster.remove_node`: its raylet and every process on it), with
  the same load and the same result.

`ray.cluster_utils.Cluster` runs both nodes as children of this test: `ray start` daemons could only be
stopped with `ray stop`, which stops every Ray on the machine. The nodes keep their files (and the "current
cluster" address file) in a temporary folder of their own (RAY_TMPDIR), so another `ray.init()` on the
machine never joins this cluster. The worker node advertises no CPU: only the memory replicas (0 CPUs,
`memory.max_replicas_per_node: 1`) go there, and the engine, ingress and alignment stay on the head.
Serve's proxy runs on the head only (both nodes share one address and would both bind the port).

Runs first (`first` marker): one stack at a time fits this machine's memory, and the suite's shared stack
starts on first use. About 5-6 minutes on 2 cores, most of it the start.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil
import psycopg
import pytest

from loadtests.servers import free_port
from tests.postgres import fresh_schema
from tests.stack.harness import Stack, stack_env
from tests.stack.helpers import wait_job

pytestmark = pytest.mark.first

APP = "personaagent"
MODEL = "smollm2-135m-instruct"
WORDS = ("amber basil cedar delta ember fjord garnet harbor iris juniper kelp lumen maple nectar onyx "
         "pepper quartz raven saffron tundra umber violet willow xenon yarrow zephyr").split()  # fmt: skip


@dataclass
class MultiNode:
    cluster: Any  # ray.cluster_utils.Cluster
    worker: Any  # its worker node
    stack: Stack
    postgres_url: str


def _replica_states(deployment: str) -> dict[str, int]:
    from ray import serve

    app = serve.status().applications.get(APP)
    if app is None or deployment not in app.deployments:
        return {}
    return {str(state): n for state, n in app.deployments[deployment].replica_states.items()}


def _wait_running(deployment: str, replicas: int, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _replica_states(deployment).get("RUNNING", 0) >= replicas:
            return
        time.sleep(1)
    raise TimeoutError(f"{deployment}: {_replica_states(deployment)} after {timeout_s:g} s")


def _stop_leftovers(procs: list[psutil.Process]) -> None:
    """What the cluster left of the processes this test started (by their pids)."""
    _, alive = psutil.wait_procs(procs, timeout=0)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=10)


@pytest.fixture(scope="module")
def multinode(postgres_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MultiNode]:
    import ray
    from ray.cluster_utils import Cluster

    ray_tmp = tempfile.mkdtemp(prefix="pa-ray-", dir="/tmp")  # short: Ray's socket paths live under it
    with pytest.MonkeyPatch.context() as env, fresh_schema(postgres_server) as postgres_url:
        env.setenv("RAY_TMPDIR", ray_tmp)
        for name, value in {
            "RAY_USAGE_STATS_ENABLED": "0",
            "VLLM_NO_USAGE_STATS": "1",
            "HF_HUB_OFFLINE": "1",
        }.items():
            env.setenv(name, value)
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4})
        stack: Stack | None = None
        try:
            worker = cluster.add_node(num_cpus=0)
            cluster.wait_for_nodes()
            ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
            port = free_port()
            data_dir = tmp_path_factory.mktemp("multinode-data")
            settings = stack_env(port, data_dir) | {
                "PERSONAAGENT_RAY__ADDRESS": cluster.address,
                "PERSONAAGENT_STORE__URL": postgres_url,
                "PERSONAAGENT_STORE__JOB_LEASE_S": "3",
                "PERSONAAGENT_SERVER__PROXY_LOCATION": "HeadOnly",
                "PERSONAAGENT_MEMORY__NUM_REPLICAS": "2",
                "PERSONAAGENT_MEMORY__MAX_REPLICAS_PER_NODE": "1",
                "PERSONAAGENT_MEMORY__NUM_CPUS": "0",
                "PERSONAAGENT_MEMORY__PROFILE_ON_IMPORT": "false",
                "PERSONAAGENT_ALIGNMENT__NUM_REPLICAS": "2",
                "PERSONAAGENT_ALIGNMENT__POOL_SIZE": "1",
                "PERSONAAGENT_ALIGNMENT__N": "1",
                "PERSONAAGENT_ALIGNMENT__ANSWER_MAX_TOKENS": "8",
                "PERSONAAGENT_ALIGNMENT__UPDATE_MAX_TOKENS": "32",
                "PERSONAAGENT_ALIGNMENT__ROUND_SIZE": "2",
                # Lean on 2 cores: a short context, few sequences, no tool rounds (the memory search before
                # each personalized chat still runs: agent.auto_memory_search).
                "PERSONAAGENT_ENGINE__MAX_MODEL_LEN": "2048",
                "PERSONAAGENT_ENGINE__MAX_NUM_SEQS": "16",
                "PERSONAAGENT_ENGINE__CPU_KVCACHE_SPACE_GIB": "1",
                "PERSONAAGENT_AGENT__MAX_STEPS": "0",
            }
            log_path = tmp_path_factory.mktemp("multinode-logs") / "multinode.log"
            stack = Stack(port, data_dir, log_path, settings)
            stack.start()
            _wait_running("memory", 2)
            _wait_running("alignment", 2)
            yield MultiNode(cluster, worker, stack, postgres_url)
        finally:
            ours = psutil.Process().children(recursive=True)
            if stack is not None:
                stack.stop()
            ray.shutdown()
            cluster.shutdown()
            _stop_leftovers(ours)
            shutil.rmtree(ray_tmp, ignore_errors=True)


def _memory_handle() -> Any:
    from ray import serve

    return serve.get_deployment_handle("memory", app_name=APP)


def _memory_replicas() -> dict[str, dict[str, Any]]:
    """replica tag -> its stats (node, actor name, cache counters), from every replica that answers."""
    answers = _memory_handle().broadcast("stats").results(timeout_s=60, return_exceptions=True)
    return {s["replica"]: s for s in answers if isinstance(s, dict)}


def _route_keys() -> dict[str, str]:
    """A routing key (Serve's session_id) for each memory replica: the consistent-hash router sends every
    call with that key to that replica while both run."""
    handle, keys = _memory_handle(), {}
    for n in range(200):
        replica = handle.options(session_id=f"probe-{n}").stats.remote().result(timeout_s=60)["replica"]
        keys.setdefault(replica, f"probe-{n}")
        if len(keys) == 2:
            return keys
    raise AssertionError(f"every probe key reached the same replica: {keys}")


def _kill_actor(name: str) -> None:
    import ray

    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)


def test_on_postgresql_the_state_deployments_have_no_pin_and_spread_as_configured(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Offline (Ray imported, nothing started): the options the cluster below is built with."""
    from personaagent.settings import Settings, StoreSettings
    from serving.app import alignment_options, memory_options

    pinned = {"placement_resource": "personaagent_data", "num_replicas": 2, "max_replicas_per_node": 1}
    settings = Settings(
        memory=pinned, alignment={"num_replicas": 3}, store=StoreSettings(url="postgresql://db/x")
    )
    memory, alignment = memory_options(settings), alignment_options(settings)
    assert memory["num_replicas"] == 2 and memory["max_replicas_per_node"] == 1
    assert (
        "resources" not in memory["ray_actor_options"] and "resources" not in alignment["ray_actor_options"]
    )
    assert "placement_resource=personaagent_data is ignored" in caplog.text
    assert memory["request_router_config"].request_router_class.endswith("ConsistentHashRouter")
    assert alignment["num_replicas"] == 3 and "max_replicas_per_node" not in alignment
    sqlite = Settings(memory={"placement_resource": "personaagent_data"})  # one replica owns the file
    assert memory_options(sqlite)["ray_actor_options"]["resources"] == {"personaagent_data": 0.01}


def test_a_write_through_one_memory_replica_is_read_through_the_other(multinode: MultiNode) -> None:
    from memory.records import InteractionIn

    replicas = _memory_replicas()
    assert len(replicas) == 2 and len({s["node"] for s in replicas.values()}) == 2  # one on each node
    (tag_a, key_a), (tag_b, key_b) = sorted(_route_keys().items())
    handle = _memory_handle()
    a, b = handle.options(session_id=key_a), handle.options(session_id=key_b)
    ids = a.import_interactions.remote(
        "mn-cross", [InteractionIn(input="the keeper paints the boats")]
    ).result()
    assert [h.interaction.id for h in a.search.remote("mn-cross", "boats", 3).result()] == ids  # a caches it
    hits = b.search.remote("mn-cross", "a keeper painting boats", 3).result()
    assert [h.interaction.id for h in hits] == ids  # b never saw the write: it found it in the store
    more = b.import_interactions.remote(
        "mn-cross", [InteractionIn(input="the keeper mends the nets")]
    ).result()
    found = {h.interaction.id for h in a.search.remote("mn-cross", "the keeper", 5).result()}
    assert found == set(ids + more)  # a's cached index was behind: the version told it, it caught up
    after = _memory_replicas()
    assert after[tag_b]["cache_loads"] == replicas[tag_b]["cache_loads"] + 1
    assert after[tag_a]["cache_catch_ups"] == replicas[tag_a]["cache_catch_ups"] + 1
    # The cache salt secret lives in the database, the one both nodes share: no file in data_dir.
    assert not (multinode.stack.data_dir / "cache_salt.key").exists()
    with psycopg.connect(multinode.postgres_url) as conn:
        assert conn.execute("SELECT count(*) FROM server_secrets").fetchone() == (1,)


@dataclass
class Load:
    """Clients importing one note at a time and chatting as their users, retrying on 503 only."""

    stack: Stack
    tag: str
    acked: list[tuple[str, int, str]] = field(default_factory=list)  # (user, id, text) answered 200
    statuses: Counter[int] = field(default_factory=Counter)  # every status any attempt got
    chats: list[int] = field(default_factory=list)  # each chat's final status
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def _post(self, http: httpx.Client, path: str, body: Any) -> httpx.Response:
        for _ in range(60):
            try:
                response = http.post(path, json=body, timeout=120)
            except httpx.HTTPError:  # counted as status 0: the check fails on it
                self.statuses[0] += 1
                raise
            self.statuses[response.status_code] += 1
            if response.status_code != 503:
                return response
            assert response.headers.get("Retry-After"), response.headers
            time.sleep(0.5)
        return response

    def _importer(self, n: int) -> None:
        rng, user = random.Random(n), f"{self.tag}-imp-{n}"
        with self.stack.http() as http:
            i = 0
            while not self.stop.is_set():
                text = f"{self.tag} note {n}-{i}: " + " ".join(rng.sample(WORDS, 5))
                response = self._post(http, f"/v1/users/{user}/interactions", [{"input": text}])
                if response.status_code == 200:
                    self.acked.append((user, response.json()["ids"][0], text))
                i += 1

    def _chatter(self, n: int) -> None:
        with self.stack.http() as http:
            while not self.stop.is_set():
                body = {"model": MODEL, "user": f"{self.tag}-chat-{n}", "max_tokens": 4,
                        "messages": [{"role": "user", "content": f"Say hello to {random.choice(WORDS)}."}]}  # fmt: skip
                self.chats.append(self._post(http, "/v1/chat/completions", body).status_code)

    def __enter__(self) -> Load:
        self.threads = [threading.Thread(target=self._importer, args=(n,)) for n in range(3)]
        self.threads += [threading.Thread(target=self._chatter, args=(n,)) for n in range(2)]
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=300)

    def check(self) -> None:
        assert set(self.statuses) <= {200, 503}, self.statuses  # never a 500 (nor any other error)
        assert self.chats and set(self.chats) == {200}, Counter(self.chats)
        assert self.acked, "no import was acknowledged"
        with self.stack.http() as http:
            for user in sorted({user for user, _, _ in self.acked}):
                stored = {
                    i["id"]: i["input"] for i in http.get(f"/v1/users/{user}/export").json()["interactions"]
                }
                lost = [(i, text) for u, i, text in self.acked if u == user and stored.get(i) != text]
                assert not lost, f"{user}: acknowledged and lost: {lost[:3]}"


def _under_load(stack: Stack, tag: str, fault: Any) -> Load:
    with Load(stack, tag) as load:
        time.sleep(4)
        fault()
        time.sleep(8)
    load.check()
    return load


def test_a_killed_memory_replica_loses_no_acknowledged_write_and_chats_go_on(multinode: MultiNode) -> None:
    victim = next(s for s in _memory_replicas().values() if s["node"] != multinode.worker.node_id)
    load = _under_load(multinode.stack, "mn-kill", lambda: _kill_actor(victim["actor"]))
    print(
        f"replica kill: {len(load.acked)} imports acknowledged, {len(load.chats)} chats; statuses {load.statuses}"
    )
    _wait_running("memory", 2)  # Serve replaced it, on the node that lost it
    assert victim["replica"] not in _memory_replicas()


def test_an_alignment_replica_killed_mid_job_leaves_every_job_done_once(multinode: MultiNode) -> None:
    from ray import serve

    stack, users = multinode.stack, [f"mn-al-{n}" for n in range(4)]
    with stack.http() as http:
        for user in users:
            http.post(
                f"/v1/users/{user}/interactions",
                json=[{"input": "Tag the movie: a hitman avenges his brother", "output": "violence"}],
            ).raise_for_status()
        jobs = [http.post(f"/v1/users/{user}/align").json() for user in users]
    alignment = serve.get_deployment_handle("alignment", app_name=APP)
    deadline, victim = time.monotonic() + 120, None
    while victim is None and time.monotonic() < deadline:
        victim = next((s for s in alignment.broadcast("stats").results(timeout_s=30) if s["running"]), None)
        time.sleep(0.2)
    assert victim is not None, "no alignment replica ever held a job"
    _kill_actor(victim["actor"])  # mid-job: its leases run out, the other replica takes the jobs
    done = [wait_job(stack, job["id"], timeout_s=300) for job in jobs]
    assert [job["state"] for job in done] == ["done"] * len(jobs), [j.get("error") for j in done]
    assert any(job["attempts"] >= 2 for job in done if job["id"] in victim["running"]), done
    with stack.http() as http:
        for job in done:
            history = http.get(f"/v1/users/{job['user_id']}/persona/history").json()
            written = [p["version"] for p in history if p["details"].get("job_id") == job["id"]]
            result = job["result"]
            assert written == ([result["persona_version"]] if result.get("accepted") else []), (job, history)


def test_a_removed_worker_node_loses_no_acknowledged_write_and_chats_go_on(multinode: MultiNode) -> None:
    on_worker = [s for s in _memory_replicas().values() if s["node"] == multinode.worker.node_id]
    assert len(on_worker) == 1
    load = _under_load(
        multinode.stack,
        "mn-node",
        lambda: multinode.cluster.remove_node(multinode.worker, allow_graceful=False),
    )
    print(
        f"node removal: {len(load.acked)} imports acknowledged, {len(load.chats)} chats; statuses {load.statuses}"
    )
    assert all(s["node"] != multinode.worker.node_id for s in _memory_replicas().values())
