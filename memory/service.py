"""The memory service: durable store + episodic FAISS index + semantic profile. No Ray, no HTTP."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from memory.documents import DocumentIndex
from memory.embedder import Embedder
from memory.index import EpisodicIndex
from memory.profile import ProfileWriter
from memory.records import (
    DocumentHit,
    Interaction,
    InteractionIn,
    MemoryHit,
    PersonaVersion,
    Profile,
    Source,
    UserExport,
)
from memory.store import SQLiteStore, Store
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
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.index = index
        self.settings = settings
        self.profile_writer = profile_writer
        self.documents = documents
        self.background_priority = background_priority
        self.persona_rules = persona_rules
        self.alignment_due_every = alignment_due_every
        self._profile_tasks: dict[str, asyncio.Task[Profile | None]] = {}
        self._persona_locks: dict[str, asyncio.Lock] = {}
        self.rebuild_index()

    @classmethod
    def open(
        cls,
        settings: Settings,
        profile_writer: ProfileWriter | None = None,
        persona_rules: PersonaRules | None = None,
    ) -> MemoryService:
        db_path = Path(settings.data_dir) / settings.memory.db_filename
        embedder = Embedder(batch_size=settings.memory.embed_batch_size)
        index = EpisodicIndex(embedder.dim, settings.memory.device)
        documents = DocumentIndex(db_path, embedder.dim)
        return cls(
            SQLiteStore(db_path), embedder, index, settings.memory, profile_writer, documents,
            background_priority=settings.alignment.priority, persona_rules=persona_rules,
            alignment_due_every=settings.alignment.due_every,
        )  # fmt: skip

    def rebuild_index(self) -> int:
        """The index is derived data: rebuild it from the embeddings stored in the database."""
        for user_id in self.index.users():
            self.index.remove_user(user_id)
        for user_id, ids, vectors in self.store.iter_embeddings():
            self.index.add(user_id, ids, vectors)
        total = self.index.total()
        logger.info("episodic index rebuilt from the database: %d vectors on %s", total, self.index.device)
        return total

    # -- writes ------------------------------------------------------------------------------------

    def add_interactions_sync(
        self, user_id: str, items: Sequence[InteractionIn], source: Source, vectors: np.ndarray | None = None
    ) -> list[int]:
        if vectors is None:
            vectors = self.embedder.encode([embedding_text(i) for i in items])
        quota = (self.settings.max_items_per_user, self.settings.max_bytes_per_user)
        ids = self.store.add_interactions(user_id, items, vectors, source, quota)  # committed here
        self.index.add(user_id, np.asarray(ids, dtype=np.int64), vectors)
        return ids

    def delete_user(self, user_id: str) -> bool:
        existed = self.store.delete_user(user_id)
        self.index.remove_user(user_id)
        task = self._profile_tasks.pop(user_id, None)
        if task is not None:
            task.cancel()
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
        recent = self.store.list_interactions(user_id, limit=200)
        text = await self.profile_writer.write(user_id, recent, priority)
        if not self.user_exists(user_id):  # erased while the LLM was writing: do not resurrect
            return None
        return self.store.add_profile(
            user_id,
            text,
            len(recent),
            self.profile_writer.prompt_ref,
            keep=self.settings.max_profile_versions,
        )

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

    def _persona_lock(self, user_id: str) -> asyncio.Lock:
        return self._persona_locks.setdefault(user_id, asyncio.Lock())

    def current_persona(self, user_id: str) -> PersonaVersion | None:
        versions = self.store.list_personas(user_id)
        return versions[-1] if versions else None

    async def ensure_persona(self, user_id: str) -> PersonaVersion:
        """The user's current persona; a user seen for the first time gets one from their history."""
        if self.persona_rules is None:
            raise RuntimeError("no persona rules configured")
        async with self._persona_lock(user_id):
            current = self.current_persona(user_id)
            if current is not None:
                return current
            self.store.ensure_user(user_id)
            profile = self.store.latest_profile(user_id)
            if (
                profile is None
                and self.profile_writer is not None
                and self.store.list_interactions(user_id, limit=1)
            ):
                profile = await self.refresh_profile(user_id, background=False)
            text, prompt_ref = self.persona_rules.initial(profile.text if profile else None)
            details = {"profile_version": profile.version if profile else None, "prompt": prompt_ref}
            return self.store.add_persona(user_id, text, "init", None, details, keep=self._keep_personas)

    def set_persona(
        self,
        user_id: str,
        text: str,
        reason: str,
        details: dict[str, Any] | None = None,
        parent: int | None = None,
    ) -> PersonaVersion | None:
        current = self.current_persona(user_id)
        if current is None and not self.user_exists(user_id):
            return None
        if self.persona_rules is not None:
            text = self.persona_rules.bound(text)
        parent = parent if parent is not None else (current.version if current else None)
        return self.store.add_persona(user_id, text, reason, parent, details or {}, keep=self._keep_personas)

    def set_persona_if_current(
        self, user_id: str, text: str, base_version: int, details: dict[str, Any]
    ) -> PersonaVersion | None:
        """Store an aligned persona only if nobody changed the persona since the alignment started."""
        current = self.current_persona(user_id)
        if current is None or current.version != base_version:
            return None
        return self.set_persona(user_id, text, "alignment", details, parent=base_version)

    def persona_history(self, user_id: str) -> list[PersonaVersion] | None:
        """Every persona version, oldest first; None for an unknown user."""
        if not self.user_exists(user_id):
            return None
        return self.store.list_personas(user_id)

    def rollback_persona(self, user_id: str, version: int) -> PersonaVersion | None:
        target = next((p for p in self.store.list_personas(user_id) if p.version == version), None)
        if target is None:
            return None
        return self.store.add_persona(
            user_id, target.text, "rollback", version, {"rolled_back_to": version}, keep=self._keep_personas
        )

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

    # -- documents ---------------------------------------------------------------------------------

    def search_documents(self, query: str, k: int) -> list[DocumentHit]:
        if self.documents is None or self.documents.count() == 0:
            return []
        return self.documents.search(self.embedder.encode([query]), k)

    def close(self) -> None:
        self.store.close()
        if self.documents is not None:
            self.documents.close()
