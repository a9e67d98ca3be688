"""The memory service: durable store + episodic FAISS index + semantic profile. No Ray, no HTTP."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from memory.backends import open_memory_storage
from memory.documents import DocumentIndex
from memory.embedder import Embedder
from memory.index import EpisodicIndex
from memory.profile import ProfileWriter
from memory.records import (
    DocumentHit,
    Interaction,
    InteractionIn,
    MemoryHit,
    PersonaChanged,
    PersonaVersion,
    Profile,
    Source,
    StorageQuotaExceeded,
    UserDeleted,
    UserExport,
    utcnow,
)
from memory.responses import ResponseScope, ResponseStore, StoredResponse, responses_beside
from memory.store import Store
from personaagent.settings import MemorySettings, Priority, Settings

logger = logging.getLogger(__name__)


# The agent layer owns what a persona says and how long it may be; memory only stores personas, so the
# serving layer hands it the agent's rules (memory never imports the agent).
class PersonaRules(Protocol):
    def initial(self, profile_text: str | None) -> tuple[str, str]:
        """A first persona from the profile text: (text, prompt ref)."""

    def bound(self, text: str) -> str:
        """Any persona text cut to the allowed length."""


def embedding_text(item: InteractionIn | Interaction) -> str:
    """What an interaction is retrieved by: its input, and its answer/label when known."""
    return f"{item.input}\n{item.output}" if item.output else item.input


@dataclass
class _UserLock:
    """A per-user lock and how many callers hold or wait for it: dropped when nobody does."""

    lock: asyncio.Lock
    users: int = 0


def _begun_at(persona: PersonaVersion, generation: int) -> PersonaVersion:
    """A chat's persona, carrying the user's generation when the chat began (for its write-back; a copy,
    never stored)."""
    return persona.model_copy(update={"details": {**persona.details, "generation": generation}})


class MemoryService:
    def __init__(
        self,
        store: Store,
        embedder: Embedder,
        index: EpisodicIndex,
        settings: MemorySettings,
        profile_writer: ProfileWriter | None = None,
        documents: DocumentIndex | None = None,
        background_priority: int = Priority.BACKGROUND,
        persona_rules: PersonaRules | None = None,
        alignment_due_every: int = 3,
        responses: ResponseStore | None = None,
        preload_index: bool = True,
    ) -> None:
        self.store = store
        self.responses = responses
        self.embedder = embedder
        self.index = index
        self.settings = settings
        self.profile_writer = profile_writer
        self.documents = documents
        self.background_priority = background_priority
        self.persona_rules = persona_rules
        self.alignment_due_every = alignment_due_every
        self._profile_tasks: dict[str, asyncio.Task[Profile | None]] = {}
        self._persona_locks: dict[str, _UserLock] = {}
        if index.source is None:  # the index is a cache of the store, checked on every search
            index.source = store
        self.preload_index = preload_index
        self.rebuild_index()

    @classmethod
    def open(
        cls,
        settings: Settings,
        profile_writer: ProfileWriter | None = None,
        persona_rules: PersonaRules | None = None,
    ) -> MemoryService:
        embedder = Embedder(batch_size=settings.memory.embed_batch_size)
        index = EpisodicIndex(
            embedder.dim, settings.memory.device, max_users=settings.memory.index_cache_users
        )
        store, documents = open_memory_storage(settings, embedder.dim)  # SQLite or PostgreSQL: store.url
        return cls(
            store, embedder, index, settings.memory, profile_writer, documents,
            background_priority=settings.alignment.priority, persona_rules=persona_rules,
            alignment_due_every=settings.alignment.due_every, responses=responses_beside(store),
            preload_index=not settings.store.postgres,
        )  # fmt: skip

    def rebuild_index(self) -> int:
        """Start the index cache afresh. `preload_index` (SQLite: one replica owns the file): load up to
        the cache's size of users now, so their first searches are warm. Otherwise (PostgreSQL) load
        nothing: every user's index loads on their first search, so a start takes the same time whatever
        the database holds, and replicas that start together do not all read every user."""
        self.index.clear()
        if self.preload_index:
            loaded = 0
            for user_id in self.store.list_user_ids():
                if loaded >= self.index.max_users:
                    break
                loaded += self.index.warm(user_id)
        total = self.index.total()
        logger.info(
            "episodic index cache started: %d users, %d vectors on %s (the rest load on first use)",
            len(self.index.users()), total, self.index.device,
        )  # fmt: skip
        return total

    # -- writes ------------------------------------------------------------------------------------

    def add_interactions_sync(
        self,
        user_id: str,
        items: Sequence[InteractionIn],
        source: Source,
        vectors: np.ndarray | None = None,
        generation: int | None = None,
    ) -> list[int]:
        """`generation` None: an explicit import (creates the user); else the write is refused with
        `UserDeleted` when the user is no longer that incarnation (see `memory.store`)."""
        if vectors is None:
            vectors = self.embedder.encode([embedding_text(i) for i in items])
        quota = (self.settings.max_items_per_user, self.settings.max_bytes_per_user)
        ids = self.store.add_interactions(user_id, items, vectors, source, quota, generation)  # committed
        self.index.add(user_id, np.asarray(ids, dtype=np.int64), vectors)
        return ids

    async def record_chat(self, user_id: str, item: InteractionIn, generation: int | None = None) -> int | None:
        """Write a chat back; dropped (None, logged) when the user was deleted before or while it is
        written (the check is inside the write), or when it would pass the user's quota. `generation`: the
        user's when the chat began (`ensure_persona`), so a chat that outlived a delete never writes into
        a user re-created since."""
        generation = self.store.user_generation(user_id) if generation is None else generation
        if generation is None:
            return None
        try:
            ids = await asyncio.to_thread(
                self.add_interactions_sync, user_id, [item], "chat", None, generation
            )
        except (UserDeleted, StorageQuotaExceeded) as exc:
            logger.warning("chat write-back for %s dropped: %s", user_id, exc)
            return None
        self.maybe_refresh_profile(user_id)
        return ids[0]

    def delete_user(self, user_id: str) -> bool:
        existed = self.store.delete_user(user_id)
        if self.responses is not None:  # after the user: a response saved meanwhile names the old generation
            self.responses.delete_user(user_id)
        self.index.remove_user(user_id)
        task = self._profile_tasks.pop(user_id, None)
        if task is not None:
            task.cancel()
        self._persona_locks.pop(user_id, None)  # a holder finishes on its own; its write is refused
        return existed

    # -- reads -------------------------------------------------------------------------------------

    def user_exists(self, user_id: str) -> bool:
        return self.store.get_user(user_id) is not None

    def search_vectors(
        self, user_id: str, vectors: np.ndarray, k: int, exclude_ids: Sequence[int] = ()
    ) -> list[list[MemoryHit]]:
        excluded = set(exclude_ids)
        raw = self.index.search(user_id, vectors, k + len(excluded))
        out: list[list[MemoryHit]] = []
        for row in raw:
            kept = [(i, s) for i, s in row if i not in excluded][:k]
            rows = {r.id: r for r in self.store.get_interactions([i for i, _ in kept])}
            # A row deleted between search and fetch is skipped, never substituted.
            out.append([MemoryHit(interaction=rows[i], score=s) for i, s in kept if i in rows])
        return out

    def get_profile(self, user_id: str) -> Profile | None:
        return self.store.latest_profile(user_id)

    def export(self, user_id: str) -> UserExport | None:
        user = self.store.get_user(user_id)
        if user is None:
            return None
        return UserExport(
            user=user,
            interactions=self.store.list_interactions(user_id),
            profiles=self.store.list_profiles(user_id),
            personas=self.store.list_personas(user_id),
        )

    # -- semantic memory ---------------------------------------------------------------------------

    async def refresh_profile(self, user_id: str, background: bool = True) -> Profile | None:
        """Write a new profile version from the user's latest interactions (None: unknown user).

        One refresh at a time per user: a call while one runs gets that one's result. `background`: at the
        background priority (an explicit refresh, or one after an import); a chat waiting for its first
        persona asks for it at PROFILE_FOR_CHAT.
        """
        if self.profile_writer is None:
            raise RuntimeError("no LLM configured for profile writing")
        if self.store.get_user(user_id) is None:
            return None
        task = self._refresh_task(user_id, background)
        try:
            return await asyncio.shield(task)  # a caller that goes away leaves the shared refresh running
        except asyncio.CancelledError:
            if task.cancelled():  # the user was deleted meanwhile
                return None
            raise

    def _refresh_task(self, user_id: str, background: bool) -> asyncio.Task[Profile | None]:
        task = self._profile_tasks.get(user_id)
        if task is not None:
            return task
        priority = self.background_priority if background else Priority.PROFILE_FOR_CHAT
        task = asyncio.get_running_loop().create_task(self._write_profile(user_id, priority))
        self._profile_tasks[user_id] = task

        def _done(t: asyncio.Task[Profile | None]) -> None:
            if self._profile_tasks.get(user_id) is t:
                del self._profile_tasks[user_id]
            if not t.cancelled() and t.exception() is not None:
                logger.warning("profile refresh for %s failed: %s", user_id, t.exception())

        task.add_done_callback(_done)
        return task

    async def _write_profile(self, user_id: str, priority: int) -> Profile | None:
        assert self.profile_writer is not None
        generation = self.store.user_generation(user_id)
        if generation is None:
            return None
        recent = self.store.list_interactions(user_id, limit=200)
        text = await self.profile_writer.write(user_id, recent, priority)
        try:  # erased while the LLM was writing: refused inside the write, never resurrected
            return self.store.add_profile(
                user_id,
                text,
                len(recent),
                self.profile_writer.prompt_ref,
                keep=self.settings.max_profile_versions,
                generation=generation,
            )
        except UserDeleted:
            return None

    def maybe_refresh_profile(self, user_id: str) -> None:
        """Start a background profile refresh when the user has none yet or N new interactions."""
        if self.profile_writer is None or not self.settings.profile_on_import:
            return
        user = self.store.get_user(user_id)
        if user is None or user_id in self._profile_tasks:
            return
        due = self.store.latest_profile(user_id) is None or (
            user.interactions_since_profile >= self.settings.profile_refresh_every
        )
        if due:
            self._refresh_task(user_id, background=True)

    # -- personas (the agent's per-user system prompt; stored here, shaped by agent.persona) ---------

    @property
    def _keep_personas(self) -> int:
        return self.settings.max_persona_versions

    @asynccontextmanager
    async def _persona_lock(self, user_id: str) -> AsyncIterator[None]:
        """One initial persona per user at a time; the lock is dropped once nobody holds or awaits it, so
        the map holds only users with a persona being created (bounded by concurrent requests)."""
        entry = self._persona_locks.get(user_id)
        if entry is None:
            entry = self._persona_locks[user_id] = _UserLock(asyncio.Lock())
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0 and self._persona_locks.get(user_id) is entry:
                del self._persona_locks[user_id]

    def current_persona(self, user_id: str) -> PersonaVersion | None:
        versions = self.store.list_personas(user_id)
        return versions[-1] if versions else None

    async def ensure_persona(self, user_id: str) -> PersonaVersion:
        """A chat's persona: the current one; a user seen for the first time gets one from their history.

        A new chat is an explicit start, so it creates the user. It waits for the profile at most
        `memory.persona_profile_wait_s`: past that (or when the profile write fails) the chat gets a
        transient persona, version 0, written without the profile and not stored. Not stored, because a
        stored profile-less persona would stay the user's persona for good, while the profile write goes
        on (shared, in the background) and the next chat after it lands stores the real initial persona.
        The same transient persona answers a chat whose user was deleted while it waited."""
        rules = self._rules()
        current = self.current_persona(user_id)
        generation = self.store.user_generation(user_id)
        if current is not None and generation is not None:  # every chat but a user's first: reads only
            return _begun_at(current, generation)
        if generation is None:
            generation = self.store.open_user(user_id)
        persona = await self._initial_persona(user_id, generation, self.settings.persona_profile_wait_s)
        if isinstance(persona, PersonaVersion):
            return _begun_at(persona, generation)
        text, prompt_ref = rules.initial(None)
        return PersonaVersion(
            user_id=user_id, version=0, text=text, reason="init", parent=None, created_at=utcnow(),
            details={"prompt": prompt_ref, "profile_version": None, "transient": persona,
                     "generation": generation},
        )  # fmt: skip

    async def persona_for(self, user_id: str) -> PersonaVersion | None:
        """An explicit request's persona (POST .../persona, an alignment): the current one, else the
        initial one from the profile, waited for in full. Never creates the user: None when there is no
        such user, or it was deleted meanwhile."""
        self._rules()
        generation = self.store.user_generation(user_id)
        if generation is None:
            return None
        persona = await self._initial_persona(user_id, generation, None)
        return persona if isinstance(persona, PersonaVersion) else None

    def _rules(self) -> PersonaRules:
        if self.persona_rules is None:
            raise RuntimeError("no persona rules configured")
        return self.persona_rules

    async def _initial_persona(
        self, user_id: str, generation: int, wait_s: float | None
    ) -> PersonaVersion | str:
        """The current persona, or the initial one stored now; otherwise why not (a transient's reason)."""
        rules = self._rules()
        async with self._persona_lock(user_id):
            current = self.current_persona(user_id)
            if current is not None:
                return current
            profile = self.store.latest_profile(user_id)
            if (
                profile is None
                and self.profile_writer is not None
                and self.store.list_interactions(user_id, limit=1)
            ):
                refresh = self.refresh_profile(user_id, background=False)
                try:  # the shared write goes on after a timeout (refresh_profile shields it)
                    profile = await (refresh if wait_s is None else asyncio.wait_for(refresh, wait_s))
                except Exception as exc:
                    if wait_s is None:
                        raise  # an explicit request reports the failure
                    reason = "profile pending" if isinstance(exc, TimeoutError) else "profile failed"
                    logger.warning("%s for %s (%r): transient persona", reason, user_id, exc)
                    return reason
            text, prompt_ref = rules.initial(profile.text if profile else None)
            details = {"profile_version": profile.version if profile else None, "prompt": prompt_ref}
            try:  # only as the first version: another replica may have written one meanwhile
                return self.store.add_persona(
                    user_id, text, "init", None, details, keep=self._keep_personas, generation=generation,
                    expected_version=0,
                )  # fmt: skip
            except UserDeleted:
                logger.info("user %s deleted while their first persona was written: not stored", user_id)
                return "user deleted"
            except PersonaChanged:
                return self.current_persona(user_id) or "user deleted"

    def set_persona(
        self,
        user_id: str,
        text: str,
        reason: str,
        details: dict[str, Any] | None = None,
        parent: int | None = None,
        expected_version: int | None = None,
    ) -> PersonaVersion | None:
        if self.persona_rules is not None:
            text = self.persona_rules.bound(text)
        if parent is None:
            current = self.current_persona(user_id)
            parent = current.version if current else None
        try:  # never creates the user: refused inside the write when there is none
            return self.store.add_persona(
                user_id, text, reason, parent, details or {}, keep=self._keep_personas,
                expected_version=expected_version,
            )  # fmt: skip
        except (UserDeleted, PersonaChanged):
            return None

    def set_persona_if_current(
        self, user_id: str, text: str, base_version: int, details: dict[str, Any]
    ) -> PersonaVersion | None:
        """Store an aligned persona only if nobody changed the persona since the alignment started: decided
        inside the write (`expected_version`), so of two runs of one alignment based on the same version,
        on any replicas, at most one writes."""
        return self.set_persona(
            user_id, text, "alignment", details, parent=base_version, expected_version=base_version
        )

    def persona_history(self, user_id: str) -> list[PersonaVersion] | None:
        """Every persona version, oldest first; None for an unknown user."""
        if not self.user_exists(user_id):
            return None
        return self.store.list_personas(user_id)

    def rollback_persona(self, user_id: str, version: int) -> PersonaVersion | None:
        target = next((p for p in self.store.list_personas(user_id) if p.version == version), None)
        if target is None:
            return None
        try:
            return self.store.add_persona(
                user_id,
                target.text,
                "rollback",
                version,
                {"rolled_back_to": version},
                keep=self._keep_personas,
            )
        except UserDeleted:
            return None

    # -- ground truth and analytics ----------------------------------------------------------------

    def ground_truth(self, user_id: str, n: int) -> list[Interaction]:
        return self.store.ground_truth(user_id, n)

    def take_alignment_due(self, user_id: str) -> bool:
        """True once per `alignment.due_every` new ground truths (the counter resets when taken)."""
        return self.store.take_alignment_due(user_id, self.alignment_due_every)

    def get_profile_text(self, user_id: str) -> str | None:
        profile = self.get_profile(user_id)
        return profile.text if profile else None

    def attach_feedback(
        self, user_id: str, expected_output: str, *, completion_id: str | None, input_text: str | None
    ) -> Interaction | None:
        return self.store.attach_truth(
            user_id, expected_output, completion_id=completion_id, input_text=input_text
        )

    def persona_similarity(self) -> tuple[list[str], list[list[float]]]:
        """Jaccard similarity of users' current personas as word sets (the paper's analysis)."""
        personas = self.store.current_personas()
        users = list(personas)
        words = [set(re.findall(r"[a-z0-9']+", personas[u].lower())) for u in users]
        matrix = [
            [1.0 if i == j else (len(a & b) / len(a | b) if (a | b) else 0.0) for j, b in enumerate(words)]
            for i, a in enumerate(words)
        ]
        return users, matrix

    # -- stored Responses-API responses (`memory.responses`) -----------------------------------------

    def _response_store(self) -> ResponseStore:
        if self.responses is None:
            raise RuntimeError("no response store configured")
        return self.responses

    def save_response(self, record: StoredResponse) -> bool:
        return self._response_store().save(record)

    def get_response(self, response_id: str, scope: ResponseScope) -> StoredResponse | None:
        return self._response_store().get(response_id, scope)

    def delete_response(self, response_id: str, scope: ResponseScope) -> bool:
        return self._response_store().delete(response_id, scope)

    # -- documents ---------------------------------------------------------------------------------

    def document_count(self) -> int:
        """Chunks in this replica's document index (every replica reloads together: `reload_documents`)."""
        return self.documents.count() if self.documents is not None else 0

    def search_documents(self, query: str, k: int) -> list[DocumentHit]:
        if self.document_count() == 0:
            return []
        return self.documents.search(self.embedder.encode([query]), k)

    def close(self) -> None:
        self.store.close()
        if self.responses is not None:
            self.responses.close()
        if self.documents is not None:
            self.documents.close()
