"""The layers point one way (docs/architecture.md): a walk over every import, with `ast`, fails on any
forbidden arrow. Bottom up: personaagent (records, settings, quoting, LLM client) -> memory -> agent ->
alignment -> serving; evaluation talks HTTP; Ray only in serving/deployments, the app builder and the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests import REPO_ROOT

PACKAGES = ("personaagent", "memory", "agent", "alignment", "serving", "evaluation", "loadtests")
# What each layer may not import (a package name, or an exact module).
FORBIDDEN: dict[str, set[str]] = {
    "personaagent": {"memory", "agent", "alignment", "serving", "evaluation", "loadtests"},
    "memory": {"agent", "alignment", "serving", "evaluation", "loadtests"},
    "agent": {"alignment", "serving", "evaluation", "loadtests"},
    "alignment": {"serving", "evaluation", "loadtests"},
    "serving": {"evaluation", "loadtests"},
    "evaluation": {"memory", "agent", "alignment", "serving", "loadtests"},  # HTTP, and the API records
}
# Above memory, only its records (the port's data types) are visible: never the store, index or service.
MEMORY_VISIBLE_ABOVE = {"memory.records"}
ENTRY_POINTS = {"personaagent/cli.py"}  # the CLI wires every layer, as the app builder does
RAY_ALLOWED = ("serving/deployments/", "serving/app.py", "personaagent/cli.py")


def imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def violations() -> list[str]:
    found: list[str] = []
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            rel = path.relative_to(REPO_ROOT).as_posix()
            for line, module in imports(path):
                top = module.split(".")[0]
                where = f"{rel}:{line} imports {module}"
                if top == "ray" and not rel.startswith(RAY_ALLOWED):
                    found.append(f"{where} (Ray only in {', '.join(RAY_ALLOWED)})")
                if rel in ENTRY_POINTS:
                    continue
                if module in MEMORY_VISIBLE_ABOVE and package in {"agent", "alignment", "evaluation"}:
                    continue  # the records are the API's and the port's data types
                if top in FORBIDDEN.get(package, set()):
                    found.append(f"{where} ({package} may not import {top})")
                if package in {"agent", "alignment"} and top == "memory":
                    found.append(f"{where} (above memory only {', '.join(MEMORY_VISIBLE_ABOVE)})")
    return found


def test_no_import_crosses_a_layer_upwards() -> None:
    assert violations() == []


@pytest.mark.parametrize(
    ("package", "source", "expected"),
    [
        ("memory", "from agent.persona import initial_persona\n", "memory may not import agent"),
        (
            "alignment",
            "from serving.backend import EngineHandleBackend\n",
            "alignment may not import serving",
        ),
        ("agent", "import ray\n", "Ray only in"),
        ("agent", "from memory.store import SQLiteStore\n", "above memory only"),
    ],
)
def test_the_walk_catches_a_planted_crossing(package: str, source: str, expected: str) -> None:
    planted = REPO_ROOT / package / "_planted_crossing.py"
    planted.write_text(source)
    try:
        assert any(expected in v and "_planted_crossing" in v for v in violations())
    finally:
        planted.unlink()
