"""The ports over Ray Serve handles: one adapter per deployment, each a thin `.remote()` per method.

`MemoryHandle` is the memory deployment as the routes (`serving.ports.MemoryPort`), the agent
(`agent.core.AgentMemory`), the alignment loop and the queue (`alignment.scheduler.SchedulerMemory`) see it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from alignment.jobs import AlignmentJob
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
from serving.backend import EngineRequest, affinity_key


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

    async def list_models(self) -> dict[str, Any]:
        return await self._engine.list_models.remote()

    async def metrics_text(self) -> str:
        return await self._engine.metrics_text.remote()

    async def check_health(self) -> None:
        await self._engine.check_health.remote()

    async def count_chat_tokens(self, messages: list[dict[str, Any]]) -> int:
        return await self._engine.count_chat_tokens.remote(messages)


class MemoryHandle:
    def __init__(self, memory_handle: Any) -> None:
        self._memory = memory_handle

    async def user_exists(self, user_id: str) -> bool:
        return await self._memory.user_exists.remote(user_id)

    async def import_interactions(
        self, user_id: str, items: list[InteractionIn], source: Source = "import"
    ) -> list[int] | ImportRefused:
        return await self._memory.import_interactions.remote(user_id, items, source)

    async def search(
        self, user_id: str, query: str, k: int, exclude_ids: tuple[int, ...] = ()
    ) -> list[MemoryHit] | None:
        return await self._memory.search.remote(user_id, query, k, tuple(exclude_ids))

    async def get_profile(self, user_id: str) -> tuple[bool, Profile | None]:
        return await self._memory.get_profile.remote(user_id)

    async def get_profile_text(self, user_id: str) -> str | None:
        return await self._memory.get_profile_text.remote(user_id)

    async def refresh_profile(self, user_id: str) -> Profile | None:
        return await self._memory.refresh_profile.remote(user_id)

    async def export(self, user_id: str) -> UserExport | None:
        return await self._memory.export.remote(user_id)

    async def delete_user(self, user_id: str) -> bool:
        return await self._memory.delete_user.remote(user_id)

    async def ensure_persona(self, user_id: str) -> PersonaVersion:
        return await self._memory.ensure_persona.remote(user_id)

    async def persona_for(self, user_id: str) -> PersonaVersion | None:
        return await self._memory.persona_for.remote(user_id)

    async def current_persona(self, user_id: str) -> PersonaVersion | None:
        return await self._memory.current_persona.remote(user_id)

    async def persona_history(self, user_id: str) -> list[PersonaVersion] | None:
        return await self._memory.persona_history.remote(user_id)

    async def set_persona(
        self, user_id: str, text: str, reason: str, details: dict[str, Any] | None = None
    ) -> PersonaVersion | None:
        return await self._memory.set_persona.remote(user_id, text, reason, details)

    async def set_persona_if_current(
        self, user_id: str, text: str, base_version: int, details: dict[str, Any]
    ) -> PersonaVersion | None:
        return await self._memory.set_persona_if_current.remote(user_id, text, base_version, details)

    async def rollback_persona(self, user_id: str, version: int) -> PersonaVersion | None:
        return await self._memory.rollback_persona.remote(user_id, version)

    async def search_documents(self, query: str, k: int) -> list[DocumentHit]:
        return await self._memory.search_documents.remote(query, k)

    async def reload_documents(self) -> int:
        return await self._memory.reload_documents.remote()

    async def record_chat(self, user_id: str, item: InteractionIn, generation: int | None = None) -> int | None:
        return await self._memory.record_chat.remote(user_id, item, generation)

    async def ground_truth(self, user_id: str, n: int) -> list[Interaction]:
        return await self._memory.ground_truth.remote(user_id, n)

    async def attach_feedback(
        self, user_id: str, expected_output: str, completion_id: str | None, input_text: str | None
    ) -> Interaction | None:
        return await self._memory.attach_feedback.remote(user_id, expected_output, completion_id, input_text)

    async def take_alignment_due(self, user_id: str) -> bool:
        return await self._memory.take_alignment_due.remote(user_id)

    async def persona_similarity(self) -> tuple[list[str], list[list[float]]]:
        return await self._memory.persona_similarity.remote()


class AlignmentHandle:
    """`serving.ports.AlignmentPort` over a handle to `AlignmentDeployment`."""

    def __init__(self, alignment_handle: Any) -> None:
        self._alignment = alignment_handle

    async def enqueue(self, user_id: str, reason: str, fail_after_calls: int | None = None) -> AlignmentJob:
        return await self._alignment.enqueue.remote(user_id, reason, fail_after_calls)

    async def get_job(self, job_id: str) -> AlignmentJob | None:
        return await self._alignment.get_job.remote(job_id)

    async def forget_user(self, user_id: str) -> int:
        return await self._alignment.forget_user.remote(user_id)

    async def metrics_text(self) -> str:
        return await self._alignment.metrics_text.remote()
