"""The ports over Ray Serve handles: one adapter per deployment, each a thin `.remote()` per method.

`MemoryHandle` is the memory deployment as the routes (`serving.ports.MemoryPort`), the agent
(`agent.core.AgentMemory`), the alignment loop and the queue (`alignment.scheduler.SchedulerMemory`) see it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from ray import serve
from ray.exceptions import NodeDiedError, RayActorError
from ray.serve.exceptions import ReplicaUnavailableError as ServeReplicaUnavailableError

from alignment.jobs import AlignmentJob
from memory.embedder import Embedded, EmbeddingInput, EmbeddingRefused
from memory.records import (
    DocumentHit,
    ImportRefused,
    Interaction,
    InteractionIn,
    MemoryHit,
    PersonaVersion,
    Profile,
    Source,
    UserExport,
)
from memory.responses import ResponseScope, StoredResponse
from serving.backend import EngineRequest, affinity_key
from serving.completions import CompletionEngineRequest
from serving.errors import ReplicaUnavailable
from serving.metrics import MetricsScrape, ReplicaMetrics

logger = logging.getLogger(__name__)


class EngineHandle:
    """`serving.backend.ChatBackend` (and the LLM client's runner) over a handle to `EngineDeployment`."""

    def __init__(self, engine_handle: Any) -> None:
        self._engine = engine_handle
        self._streaming = engine_handle.options(stream=True)

    async def chat(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any] | str]:
        key = affinity_key(body)
        # session_id is what Ray Serve's ConsistentHashRouter hashes; other routers ignore it.
        handle = self._streaming.options(session_id=key) if key else self._streaming
        async for item in handle.chat.remote(EngineRequest.model_construct(body=body)):
            yield item

    async def complete(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any] | str]:
        """`serving.ports.CompletionBackend`: routed like a chat (same salt, same replica affinity)."""
        key = affinity_key(body)
        handle = self._streaming.options(session_id=key) if key else self._streaming
        async for item in handle.complete.remote(CompletionEngineRequest.model_construct(body=body)):
            yield item

    async def list_models(self) -> dict[str, Any]:
        return await self._engine.list_models.remote()

    async def metrics_text(self) -> str:
        return await self._engine.metrics_text.remote()

    async def check_health(self) -> None:
        await self._engine.check_health.remote()

    async def count_chat_tokens(self, messages: list[dict[str, Any]]) -> int:
        return await self._engine.count_chat_tokens.remote(messages)


# Ray's errors for "the replica (or its node) went away": a request in flight on it, or one routed to it
# before the router learnt it had gone. Serve starts a replacement and routes to the live replicas.
_REPLICA_GONE: tuple[type[Exception], ...] = (RayActorError, NodeDiedError, ServeReplicaUnavailableError)
_RETRY_PAUSE_S = 0.2  # the router drops a dead replica as soon as a call to it fails; a moment is enough


async def _call(
    handle: Any, deployment: str, method: str, *args: Any, retry: bool = False, **kwargs: Any
) -> Any:
    """`handle.method.remote(*args)`, with a replica's death as `ReplicaUnavailable` (a 503 at the API).
    `retry`: the call changes nothing (or the same thing twice), so it goes once more to a live replica
    first; a write is never repeated here, since it may have committed before its replica died."""
    for attempt in (1, 2):
        try:
            return await getattr(handle, method).remote(*args, **kwargs)
        except _REPLICA_GONE as exc:
            if retry and attempt == 1:
                logger.info(
                    "%s.%s: its replica went away (%s); once more", deployment, method, type(exc).__name__
                )
                await asyncio.sleep(_RETRY_PAUSE_S)
                continue
            raise ReplicaUnavailable(f"{deployment} replica went away during {method}") from exc
    raise AssertionError("unreachable")


