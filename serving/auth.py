"""API keys and tenant scoping: who is calling, and which users' data they may touch.

Keys are configured as SHA-256 hashes (`auth.api_keys`; `personaagent keys new` makes one), so neither the
config nor the environment holds a usable key. An admin key (no `user_id`) acts on any user; a user-scoped
key acts only as its own `user_id`: a chat or response naming another user, or another user's routes, is a
403, and one naming no user is that user's (`serving.identity`).
With no keys configured the server is open (and `personaagent serve` binds loopback only).
"""

from __future__ import annotations

import hashlib
import secrets

from fastapi import Request
from pydantic import BaseModel

from memory.records import is_valid_user_id
from personaagent.settings import AuthSettings
from serving.errors import APIError

OPEN_PATHS = frozenset({"/health", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"})


class Principal(BaseModel):
    name: str
    user_id: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.user_id is None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "pa-" + secrets.token_urlsafe(32)


class Authenticator:
    def __init__(self, settings: AuthSettings) -> None:
        for key in settings.api_keys:
            # A key scoped to an id no route accepts could act as nobody: refuse the config at start.
            if key.user_id is not None and not is_valid_user_id(key.user_id):
                raise ValueError(
                    f"auth.api_keys: key {key.name!r} has user_id {key.user_id!r}; a user id is 1-128 "
                    "characters of [A-Za-z0-9._@+-]"
                )
        self._by_hash = {k.sha256: Principal(name=k.name, user_id=k.user_id) for k in settings.api_keys}
        self._open_paths = OPEN_PATHS | ({"/metrics"} if settings.metrics_open else set())

    @property
    def enabled(self) -> bool:
        return bool(self._by_hash)

    def authenticate(self, request: Request) -> Principal | None:
        """The caller, or None when no keys are configured (open) or the path is open; 401 otherwise."""
        if not self.enabled or request.url.path in self._open_paths:
            return None
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise APIError(401, "missing API key: send `Authorization: Bearer <key>`")
        principal = self._by_hash.get(hash_key(key.strip()))
        if principal is None:
            raise APIError(401, "invalid API key")
        return principal


def principal_of(request: Request) -> Principal | None:
    return getattr(request.state, "principal", None)


def require_user(request: Request, user_id: str | None) -> None:
    """A user-scoped key may act only as its own user."""
    principal = principal_of(request)
    if principal is not None and not principal.is_admin and user_id != principal.user_id:
        raise APIError(403, f"this API key acts only as user '{principal.user_id}'", param="user")


def require_admin(
    request: Request, message: str = "this route needs an admin API key", param: str | None = None
) -> None:
    principal = principal_of(request)
    if principal is not None and not principal.is_admin:
        raise APIError(403, message, param=param)
