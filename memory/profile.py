"""Semantic memory: an LLM-written profile summary of a user from their interactions."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from memory.prompts import PROFILE_SUMMARY
from memory.records import Interaction
from personaagent.llm import LLM
from personaagent.quoting import history_lines


def format_interactions(items: Sequence[Interaction], max_chars: int) -> str:
    """Newest first, each clipped, until the character budget is spent (bounded prompt size)."""
    lines: list[str] = []
    used = 0
    for item in items:
        (line,) = history_lines([(item.input, item.output)], input_chars=400, output_chars=200)
        if used + len(line) > max_chars:
            break
        lines.append(line)
        used += len(line) + 1
    return "\n".join(lines)


class ProfileWriter:
    def __init__(
        self,
        llm: LLM,
        salt_for: Callable[[str], str],
        *,
        max_words: int = 80,
        max_input_chars: int = 4000,
        max_tokens: int = 160,
    ):
        self.llm = llm
        self.salt_for = salt_for
        self.max_words = max_words
        self.max_input_chars = max_input_chars
        self.max_tokens = max_tokens

    async def write(self, user_id: str, interactions: Sequence[Interaction], priority: int) -> str:
        prompt = PROFILE_SUMMARY.render(
            max_words=str(self.max_words),
            interactions=format_interactions(interactions, self.max_input_chars),
        )
        result = await self.llm.chat(
            [{"role": "user", "content": prompt}],
            max_tokens=self.max_tokens,
            temperature=0.0,
            cache_salt=self.salt_for(user_id),
            priority=priority,
        )
        return result.text.strip()

    @property
    def prompt_ref(self) -> str:
        return PROFILE_SUMMARY.ref