class MemoryHandle:
    """Every call that names a user carries the user's routing key as Serve's `session_id`, which the
    memory deployment's consistent-hash router (`memory.request_router`) maps to one replica: a user's
    index stays warm in one replica's cache. Any replica answers correctly (the cache checks the store's
    version on each search); the key only saves loads. `route_key`: the user's cache salt (a secret HMAC,
    so the user id itself never travels as routing metadata); None: no affinity."""

    def __init__(self, memory_handle: Any, route_key: Callable[[str], str] | None = None) -> None:
        self._memory = memory_handle
        self._route_key = route_key

    def _for(self, user_id: str) -> Any:
        if self._route_key is None:
            return self._memory
        return self._memory.options(session_id=self._route_key(user_id))

    async def _user_call(self, user_id: str, method: str, *args: Any, retry: bool = False) -> Any:
        return await _call(self._for(user_id), "memory", method, user_id, *args, retry=retry)

    async def _any_call(self, method: str, *args: Any, retry: bool = False) -> Any:
        return await _call(self._memory, "memory", method, *args, retry=retry)

    async def user_exists(self, user_id: str) -> bool:
        return await self._user_call(user_id, "user_exists", retry=True)

    async def import_interactions(
        self, user_id: str, items: list[InteractionIn], source: Source = "import"
    ) -> list[int] | ImportRefused:
        return await self._user_call(user_id, "import_interactions", items, source)

    async def search(
        self, user_id: str, query: str, k: int, exclude_ids: tuple[int, ...] = ()
    ) -> list[MemoryHit] | None:
        return await self._user_call(user_id, "search", query, k, tuple(exclude_ids), retry=True)

    async def get_profile(self, user_id: str) -> tuple[bool, Profile | None]:
        return await self._user_call(user_id, "get_profile", retry=True)

    async def get_profile_text(self, user_id: str) -> str | None:
        return await self._user_call(user_id, "get_profile_text", retry=True)

    async def refresh_profile(self, user_id: str) -> Profile | None:
        return await self._user_call(user_id, "refresh_profile")

    async def export(self, user_id: str) -> UserExport | None:
        return await self._user_call(user_id, "export", retry=True)

    async def delete_user(self, user_id: str) -> bool:
        return await self._user_call(user_id, "delete_user")

    async def ensure_persona(self, user_id: str) -> PersonaVersion:
        # Twice is once: a first persona is written only while the user has none (`expected_version`).
        return await self._user_call(user_id, "ensure_persona", retry=True)

    async def persona_for(self, user_id: str) -> PersonaVersion | None:
        return await self._user_call(user_id, "persona_for", retry=True)

    async def current_persona(self, user_id: str) -> PersonaVersion | None:
        return await self._user_call(user_id, "current_persona", retry=True)

    async def persona_history(self, user_id: str) -> list[PersonaVersion] | None:
        return await self._user_call(user_id, "persona_history", retry=True)

    async def set_persona(
        self, user_id: str, text: str, reason: str, details: dict[str, Any] | None = None
    ) -> PersonaVersion | None:
        return await self._user_call(user_id, "set_persona", text, reason, details)

    async def set_persona_if_current(
        self, user_id: str, text: str, base_version: int, details: dict[str, Any]
    ) -> PersonaVersion | None:
        return await self._user_call(user_id, "set_persona_if_current", text, base_version, details)

    async def rollback_persona(self, user_id: str, version: int) -> PersonaVersion | None:
        return await self._user_call(user_id, "rollback_persona", version)

    async def search_documents(self, query: str, k: int) -> list[DocumentHit]:
        return await self._any_call("search_documents", query, k, retry=True)

    async def document_count(self) -> int:
        return int(await self._any_call("document_count", retry=True))

    async def reload_documents(self) -> int:
        """Every replica reloads its document index (`broadcast`): the collection is read whole at a
        replica's start, so one that starts later has the new one too. The chunk count of the replicas."""
        try:
            counts = await self._memory.broadcast("reload_documents").results_async()
        except _REPLICA_GONE as exc:
            raise ReplicaUnavailable("a memory replica went away during reload_documents") from exc
        return max(counts, default=0)

    async def record_chat(
        self, user_id: str, item: InteractionIn, generation: int | None = None
    ) -> int | None:
        return await self._user_call(user_id, "record_chat", item, generation)

    async def ground_truth(self, user_id: str, n: int) -> list[Interaction]:
        return await self._user_call(user_id, "ground_truth", n, retry=True)

    async def attach_feedback(
        self, user_id: str, expected_output: str, completion_id: str | None, input_text: str | None
    ) -> Interaction | None:
        # Twice is once: the same truth set again, counted once per interaction (memory.store).
        return await self._user_call(
            user_id, "attach_feedback", expected_output, completion_id, input_text, retry=True
        )

    async def take_alignment_due(self, user_id: str) -> bool:
        return await self._user_call(user_id, "take_alignment_due")

    async def persona_similarity(self) -> tuple[list[str], list[list[float]]]:
        return await self._any_call("persona_similarity", retry=True)

    async def embed(self, inputs: Sequence[EmbeddingInput]) -> Embedded | EmbeddingRefused:
        return await self._any_call("embed", list(inputs), retry=True)

    async def save_response(self, record: StoredResponse) -> bool:
        return await self._any_call("save_response", record)

    async def get_response(self, response_id: str, scope: ResponseScope) -> StoredResponse | None:
        return await self._any_call("get_response", response_id, scope, retry=True)

    async def delete_response(self, response_id: str, scope: ResponseScope) -> bool:
        return await self._any_call("delete_response", response_id, scope)


