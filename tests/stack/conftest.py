"""The stack tests' fixture: the real stack starts once per session (tests/stack/harness.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from loadtests.servers import free_port
from tests.stack.harness import Stack, stack_env


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    port = free_port()
    data_dir = tmp_path_factory.mktemp("data")
    log_path = tmp_path_factory.mktemp("logs") / "stack.log"
    stack = Stack(port, data_dir, log_path, stack_env(port, data_dir))
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
