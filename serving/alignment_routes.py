"""Alignment API: ground-truth feedback, forced alignment, job state, persona similarity."""

# No `from __future__ import annotations`: FastAPI resolves the annotations of the closures below.
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from alignment.jobs import AlignmentJob
from memory.records import StoredText
from personaagent.settings import Settings
from serving.auth import require_admin, require_user
from serving.errors import APIError
from serving.ports import AlignmentPort, MemoryPort
from serving.scheduling import enqueue_if_due
from serving.user_routes import UserIdPath


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    completion_id: str | None = Field(None, description="the `id` of a chat completion we returned")
    input: str | None = Field(None, description="or the user's request text (newest match)")
    expected_output: StoredText = Field(min_length=1, max_length=20_000, description="the right answer")

    @model_validator(mode="after")
    def _one_key(self) -> "FeedbackRequest":
        if (self.completion_id is None) == (self.input is None):
            raise ValueError("give exactly one of completion_id or input")
        return self


class FeedbackResult(BaseModel):
    user_id: str
    interaction_id: int
    alignment_job: AlignmentJob | None = Field(None, description="set when this feedback made the user due")


class SimilarityMatrix(BaseModel):
    users: list[str]
    matrix: list[list[float]] = Field(description="Jaccard similarity of current personas as word sets")


def build_alignment_router(memory: MemoryPort, alignment: AlignmentPort, settings: Settings) -> APIRouter:
    router = APIRouter(tags=["alignment"])

    @router.post(
        "/v1/users/{user_id}/feedback", response_model=FeedbackResult, summary="Attach the right answer"
    )
    async def feedback(user_id: UserIdPath, body: FeedbackRequest) -> FeedbackResult:
        if not await memory.user_exists(user_id):
            raise APIError(404, f"user '{user_id}' not found", param="user_id")
        item = await memory.attach_feedback(user_id, body.expected_output, body.completion_id, body.input)
        if item is None:
            key = "completion_id" if body.completion_id is not None else "input"
            raise APIError(404, f"no interaction of user '{user_id}' matches that {key}", param=key)
        job = await enqueue_if_due(memory, alignment, user_id, "feedback")
        return FeedbackResult(user_id=user_id, interaction_id=item.id, alignment_job=job)

    @router.post("/v1/users/{user_id}/align", response_model=AlignmentJob, summary="Force an alignment now")
    async def align(
        user_id: UserIdPath,
        inject_failure_after: Annotated[int | None, Query(ge=0, description="tests only")] = None,
    ) -> AlignmentJob:
        if inject_failure_after is not None and not settings.alignment.allow_fault_injection:
            raise APIError(400, "fault injection is disabled", param="inject_failure_after")
        if not await memory.user_exists(user_id):
            raise APIError(404, f"user '{user_id}' not found", param="user_id")
        return await alignment.enqueue(user_id, "forced", inject_failure_after)

    @router.get(
        "/v1/alignment/jobs/{job_id}", response_model=AlignmentJob, summary="Alignment job state and result"
    )
    async def get_job(job_id: Annotated[str, Path(max_length=64)], request: Request) -> AlignmentJob:
        job = await alignment.get_job(job_id)
        if job is None:
            raise APIError(404, f"alignment job '{job_id}' not found", param="job_id")
        require_user(request, job.user_id)
        return job

    @router.get(
        "/v1/personas/similarity", response_model=SimilarityMatrix, summary="Persona similarity matrix"
    )
    async def similarity(request: Request) -> SimilarityMatrix:
        require_admin(request)
        users, matrix = await memory.persona_similarity()
        return SimilarityMatrix(users=users, matrix=matrix)

    return router
