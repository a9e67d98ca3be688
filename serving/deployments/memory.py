"""Ray Serve deployment around `memory.service.MemoryService`.

Any number of replicas with PostgreSQL (`memory.num_replicas`): each holds a cache of per-user FAISS
indexes that every search checks against the store (`memory.index`), so any replica answers any user
correctly; the consistent-hash router only keeps a user on one replica so its cache stays warm. With
SQLite there is one replica, the file's one owner.

Concurrent searches are gathered with `serve.batch`: their queries are embedded in one encoder call,
then each is answered from its own user's index. Concurrent imports are gathered the same way so the
embedder sees one large batch instead of many small ones, and so are `/v1/embeddings` requests (their own
batch: they read nothing stored, so any replica answers any of them).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import ray
from ray import serve

from agent.persona import AgentPersonaRules
from memory.embedder import Embedded, EmbeddingInput, EmbeddingRefused, embed_requests
from memory.profile import ProfileWriter
from memory.records import (
    DocumentHit,
    ImportRefused,
    Interaction,
    InteractionIn,
    MemoryHit,
    PersonaVersion,
    Profile,
    Source,
    StorageQuotaExceeded,
    UserDeleted,
    UserExport,
)
from memory.responses import ResponseScope, StoredResponse
from memory.service import MemoryService, embedding_text
from personaagent.llm import LLM
from personaagent.salts import cache_salts
from personaagent.settings import Settings
from serving.deployments.handles import EngineHandle, replica_metrics
from serving.metrics import MemoryMetrics, ReplicaMetrics

logger = logging.getLogger(__name__)


@serve.deployment(name="memory")
class MemoryDeployment:
    def __init__(self, engine: Any, settings: Settings) -> None:
        mem = settings.memory
        llm = LLM(EngineHandle(engine), settings.engine.served_model_name)
        writer = ProfileWriter(
            llm,
            cache_salts(settings).user,
            max_words=mem.profile_max_words,
            max_input_chars=mem.profile_max_input_chars,
        )
        self.service = MemoryService.open(
            settings, writer, AgentPersonaRules(settings.agent.max_persona_chars)
        )
        self._search_batch.set_max_batch_size(mem.search_batch_size)
        self._search_batch.set_batch_wait_timeout_s(mem.batch_wait_s)
        self._import_batch.set_max_batch_size(16)
        self._import_batch.set_batch_wait_timeout_s(mem.batch_wait_s)
        self._embed_batch.set_max_batch_size(settings.embeddings.batch_size)
        self._embed_batch.set_batch_wait_timeout_s(mem.batch_wait_s)
        self._truncate_embeddings = settings.embeddings.truncate
        self.metrics = MemoryMetrics(self.service.index)

    # -- batched paths -----------------------------------------------------------------------------

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def _search_batch(
        self, requests: list[tuple[str, str, int, tuple[int, ...]]]
    ) -> list[list[MemoryHit]]:
        svc = self.service
        vectors = await asyncio.to_thread(svc.embedder.encode, [query for _, query, _, _ in requests])
        return [
            svc.search_vectors(user_id, vectors[i : i + 1], k, exclude)[0]
            for i, (user_id, _, k, exclude) in enumerate(requests)
        ]

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def _embed_batch(self, requests: list[list[EmbeddingInput]]) -> list[Embedded | EmbeddingRefused]:
        """`/v1/embeddings` requests: every accepted input of the batch in one encoder call. Stateless (the
        encoder only), so the deployment may run any number of replicas."""
        return await asyncio.to_thread(
            embed_requests, self.service.embedder, requests, self._truncate_embeddings
        )

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def _import_batch(
        self, requests: list[tuple[str, list[InteractionIn], Source, int | None]]
    ) -> list[list[int] | ImportRefused]:
        """Each request: (user, items, source, generation: None for an import, else the chat's)."""
        svc = self.service
        texts = [embedding_text(item) for _, items, _, _ in requests for item in items]
        vectors = await asyncio.to_thread(svc.embedder.encode, texts)
        results: list[list[int] | ImportRefused] = []
        offset = 0
        for user_id, items, source, generation in requests:
            chunk = vectors[offset : offset + len(items)]
            offset += len(items)
            try:  # one user's refusal must not fail the others batched with it
                results.append(
                    await asyncio.to_thread(
                        svc.add_interactions_sync, user_id, items, source, chunk, generation
                    )
                )
            except (StorageQuotaExceeded, UserDeleted) as exc:
                results.append(ImportRefused(message=str(exc)))
        return results

    # -- API used by the ingress and the agent -----------------------------------------------------

    async def import_interactions(
        self, user_id: str, items: list[InteractionIn], source: Source = "import"
    ) -> list[int] | ImportRefused:
        ids = await self._import_batch((user_id, items, source, None))
        if not isinstance(ids, ImportRefused):
            self.service.maybe_refresh_profile(user_id)
        return ids

    async def search(
        self, user_id: str, query: str, k: int, exclude_ids: tuple[int, ...] = ()
    ) -> list[MemoryHit] | None:
        started = time.perf_counter()
        if not self.service.user_exists(user_id):
            return None
        hits = await self._search_batch((user_id, query, k, tuple(exclude_ids)))
        self.metrics.search_latency.observe(time.perf_counter() - started)
        return hits

    async def embed(self, inputs: list[EmbeddingInput]) -> Embedded | EmbeddingRefused:
        result = await self._embed_batch(inputs)
        if isinstance(result, Embedded):
            self.metrics.embedded_inputs.inc(len(inputs))
        return result

    async def get_profile(self, user_id: str) -> tuple[bool, Profile | None]:
        """(user exists, latest profile)."""
        return self.service.user_exists(user_id), self.service.get_profile(user_id)

    async def refresh_profile(self, user_id: str) -> Profile | None:
        return await self.service.refresh_profile(user_id)

    async def export(self, user_id: str) -> UserExport | None:
        return self.service.export(user_id)

    async def delete_user(self, user_id: str) -> bool:
        return self.service.delete_user(user_id)

    # -- personas, documents, write-back (used by the agent through `serving.deployments.handles`) --------

    async def ensure_persona(self, user_id: str) -> PersonaVersion:
        return await self.service.ensure_persona(user_id)

    async def persona_for(self, user_id: str) -> PersonaVersion | None:
        return await self.service.persona_for(user_id)

    async def persona_history(self, user_id: str) -> list[PersonaVersion] | None:
        return self.service.persona_history(user_id)

    async def set_persona(
        self, user_id: str, text: str, reason: str, details: dict[str, Any] | None = None
    ) -> PersonaVersion | None:
        return self.service.set_persona(user_id, text, reason, details)

    async def rollback_persona(self, user_id: str, version: int) -> PersonaVersion | None:
        return self.service.rollback_persona(user_id, version)

    async def get_profile_text(self, user_id: str) -> str | None:
        return self.service.get_profile_text(user_id)

    async def search_documents(self, query: str, k: int) -> list[DocumentHit]:
        return await asyncio.to_thread(self.service.search_documents, query, k)

    async def reload_documents(self) -> int:
        return self.service.documents.reload() if self.service.documents else 0

    async def document_count(self) -> int:
        return self.service.document_count()

    async def record_chat(self, user_id: str, item: InteractionIn, generation: int | None = None) -> int | None:
        """Write a chat back; dropped (None) when the user was deleted while the chat ran: a chat creates
        its user when it starts (the persona), so only a delete can make the user vanish before this. The
        generation taken here is checked inside the write, so a delete during the embedding counts too
        (`MemoryService.record_chat` is the same path without the batching)."""
        if generation is None:  # the chat did not say when it began: the user as it is now
            generation = self.service.store.user_generation(user_id)
        if generation is None:
            return None
        ids = await self._import_batch((user_id, [item], "chat", generation))
        if isinstance(ids, ImportRefused):
            logger.warning("chat write-back dropped: %s", ids.message)
            return None
        self.service.maybe_refresh_profile(user_id)
        return ids[0]

    async def user_exists(self, user_id: str) -> bool:
        return self.service.user_exists(user_id)

    async def ground_truth(self, user_id: str, n: int) -> list[Interaction]:
        return self.service.ground_truth(user_id, n)

    async def attach_feedback(
        self, user_id: str, expected_output: str, completion_id: str | None, input_text: str | None
    ) -> Interaction | None:
        return self.service.attach_feedback(
            user_id, expected_output, completion_id=completion_id, input_text=input_text
        )

    async def take_alignment_due(self, user_id: str) -> bool:
        return self.service.take_alignment_due(user_id)

    async def current_persona(self, user_id: str) -> PersonaVersion | None:
        return self.service.current_persona(user_id)

    async def set_persona_if_current(
        self, user_id: str, text: str, base_version: int, details: dict[str, Any]
    ) -> PersonaVersion | None:
        return self.service.set_persona_if_current(user_id, text, base_version, details)

    async def persona_similarity(self) -> tuple[list[str], list[list[float]]]:
        return self.service.persona_similarity()

    # -- stored Responses-API responses (the ingress's `/v1/responses` routes) ------------------------------

    async def save_response(self, record: StoredResponse) -> bool:
        return await asyncio.to_thread(self.service.save_response, record)

    async def get_response(self, response_id: str, scope: ResponseScope) -> StoredResponse | None:
        return await asyncio.to_thread(self.service.get_response, response_id, scope)

    async def delete_response(self, response_id: str, scope: ResponseScope) -> bool:
        return await asyncio.to_thread(self.service.delete_response, response_id, scope)

    async def replica_metrics(self) -> ReplicaMetrics:
        """This replica's metrics for the ingress's `/metrics` (called on every replica: `broadcast`)."""
        return replica_metrics(self.metrics.text())

    async def stats(self) -> dict[str, Any]:
        """This replica's index cache, and where the replica runs (operators, and the multi-node test)."""
        index = self.service.index
        return {
            "vectors": index.total(), "device": index.device, "users_cached": len(index.users()),
            "cache_hits": index.cache_hits, "cache_loads": index.cache_loads,
            "cache_catch_ups": index.cache_catch_ups, "replica": serve.get_replica_context().replica_tag,
            "node": ray.get_runtime_context().get_node_id(), "actor": ray.get_runtime_context().get_actor_name(),
        }  # fmt: skip
