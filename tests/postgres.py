"""A real, throwaway PostgreSQL server for the tests (a pytest plugin: tests/conftest.py loads it).

`postgres_server` (session): $PERSONAAGENT_TEST_POSTGRES_URL when set (an existing server the tests may
create schemas in), else a cluster of its own: `initdb` into a temporary folder and `pg_ctl start` on a
free port of 127.0.0.1, its unix socket in that folder too; stopped (`pg_ctl stop -m immediate`) and
removed when the session ends. Without either, the PostgreSQL tests skip and say what to install.
`postgres_url` (per test): a fresh schema on that server, named in the URL (`options=-csearch_path=...`),
dropped after the test: much faster than a database per test, and the code under test sees a database of
its own.

Not pytest-postgresql's process fixture: it runs `initdb` and `pg_ctl` as the current user, and initdb
refuses to run as root, which is who runs CI here; this module runs them as the `postgres` system user
when it is root (`runuser`), and needs no package beyond psycopg.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

ENV_URL = "PERSONAAGENT_TEST_POSTGRES_URL"
INSTALL_HINT = (
    "PostgreSQL tests need a PostgreSQL server: install one (`apt install postgresql`: initdb and pg_ctl on "
    f"PATH or under /usr/lib/postgresql/*/bin) or point {ENV_URL} at an existing server "
    "(postgresql://user:password@host:port/db; the tests create and drop schemas there)"
)
SERVER_USER = "postgres"  # initdb refuses root: as root, the server runs as this system user


def find_server_binary(name: str) -> Path | None:
    """`initdb`/`pg_ctl` on PATH, else in Debian's versioned folder (newest first)."""
    found = shutil.which(name)
    if found:
        return Path(found)
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: p.parts[-3])
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresCluster:
    """initdb + pg_ctl in a temporary folder. `durable=False` (tests): no fsync, which a throwaway cluster
    never needs; a benchmark that compares commit costs with SQLite's passes `durable=True`."""

    def __init__(self, *, durable: bool = False) -> None:
        initdb, pg_ctl = find_server_binary("initdb"), find_server_binary("pg_ctl")
        if initdb is None or pg_ctl is None:
            raise FileNotFoundError(INSTALL_HINT)
        self.initdb, self.pg_ctl, self.durable = initdb, pg_ctl, durable
        self.root = Path(tempfile.mkdtemp(prefix="personaagent-pg-"))
        self.data = self.root / "data"
        self.port = 0

    def _run(self, *cmd: str | Path) -> None:
        args = [str(c) for c in cmd]
        if os.geteuid() == 0:
            args = ["runuser", "-u", SERVER_USER, "--", *args]
        done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed: {done.stderr or done.stdout}\n{tail}")

    def start(self) -> str:
        """Start the server; its URL (superuser `postgres`, trust authentication on 127.0.0.1 only)."""
        if os.geteuid() == 0:
            shutil.chown(self.root, SERVER_USER)
        self._run(self.initdb, "-D", self.data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        settings = ["-c listen_addresses=127.0.0.1", f"-c unix_socket_directories={self.root}",
                    "-c max_connections=200"]  # fmt: skip
        if not self.durable:
            settings += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        for attempt in range(3):  # the free port may be taken between the probe and the start
            self.port = _free_port()
            try:
                self._run(self.pg_ctl, "-D", self.data, "-l", self.root / "server.log", "-w", "-t", "60",
                          "-o", " ".join([f"-p {self.port}", *settings]), "start")  # fmt: skip
                break
            except RuntimeError:
                if attempt == 2:
                    raise
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(self.pg_ctl, "-D", self.data, "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> str:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


def with_search_path(url: str, schema: str) -> str:
    """`url` whose connections use `schema` first (libpq's `options` URL parameter)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "options"]
    query.append(("options", f"-csearch_path={schema}"))
    return urlunsplit(parts._replace(query=urlencode(query)))


@contextmanager
def fresh_schema(server_url: str) -> Iterator[str]:
    """A new, empty schema on the server for the block: the URL that uses it. Dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    try:
        yield with_search_path(server_url, name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The URL of a PostgreSQL server for this test session (see the module docstring)."""
    configured = os.environ.get(ENV_URL)
    if configured:
        yield configured
        return
    if find_server_binary("initdb") is None or find_server_binary("pg_ctl") is None:
        pytest.skip(INSTALL_HINT)
    with PostgresCluster() as url:
        yield url


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A URL whose connections see a fresh, empty schema of their own (dropped after the test)."""
    with fresh_schema(postgres_server) as url:
        yield url
