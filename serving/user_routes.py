"""User data API: history import, episodic search, semantic profile, export, erase."""

# No `from __future__ import annotations`: FastAPI must resolve the closures in Query()/Path() here.

from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from memory.records import (
    USER_ID_PATTERN,
    ImportRefused,
    InteractionIn,
    MemoryHit,
    PersonaVersion,
    Profile,
    StoredText,
    UserExport,
)
from personaagent.settings import Settings
from serving.errors import APIError
from serving.ports import AlignmentPort, MemoryPort
from serving.scheduling import enqueue_if_due

UserIdPath = Annotated[
    str,
    Path(pattern=USER_ID_PATTERN, description="1-128 characters of [A-Za-z0-9._@+-]", examples=["user-42"]),
]


class PersonaEdit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: StoredText = Field(min_length=1, description="the new persona (system prompt)")
    note: str | None = Field(None, max_length=500)


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1)


class ImportResult(BaseModel):
    user_id: str
    ids: list[int]


class SearchResult(BaseModel):
    user_id: str
    query: str
    k: int
    hits: list[MemoryHit]


class DeleteResult(BaseModel):
    user_id: str
    deleted: bool


def _not_found(user_id: str) -> APIError:
    return APIError(404, f"user '{user_id}' not found", param="user_id")


def build_user_router(
    memory: MemoryPort, settings: Settings, alignment: AlignmentPort | None = None
) -> APIRouter:
    router = APIRouter(prefix="/v1/users", tags=["users"])
    limits = settings.memory

    @router.post("/{user_id}/interactions", response_model=ImportResult, summary="Bulk import history")
    async def import_interactions(
        user_id: UserIdPath,
        items: list[InteractionIn],
        schedule_alignment: Annotated[
            bool,
            Query(description="queue an alignment when the import makes the user due (config permitting)"),
        ] = True,
    ) -> ImportResult:
        if not items:
            raise APIError(400, "at least one interaction is required", param="body")
        if len(items) > limits.max_import_items:
            raise APIError(
                413,
                f"at most {limits.max_import_items} interactions per import (got {len(items)})",
                param="body",
            )
        for n, item in enumerate(items):
            if len(item.input) > limits.max_input_chars or len(item.output or "") > limits.max_input_chars:
                raise APIError(
                    400, f"item {n}: longer than {limits.max_input_chars} characters", param=f"{n}.input"
                )
        ids = await memory.import_interactions(user_id, items, "import")
        if isinstance(ids, ImportRefused):
            raise APIError(413, ids.message, param="body")
        if (
            alignment is not None
            and schedule_alignment
            and settings.alignment.schedule_on_import
            and any(i.output is not None for i in items)
        ):
            await enqueue_if_due(memory, alignment, user_id, "import")
        return ImportResult(user_id=user_id, ids=ids)

    @router.get("/{user_id}/memories", response_model=SearchResult, summary="Episodic top-k by similarity")
    async def search_memories(
        user_id: UserIdPath,
        query: Annotated[str, Query(min_length=1, max_length=limits.max_query_chars)],
        k: Annotated[int, Query(ge=1, le=limits.max_k)] = limits.default_k,
    ) -> SearchResult:
        if not query.strip():
            raise APIError(400, "query must not be blank", param="query")
        hits = await memory.search(user_id, query, k)
        if hits is None:
            raise _not_found(user_id)
        return SearchResult(user_id=user_id, query=query, k=k, hits=hits)

    @router.get("/{user_id}/profile", response_model=Profile, summary="Latest semantic profile")
    async def get_profile(user_id: UserIdPath) -> Profile:
        exists, profile = await memory.get_profile(user_id)
        if not exists:
            raise _not_found(user_id)
        if profile is None:
            raise APIError(404, f"user '{user_id}' has no profile yet", param="user_id")
        return profile

    @router.post("/{user_id}/profile/refresh", response_model=Profile, summary="Rewrite the profile now")
    async def refresh_profile(user_id: UserIdPath) -> Profile:
        profile = await memory.refresh_profile(user_id)
        if profile is None:
            raise _not_found(user_id)
        return profile

    @router.get("/{user_id}/export", response_model=UserExport, summary="Everything stored about the user")
    async def export_user(user_id: UserIdPath) -> UserExport:
        data = await memory.export(user_id)
        if data is None:
            raise _not_found(user_id)
        return data

    @router.delete("/{user_id}", response_model=DeleteResult, summary="Erase the user everywhere")
    async def delete_user(user_id: UserIdPath) -> DeleteResult:
        if not await memory.delete_user(user_id):
            raise _not_found(user_id)
        if alignment is not None:
            await alignment.forget_user(user_id)
        return DeleteResult(user_id=user_id, deleted=True)

    # -- persona ---------------------------------------------------------------------------------

    @router.get("/{user_id}/persona", response_model=PersonaVersion, summary="Current persona")
    async def get_persona(user_id: UserIdPath) -> PersonaVersion:
        # A read never writes: a persona is created by the first personalized chat or by POST below.
        history = await memory.persona_history(user_id)
        if history is None:
            raise _not_found(user_id)
        if not history:
            raise APIError(
                404,
                f"user '{user_id}' has no persona yet: the first personalized chat creates it, or "
                f"POST /v1/users/{user_id}/persona",
                param="user_id",
            )
        return history[-1]

    @router.post(
        "/{user_id}/persona",
        response_model=PersonaVersion,
        summary="Create the initial persona now (from the profile), or return the current one",
    )
    async def create_persona(user_id: UserIdPath) -> PersonaVersion:
        # Never creates the user: one deleted before or during this request stays deleted (404).
        persona = await memory.persona_for(user_id)
        if persona is None:
            raise _not_found(user_id)
        return persona

    @router.put("/{user_id}/persona", response_model=PersonaVersion, summary="Edit the persona (new version)")
    async def put_persona(user_id: UserIdPath, edit: PersonaEdit) -> PersonaVersion:
        if len(edit.text) > settings.agent.max_persona_chars:
            raise APIError(400, f"text: at most {settings.agent.max_persona_chars} characters", param="text")
        version = await memory.set_persona(
            user_id, edit.text, "manual", {"note": edit.note} if edit.note else {}
        )
        if version is None:
            raise _not_found(user_id)
        return version

    @router.get(
        "/{user_id}/persona/history", response_model=list[PersonaVersion], summary="Every persona version"
    )
    async def persona_history(user_id: UserIdPath) -> list[PersonaVersion]:
        history = await memory.persona_history(user_id)
        if history is None:
            raise _not_found(user_id)
        return history

    @router.post(
        "/{user_id}/persona/rollback", response_model=PersonaVersion, summary="Roll back to a version"
    )
    async def rollback_persona(user_id: UserIdPath, target: RollbackRequest) -> PersonaVersion:
        if await memory.persona_history(user_id) is None:
            raise _not_found(user_id)
        version = await memory.rollback_persona(user_id, target.version)
        if version is None:
            raise APIError(404, f"user '{user_id}' has no persona version {target.version}", param="version")
        return version

    return router
