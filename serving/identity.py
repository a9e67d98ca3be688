"""Who a chat or a response is for: the one place that decides which user's agent answers.

Precedence: a user-scoped API key is its user; else `safety_identifier` (OpenAI's stable end-user id);
else `user` (the field OpenAI deprecated in its favour, still what most clients send); else nobody, and
the plain model answers. `prompt_cache_key` never names a user: clients such as the OpenAI Agents SDK
generate one per run, so it would make a new "user" every run.

Disagreements are refused, never resolved by precedence: `safety_identifier` and `user` naming different
users are a 400 naming both fields; a user-scoped key with a field naming another user is a 403 (the key
may not act as that user, as on every `/v1/users/{user_id}` route).
"""

from __future__ import annotations

from typing import Any

from memory.records import is_valid_user_id
from serving.auth import Principal
from serving.errors import APIError

# The request fields that may name the user, highest precedence first (after a user-scoped key).
IDENTITY_FIELDS = ("safety_identifier", "user")


def resolve_user(principal: Principal | None, fields: dict[str, Any]) -> str | None:
    """The user a request is for, from its API key and its `safety_identifier`/`user` fields (absent or
    null: not given); None: nobody (the plain model)."""
    named: dict[str, str] = {}
    for field in IDENTITY_FIELDS:
        value = fields.get(field)
        if value is None:
            continue
        if not is_valid_user_id(value):
            raise APIError(400, f"{field}: 1-128 characters of [A-Za-z0-9._@+-]", param=field)
        named[field] = value
    if len(set(named.values())) > 1:
        raise APIError(
            400,
            "safety_identifier and user name different users "
            f"({named['safety_identifier']!r}, {named['user']!r}): send one of them, or the same id in both",
            param="safety_identifier",
        )
    if principal is not None and principal.user_id is not None:
        for field, value in named.items():
            if value != principal.user_id:
                raise APIError(403, f"this API key acts only as user '{principal.user_id}'", param=field)
        return principal.user_id
    return next(iter(named.values()), None)
