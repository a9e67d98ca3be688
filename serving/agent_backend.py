"""The agent core's `AgentMemory` (and alignment's `AlignmentMemory`) over a handle to `MemoryDeployment`."""

from __future__ import annotations

from typing import Any

from memory.records import DocumentHit, Interaction, MemoryHit, PersonaVersion


class HandleAgentMemory:
    def __init__(self, memory_handle: Any) -> None:
        self._memory = memory_handle

    async def ensure_persona(self, user_id: str) -> PersonaVersion:
        return await self._memory.ensure_persona.remote(user_id)

    async def search(
        self, user_id: str, query: str, k: int, exclude_ids: tuple[int, ...] = ()
    ) -> list[MemoryHit] | None:
        return await self._memory.search.remote(user_id, query, k, tuple(exclude_ids))

    async def get_profile_text(self, user_id: str) -> str | None:
        return await self._memory.get_profile_text.remote(user_id)

    async def search_documents(self, query: str, k: int) -> list[DocumentHit]:
        return await self._memory.search_documents.remote(query, k)

    async def ground_truth(self, user_id: str, n: int) -> list[Interaction]:
        return await self._memory.ground_truth.remote(user_id, n)
