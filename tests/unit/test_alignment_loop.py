"""One user's alignment with a scripted engine: what a rewrite the loop cannot use costs and reports."""

from __future__ import annotations

import json

from alignment.loop import align_user
from memory.records import Interaction, utcnow
from personaagent.settings import AlignmentSettings
from tests.unit.test_agent_loop import MemoryStub, _agent

FEEDBACK = json.dumps(
    {"persona_change": "prefer sci-fi", "search_keywords": "sci-fi", "preferences": "sci-fi"}
)


class AlignmentMemoryStub(MemoryStub):
    async def ground_truth(self, user_id: str, n: int) -> list[Interaction]:
        now = utcnow()
        return [
            Interaction(
                id=i,
                user_id=user_id,
                input=f"Tag movie {i}",
                output="sci-fi",
                timestamp=now,
                metadata={},
                source="import",
                created_at=now,
            )
            for i in range(n)
        ]


async def test_an_unusable_rewrite_is_reported_with_what_was_written_and_not_re_answered() -> None:
    """Seen with Qwen2.5-Coder-1.5B (3 of 16 users): the rewrite was no persona, and the loop still re-ran
    the agent on the batch under the unchanged one before saying so."""
    persona = "persona of u1"
    for rewrite, why in (("New persona: ok", "no persona"), (persona, "the current persona again")):
        replies = ["action", "action", "action", FEEDBACK, FEEDBACK, FEEDBACK, rewrite]
        agent, engine, _ = _agent(replies, auto_memory_search=False)
        outcome = await align_user(
            agent, AlignmentMemoryStub(), "u1", persona, 1, AlignmentSettings(n=3, iterations=2)
        )
        assert len(engine.bodies) == 7 and outcome.llm_calls == 7  # 3 answers, 3 feedbacks, 1 update
        assert not outcome.accepted and outcome.candidate is None and outcome.score_before == 0.0
        assert outcome.skipped == f"the update wrote {why}: {rewrite!r}"
    # A usable rewrite is re-answered under and scored (the gate): 3 more calls.
    replies = ["action"] * 3 + [FEEDBACK] * 3 + ["You tag films for a sci-fi fan.", "sci-fi", "sci-fi", "x"]
    agent, engine, _ = _agent(replies, auto_memory_search=False)
    outcome = await align_user(agent, AlignmentMemoryStub(), "u1", persona, 1, AlignmentSettings(n=3))
    assert len(engine.bodies) == 10 and outcome.candidate == "You tag films for a sci-fi fan."
    assert outcome.accepted and outcome.score_after is not None and outcome.score_after > 0
