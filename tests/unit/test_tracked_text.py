"""No text in the repository speaks of how it was developed: numbered stops, work sessions, "this task", the
machine a figure came from by lending, or paths of a development machine. Figures say when, on what hardware
and with which command they were measured; that is all a reader needs. Checked over every file git tracks or
would track (untracked, not ignored), binary files aside."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests import REPO_ROOT

# Each pattern names one way development-process wording shows up; words with a legitimate technical sense
# ("session" of HTTP, pytest, Ray or a process group; `stop` sequences; `pg_ctl stop`) only count in a phrase
# that has no such sense.
PATTERNS = {
    "a numbered stop": r"\bstops?[ -]\d+\b",
    "this task/stop/session": r"\bthis (?:task|stop|session)\b",
    "a work session": r"\b(?:work|working|dev|development|coding) (?:stop|session)s?\b",
    "an earlier or later stop/session": r"\b(?:previous|next|later|earlier|last|current) (?:stop|session)s?\b",
    "a numbered session": r"\bsession \d+\b",
    "a lent machine": r"\b(?:was|were|is|got) lent\b|\blent (?:an? )?[A-Z]\d{2,3}\b",
    "the issue as a work order": r"\bthe issue (?:lists|listed|asks|asked|says|said)\b",
    "a development machine's path": r"/work/[a-z]|/tmp/cc\w*",
}
FORBIDDEN = re.compile("|".join(f"(?:{p})" for p in PATTERNS.values()), re.IGNORECASE)
# Legitimate uses: (path, the exact text around the match).
ALLOWED = {
    # LaMP's profile prompt: the user's task, not ours.
    ("agent/prompts.py", "not specific to this task"),
}
THIS_FILE = "tests/unit/test_tracked_text.py"


def tracked_text_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout
    return sorted({p for p in out.decode().split("\0") if p and (REPO_ROOT / p).is_file()})


def findings(path: str, text: str) -> list[str]:
    found = []
    for n, line in enumerate(text.splitlines(), 1):
        for match in FORBIDDEN.finditer(line):
            if not any(path == p and allowed in line for p, allowed in ALLOWED):
                found.append(f"{path}:{n}: {match.group(0)!r} in {line.strip()[:120]!r}")
    return found


@pytest.mark.skipif(
    shutil.which("git") is None or not (REPO_ROOT / ".git").exists(), reason="not a git checkout"
)
def test_no_tracked_text_speaks_of_the_development_process() -> None:
    found = []
    for path in tracked_text_files():
        if path == THIS_FILE:
            continue
        data = (REPO_ROOT / path).read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary (images)
        found += findings(path, data.decode("utf-8", errors="replace"))
    assert not found, "development-process wording:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "text",
    [
        "| stop 19 | 2.1 s |",
        "What changed this stop",
        "This task was lent an H200",
        "git clone /work/main /tmp/cc7",
        "resumed over the stop-19 folder",
        "measured in a later session",
        "Redesign: what the issue listed is done",
    ],
)
def test_the_patterns_catch_development_wording(text: str) -> None:
    assert findings("README.md", text)


@pytest.mark.parametrize(
    "text",
    [
        "`tests/stack/` starts the real stack once per session",
        "Ray's session files and compiler caches go to the /tmp volume",
        "async with httpx.AsyncClient() as session:",
        "router keyed on session_id (Ray Serve routing)",
        'body = {"stop": ["\\n"], "max_tokens": 16}',
        "generation ends at a stop sequence or after 2 stop tokens",
        "pg_ctl stop -m fast -D data",
        "SIGTERM stops every process within 15 s",
        "A server subprocess in its own session, its output in a log file",
        "@pytest.fixture(scope='session')",
        "per task, 12 profile items each",
        "/workspace/models and /tmp/cache",
    ],
)
def test_the_patterns_leave_legitimate_text_alone(text: str) -> None:
    assert findings("README.md", text) == []
