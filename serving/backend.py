"""What the HTTP layer needs from the engine; `serving/deployments/handles.py` provides it over a Ray handle."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from pydantic import BaseModel


class ChatBackend(Protocol):
    def chat(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any] | str]: ...

    async def list_models(self) -> dict[str, Any]: ...

    async def metrics_text(self) -> str: ...

    async def check_health(self) -> None: ...


class EngineRequest(BaseModel):
    """A chat body on its way to an engine replica.

    Request routers read the request before a replica is chosen: Ray Serve LLM's PrefixCacheAffinityRouter
    looks for a `.messages` attribute, so the body travels in this wrapper instead of as a bare dict.
    """

    body: dict[str, Any]

    @property
    def messages(self) -> Any:
        return self.body.get("messages")


def affinity_key(body: dict[str, Any]) -> str | None:
    """The user a request belongs to (its cache salt, else `user`): the consistent-hash router's key."""
    key = body.get("cache_salt") or body.get("user")
    return str(key) if key else None
