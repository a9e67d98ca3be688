"""Pydantic models of what memory stores and returns (records, hits, an export); the HTTP API's own
request and response models live with their routes in `serving/`."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, field_validator

USER_ID_CHARS = r"[A-Za-z0-9._@+-]{1,128}"
USER_ID_RE = re.compile(USER_ID_CHARS)
# For JSON schemas and pydantic/FastAPI `pattern=`: pydantic checks it with Rust's regex, where `$` is the
# end of the text. Python code checks ids with `is_valid_user_id`, never with this pattern: Python's `$`
# also matches before a final newline, so `re.match` of it takes "bob\n".
USER_ID_PATTERN = rf"^{USER_ID_CHARS}$"


def is_valid_user_id(value: object) -> bool:
    """The one user id check: 1-128 characters of [A-Za-z0-9._@+-], the whole string."""
    return isinstance(value, str) and USER_ID_RE.fullmatch(value) is not None


def _checked_user_id(value: str) -> str:
    if not is_valid_user_id(value):
        raise ValueError("user id: 1-128 characters of [A-Za-z0-9._@+-]")
    return value


# The pattern documents the id in schemas; the validator makes the check `is_valid_user_id` itself.
UserId = Annotated[str, StringConstraints(pattern=USER_ID_PATTERN), AfterValidator(_checked_user_id)]


def _without_nul(value: str) -> str:
    # PostgreSQL's text type cannot hold U+0000: refused on both backends alike, so a request means the same
    # whatever stores it (a 400 at the API, never a 500 from the database).
    if "\x00" in value:
        raise ValueError("must not contain a NUL character (U+0000)")
    return value


# Any text the API stores in a text column: the same on SQLite and PostgreSQL.
StoredText = Annotated[str, AfterValidator(_without_nul)]


def strip_nul(text: str) -> str:
    """`text` without NUL characters: for text the server writes on its own (a chat's write-back), where
    the request was already answered and refusing would lose the interaction."""
    return text.replace("\x00", "")


Source = Literal["import", "chat", "feedback", "eval"]


def utcnow() -> datetime:
    return datetime.now(UTC)


class InteractionIn(BaseModel):
    """One item of a history import (e.g. a LaMP profile item rendered as input/output)."""

    model_config = ConfigDict(extra="forbid")

    input: StoredText = Field(min_length=1, description="what the user asked or did")
    output: StoredText | None = Field(None, description="the answer / ground truth, if known")
    timestamp: datetime | None = Field(None, description="when it happened (default: now)")
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("input")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("input must not be blank")
        return value


class StorageQuotaExceeded(Exception):
    """A write would take a user past `memory.max_items_per_user` or `memory.max_bytes_per_user`."""


class UserDeleted(Exception):
    """The user was deleted (and perhaps re-created) after this write's operation began: the write is
    refused, so an operation that started before a DELETE never brings the user back."""


class PersonaChanged(Exception):
    """A conditional persona write found another version current than the one it was based on (an
    alignment that began from version N, or a first persona written meanwhile by another replica)."""


class ImportRefused(BaseModel):
    """An import the memory service turned down (returned, not raised: imports are batched across users)."""

    message: str


class Interaction(BaseModel):
    id: int
    user_id: str
    input: str
    output: str | None
    timestamp: datetime
    metadata: dict[str, Any]
    source: Source
    created_at: datetime


class MemoryHit(BaseModel):
    interaction: Interaction
    score: float = Field(description="cosine similarity (normalized embeddings, inner product)")


class Profile(BaseModel):
    """Semantic memory: an LLM-written summary of the user."""

    user_id: str
    version: int
    text: str
    interactions_covered: int
    created_at: datetime
    prompt: str = Field(description="name@version of the prompt template that wrote it")


class PersonaVersion(BaseModel):
    user_id: str
    version: int
    text: str
    reason: Literal["init", "manual", "alignment", "rollback"]
    parent: int | None
    created_at: datetime
    details: dict[str, Any] = Field(default_factory=dict)


class UserRecord(BaseModel):
    user_id: str
    created_at: datetime
    interactions_since_profile: int = 0
    ground_truth_since_alignment: int = 0


class UserExport(BaseModel):
    user: UserRecord
    interactions: list[Interaction]
    profiles: list[Profile]
    personas: list[PersonaVersion]


class DocumentHit(BaseModel):
    source: str
    text: str
    score: float
