"""What several replicas need from settings and secrets: the cache salt secret is one for every replica
on every node (kept in data_dir on SQLite, in the shared database on PostgreSQL), and more than one memory
or alignment replica is refused on SQLite with a message that says what to set."""

from __future__ import annotations

import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from pydantic import SecretStr, ValidationError

from personaagent.salts import SECRET_FILENAME, CacheSalts, cache_salts, resolve_salt_secret, with_salt_secret
from personaagent.settings import AuthSettings, Settings, StoreSettings


def test_on_postgresql_every_process_gets_the_one_secret_in_the_database(
    postgres_url: str, tmp_path: Path
) -> None:
    # Replicas on two nodes: different data_dirs, one database; several start at once.
    nodes = [
        Settings(data_dir=tmp_path / f"node{n}", store=StoreSettings(url=postgres_url)) for n in range(4)
    ]
    with ThreadPoolExecutor(4) as pool:
        secrets = list(pool.map(resolve_salt_secret, nodes))
    assert len(set(secrets)) == 1 and len(secrets[0]) == 64
    assert resolve_salt_secret(nodes[0]) == secrets[0]  # and again later: the same
    assert not any((tmp_path / f"node{n}" / SECRET_FILENAME).exists() for n in range(4))  # no file needed
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT count(*) FROM server_secrets").fetchone() == (1,)
    resolved = with_salt_secret(nodes[1])
    assert resolved.auth.cache_salt_secret is not None
    assert resolved.auth.cache_salt_secret.get_secret_value() == secrets[0]
    assert cache_salts(nodes[2]).user("ann") == CacheSalts(secrets[0]).user("ann")


def test_on_sqlite_the_secret_is_a_private_file_in_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    secret = resolve_salt_secret(settings)
    path = tmp_path / SECRET_FILENAME
    assert path.read_text().strip() == secret and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert resolve_salt_secret(settings) == secret


def test_a_configured_secret_wins_and_touches_no_store(tmp_path: Path) -> None:
    configured = "c" * 32
    unreachable = "postgresql://nobody@127.0.0.1:1/none"  # never connected to
    for store in (StoreSettings(), StoreSettings(url=unreachable)):
        settings = Settings(
            data_dir=tmp_path, store=store, auth=AuthSettings(cache_salt_secret=SecretStr(configured))
        )
        assert resolve_salt_secret(settings) == configured
    assert not (tmp_path / SECRET_FILENAME).exists()


@pytest.mark.parametrize("section", ["memory", "alignment"])
def test_more_than_one_replica_on_sqlite_is_refused_with_what_to_set(section: str) -> None:
    with pytest.raises(ValidationError, match=rf"{section}\.num_replicas is 2.*store\.url"):
        Settings(**{section: {"num_replicas": 2}})
    shared = Settings(**{section: {"num_replicas": 2}}, store=StoreSettings(url="postgresql://db/x"))
    assert getattr(shared, section).num_replicas == 2


def test_the_refusal_also_holds_for_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERSONAAGENT_MEMORY__NUM_REPLICAS", "2")
    with pytest.raises(ValidationError, match="SQLite"):
        Settings()
    monkeypatch.setenv("PERSONAAGENT_STORE__URL", "postgresql://db/x")
    assert Settings().memory.num_replicas == 2
