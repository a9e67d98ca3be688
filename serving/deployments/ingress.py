"""Ray Serve ingress: the FastAPI app of `serving.http_app`, bound to handles of the other deployments."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from ray import serve

from agent.core import PersonaAgent
from personaagent.llm import LLM
from personaagent.salts import cache_salts
from personaagent.settings import Settings
from serving.deployments.handles import (
    AlignmentHandle,
    ClusterMetrics,
    EngineHandle,
    MemoryHandle,
    replica_metrics,
)
from serving.http_app import build_http_app
from serving.metrics import HTTPMetrics, ReplicaMetrics
from serving.personalized_chat import PersonalizedChat


@serve.deployment(name="ingress")
@serve.ingress()
class IngressDeployment:
    def __init__(self, engine: Any, memory: Any, alignment: Any, settings: Settings) -> None:
        self._backend = EngineHandle(engine)
        self._memory = MemoryHandle(memory, cache_salts(settings).user) if memory is not None else None
        self._alignment = AlignmentHandle(alignment) if alignment is not None else None
        self._settings = settings
        self._http_metrics = HTTPMetrics()
        # `/metrics` asks every replica of every deployment, this one's own included (serving/metrics.py).
        context = serve.get_replica_context()
        handles = {
            "ingress": serve.get_deployment_handle(context.deployment, context.app_name),
            "engine": engine,
        }
        handles |= {"memory": memory} if memory is not None else {}
        handles |= {"alignment": alignment} if alignment is not None else {}
        self._cluster_metrics = ClusterMetrics(handles, settings.server.metrics_timeout_s)

    def __serve_build_asgi_app__(self) -> FastAPI:
        settings = self._settings
        llm = LLM(self._backend, settings.engine.served_model_name)
        salts = cache_salts(settings)
        agent = PersonaAgent(
            llm,
            self._memory,
            salts,
            settings.agent,
            tools_in_template=settings.engine.tools_in_template,
        )
        personalized = PersonalizedChat(
            agent, self._backend, self._memory, settings.agent.write_back, settings.agent.trace_final_prompt
        )
        return build_http_app(
            self._backend, settings, salts, memory=self._memory, personalized=personalized,
            alignment=self._alignment, completions=self._backend, http_metrics=self._http_metrics,
            metrics_source=self._cluster_metrics,
        )  # fmt: skip

    async def replica_metrics(self) -> ReplicaMetrics:
        """This replica's HTTP metrics for `/metrics` (called on every ingress replica: `broadcast`)."""
        return replica_metrics(self._http_metrics.text())
