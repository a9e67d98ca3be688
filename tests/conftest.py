"""Collection rules for the whole suite (fixtures live with their half: tests/stack/conftest.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

STACK_DIR = Path(__file__).parent / "stack"

# `postgres_server` / `postgres_url`: a real PostgreSQL server for the tests that take them (skipped, with
# what to install, where there is none).
pytest_plugins = ["tests.postgres"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/stack carries the `stack` marker (`-m "not stack"` == tests/unit); tests
    marked `last` (the crash test restarts the shared stack) run after all others, tests marked `first`
    (the multi-node test starts a stack of its own) before any other, so two stacks never run at once."""
    for item in items:
        if STACK_DIR in Path(item.fspath).parents:
            item.add_marker(pytest.mark.stack)

    def place(item: pytest.Item) -> int:
        return -1 if item.get_closest_marker("first") else int(item.get_closest_marker("last") is not None)

    items.sort(key=place)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A run of unit tests alone must not have imported Ray (they use fakes behind the ports)."""
    items = getattr(session, "items", [])
    unit_only = items and not any(STACK_DIR in Path(item.fspath).parents for item in items)
    if unit_only and "ray" in sys.modules and exitstatus == 0:
        print("\nunit tests imported Ray: keep them free of it (tests/stack is for the real stack)")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