class AlignmentHandle:
    """`serving.ports.AlignmentPort` over a handle to `AlignmentDeployment`. Any replica answers: the jobs
    live in the store, and every replica's scheduler claims from it."""

    def __init__(self, alignment_handle: Any) -> None:
        self._alignment = alignment_handle

    async def enqueue(self, user_id: str, reason: str, fail_after_calls: int | None = None) -> AlignmentJob:
        # Twice is once: a user's open job is the one job (a unique index decides, in the store).
        return await _call(
            self._alignment, "alignment", "enqueue", user_id, reason, fail_after_calls, retry=True
        )

    async def get_job(self, job_id: str) -> AlignmentJob | None:
        return await _call(self._alignment, "alignment", "get_job", job_id, retry=True)

    async def forget_user(self, user_id: str) -> int:
        """Every replica (`broadcast`): the rows go once, and whichever replica runs the user's job
        cancels it there."""
        try:
            removed = await self._alignment.broadcast("forget_user", user_id).results_async()
        except _REPLICA_GONE as exc:
            raise ReplicaUnavailable("an alignment replica went away during forget_user") from exc
        return sum(removed)

    async def metrics_text(self) -> str:
        return await _call(self._alignment, "alignment", "metrics_text", retry=True)


def replica_metrics(text: str) -> ReplicaMetrics:
    """`text` labelled with the deployment and replica this code runs in (inside a Serve replica only)."""
    context = serve.get_replica_context()
    return ReplicaMetrics(deployment=context.deployment, replica=context.replica_tag, text=text)


class ClusterMetrics:
    """`serving.metrics.MetricsSource` over Ray Serve: every replica of each deployment answers
    `replica_metrics` (`DeploymentHandle.broadcast`, Ray Serve 2.60+), all deployments at once."""

    def __init__(self, handles: dict[str, Any], timeout_s: float) -> None:
        self._handles = handles  # deployment name -> its handle
        self._timeout_s = timeout_s

    async def collect(self) -> MetricsScrape:
        answers = await asyncio.gather(*(self._deployment(name) for name in self._handles))
        parts: list[ReplicaMetrics] = []
        errors: dict[str, int] = {}
        for name, (replies, failed) in zip(self._handles, answers, strict=True):
            parts += replies
            if failed:
                errors[name] = failed
        return MetricsScrape(parts=parts, errors=errors)

    async def _deployment(self, name: str) -> tuple[list[ReplicaMetrics], int]:
        """(the replicas' answers, how many failed); a deployment that does not answer at all counts 1."""
        try:
            broadcast = self._handles[name].broadcast("replica_metrics")
            replies = await broadcast.results_async(timeout_s=self._timeout_s, return_exceptions=True)
        except Exception as exc:  # a timeout, or no replica running: this scrape goes on without it
            logger.warning("metrics of deployment %s: %s", name, exc)
            return [], 1
        answered = [r for r in replies if isinstance(r, ReplicaMetrics)]
        for reply in replies:
            if not isinstance(reply, ReplicaMetrics):
                logger.warning("metrics of a %s replica: %s", name, reply)
        return answered, len(replies) - len(answered)
