"""The suite: `tests/unit` (no Ray, no engine; seconds) and `tests/stack` (the real stack, started once)."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
