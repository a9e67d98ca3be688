"""Application builders: settings -> a bound Ray Serve application (also the serveConfigV2 import path)."""

from __future__ import annotations

import logging
from typing import Any

from ray.serve import Application
from ray.serve.config import AutoscalingConfig, RequestRouterConfig

from personaagent.salts import with_salt_secret
from personaagent.settings import REQUEST_ROUTER_CLASSES, Settings, load_settings
from serving.deployments.alignment import AlignmentDeployment
from serving.deployments.engine import EngineDeployment
from serving.deployments.ingress import IngressDeployment
from serving.deployments.memory import MemoryDeployment

logger = logging.getLogger(__name__)


def engine_actor_options(settings: Settings) -> dict[str, Any]:
    engine = settings.engine
    if engine.device == "gpu":
        return {"num_cpus": 1, "num_gpus": engine.tensor_parallel_size}
    return {"num_cpus": 1}


def engine_scaling_options(settings: Settings) -> dict[str, Any]:
    """Replica count or autoscaling, and the request router, of the engine deployment."""
    engine = settings.engine
    options: dict[str, Any] = {}
    if engine.autoscaling is not None:
        options["autoscaling_config"] = AutoscalingConfig(**engine.autoscaling.model_dump())
    else:
        options["num_replicas"] = engine.num_replicas
    if engine.request_router != "default":
        options["request_router_config"] = RequestRouterConfig(
            request_router_class=REQUEST_ROUTER_CLASSES[engine.request_router],
            request_router_kwargs=engine.request_router_kwargs,
        )
    return options


def data_actor_options(settings: Settings, num_cpus: float) -> dict[str, Any]:
    """On SQLite, the deployments that own data_dir files run on the node that mounts it (a tiny share of
    `memory.placement_resource`). On PostgreSQL they own no file: any node, the pin ignored (a config
    written for SQLite keeps working when only store.url is added)."""
    resource = settings.memory.placement_resource
    if resource and settings.store.postgres:
        logger.warning(
            "memory.placement_resource=%s is ignored with store.url (PostgreSQL): memory and alignment "
            "replicas run on any node", resource,
        )  # fmt: skip
        resource = None
    return {"num_cpus": num_cpus} | ({"resources": {resource: 0.01}} if resource else {})


def memory_options(settings: Settings) -> dict[str, Any]:
    """Replicas, placement and request routing of the memory deployment. Several replicas (PostgreSQL
    only: `Settings` refuses more on SQLite) each keep an index cache; the consistent-hash router sends a
    user's calls (keyed by their salt: `MemoryHandle`) to one replica, so that cache stays warm."""
    memory = settings.memory
    options: dict[str, Any] = {
        "num_replicas": memory.num_replicas,
        "ray_actor_options": data_actor_options(settings, memory.num_cpus),
    }
    if memory.max_replicas_per_node is not None:
        options["max_replicas_per_node"] = memory.max_replicas_per_node
    if memory.request_router != "default":
        options["request_router_config"] = RequestRouterConfig(
            request_router_class=REQUEST_ROUTER_CLASSES[memory.request_router]
        )
    return options


def alignment_options(settings: Settings) -> dict[str, Any]:
    """Each alignment replica runs a scheduler claiming from the shared job queue, and its actor pool."""
    alignment = settings.alignment
    options: dict[str, Any] = {
        "num_replicas": alignment.num_replicas,
        "ray_actor_options": data_actor_options(settings, alignment.num_cpus),
    }
    if alignment.max_replicas_per_node is not None:
        options["max_replicas_per_node"] = alignment.max_replicas_per_node
    return options


# How often a stopping replica looks at its ongoing requests (Ray's default 2 s): Serve stops the deployments
# one after another on shutdown, so each idle one would otherwise cost 2 s of the SIGTERM budget.
DRAIN_OPTIONS: dict[str, Any] = {"graceful_shutdown_wait_loop_s": 0.25}


def build_app(settings: Settings) -> Application:
    # Resolved once here: every replica (on any node) derives the same salts from the same secret.
    settings = with_salt_secret(settings)
    engine = EngineDeployment.options(
        **DRAIN_OPTIONS,
        **engine_scaling_options(settings),
        ray_actor_options=engine_actor_options(settings),
        # vLLM batches continuously: let many requests reach it instead of queueing in Serve.
        max_ongoing_requests=settings.engine.max_num_seqs * 4,
        health_check_period_s=10,
        health_check_timeout_s=30,
    ).bind(settings)
    memory = MemoryDeployment.options(
        **DRAIN_OPTIONS, **memory_options(settings), max_ongoing_requests=512
    ).bind(engine, settings)
    alignment = AlignmentDeployment.options(
        **DRAIN_OPTIONS, **alignment_options(settings), max_ongoing_requests=512
    ).bind(engine, memory, settings)
    return IngressDeployment.options(
        **DRAIN_OPTIONS,
        num_replicas=settings.server.ingress_replicas,
        ray_actor_options={"num_cpus": 0.5},
        # Admission is ours (server.max_inflight_requests answers 429 at once); Ray's queue stays bounded too.
        max_ongoing_requests=max(1024, 2 * settings.server.max_inflight_requests),
        max_queued_requests=1024,
    ).bind(engine, memory, alignment, settings)


class OpenServerRefused(RuntimeError):
    """No API keys, a reachable address, and `auth.allow_open` not set."""


def app_builder(args: dict[str, Any]) -> Application:
    """Entry for `serve run serving.app:app_builder config=configs/gpu-mistral-small.yaml` and KubeRay."""
    settings = load_settings(args.get("config"))
    if not settings.auth.api_keys:
        # Ray Serve binds where serveConfigV2 says (0.0.0.0 on Kubernetes): without keys, anyone who reaches
        # the port could read and write every user's data.
        if not settings.auth.allow_open:
            raise OpenServerRefused(
                "no API keys configured (auth.api_keys, e.g. PERSONAAGENT_AUTH__API_KEYS from a Secret): "
                "refusing to serve every route openly. Add keys (`personaagent keys new`), or set "
                "auth.allow_open: true if the endpoint is protected another way."
            )
        logger.warning("auth.allow_open: no API keys, every route is open to whoever reaches the port")
    return build_app(settings)
