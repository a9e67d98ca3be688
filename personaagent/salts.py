"""Secret prefix-cache salts: the one place every vLLM `cache_salt` of the stack comes from.

vLLM shares KV blocks between requests with the same salt, and `usage.prompt_tokens_details.cached_tokens`
tells a client how much of its prompt was shared: a guessable salt would let one tenant probe another's
persona or conversation token by token (the reason for CVE-2025-46570; vLLM's docs ask for a secret,
random salt per tenant). A salt here is HMAC-SHA256(server secret, kind + id): a kind letter and 64
hex characters, inside vLLM's rules (no `@`, at most 128 characters) for any user id.

The secret comes from settings (`auth.cache_salt_secret`, e.g. from a Kubernetes Secret), else it is made
once by `resolve_salt_secret`: into `data_dir/cache_salt.key` (owner-only) on SQLite, or into one row of
the shared PostgreSQL database (`store.url`), so every replica on every node derives the same salts with
no volume in common. Whoever can read that database can read every user's data anyway; the salts protect
tenants from each other through the engine, not from the database's operators.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import SecretStr

from personaagent.settings import Settings

if TYPE_CHECKING:
    from personaagent.postgres import PostgresDatabase

SECRET_FILENAME = "cache_salt.key"
_SECRET_BYTES = 32


class CacheSalts:
    """Derives the engine salt of a user (personalized work) or of an API key (plain requests)."""

    def __init__(self, secret: str) -> None:
        if len(secret) < 16:
            raise ValueError("cache salt secret: at least 16 characters")
        self._key = secret.encode()

    def _derive(self, kind: str, ident: str) -> str:
        digest = hmac.new(self._key, f"{kind}\x00{ident}".encode(), hashlib.sha256).hexdigest()
        return f"{kind}{digest}"

    def user(self, user_id: str) -> str:
        """Salt of every engine call made for `user_id`: chat, alignment, profile writes, routing."""
        return self._derive("u", user_id)

    def api_key(self, key_name: str) -> str:
        """Salt of plain (non-personalized) requests: shared within one API key, never across keys."""
        return self._derive("k", key_name)


def file_secret(data_dir: Path) -> str:
    """The secret in `data_dir` (made on first use, mode 0600, race-free)."""
    path = Path(data_dir) / SECRET_FILENAME
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{SECRET_FILENAME}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(_SECRET_BYTES))
        # link() fails if another process made the file first: then everyone reads the winner's secret.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
        tmp.unlink()
    return path.read_text().strip()


# Append-only (personaagent.postgres.PostgresDatabase.migrate): a schema change is a new entry.
SECRETS_MIGRATIONS: list[str] = [
    """
    CREATE TABLE server_secrets (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now()
    );
    """,
]
SECRET_ROW = "cache_salt"


def database_secret(db: PostgresDatabase) -> str:
    """The secret in the shared database: the first process to ask makes it, all others read that one
    (INSERT ... ON CONFLICT DO NOTHING, then a read: no lock, no race, nothing to coordinate)."""
    db.migrate("secrets", SECRETS_MIGRATIONS)
    db.execute(
        "INSERT INTO server_secrets(name, value) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
        (SECRET_ROW, secrets.token_hex(_SECRET_BYTES)),
    )
    rows = db.query("SELECT value FROM server_secrets WHERE name = %s", (SECRET_ROW,))
    return str(rows[0]["value"])


def resolve_salt_secret(settings: Settings) -> str:
    """`auth.cache_salt_secret`, else the one kept where the state lives (`store.url`)."""
    configured = settings.auth.cache_salt_secret
    if configured is not None:
        return configured.get_secret_value()
    if not settings.store.postgres:
        return file_secret(settings.data_dir)
    from personaagent.postgres import PostgresDatabase  # psycopg only where PostgreSQL is configured

    db = PostgresDatabase(settings.store.model_copy(update={"pool_min_size": 1, "pool_max_size": 1}),
                          name="personaagent-salts")  # fmt: skip
    try:
        return database_secret(db)
    finally:
        db.close()


def with_salt_secret(settings: Settings) -> Settings:
    """`settings` with `auth.cache_salt_secret` resolved, so every process derives the same salts.

    Called once where the application is built: replicas on other nodes (no `data_dir` there, and no
    reason to open a database connection for it) get the secret with their settings.
    """
    if settings.auth.cache_salt_secret is not None:
        return settings
    secret = SecretStr(resolve_salt_secret(settings))
    return settings.model_copy(
        update={"auth": settings.auth.model_copy(update={"cache_salt_secret": secret})}
    )


def cache_salts(settings: Settings) -> CacheSalts:
    return CacheSalts(resolve_salt_secret(settings))
