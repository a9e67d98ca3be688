"""Ray Serve ingress: the FastAPI app of `serving.http_app`, bound to handles of the other deployments."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from ray import serve

from personaagent.settings import Settings
from serving.backend import EngineHandleBackend
from serving.http_app import build_http_app


@serve.deployment(name="ingress")
@serve.ingress()
class IngressDeployment:
    def __init__(self, engine: Any, memory: Any, settings: Settings) -> None:
        self._backend = EngineHandleBackend(engine)
        self._memory = memory
        self._settings = settings

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_http_app(self._backend, self._settings, memory=self._memory)
