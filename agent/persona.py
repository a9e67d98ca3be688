"""The persona: a per-user system prompt, initialized from the semantic profile, length-bounded."""

from __future__ import annotations

from dataclasses import dataclass

from agent.prompts import PERSONA_INIT
from personaagent.quoting import quote_data

NO_PROFILE = "No history is known for this user yet; infer their preferences from the conversation."


def initial_persona(profile_text: str | None, max_chars: int) -> str:
    """Byte-stable for a given profile: no timestamps or retrieved text inside (prefix caching)."""
    summary = " ".join((profile_text or "").split())
    # The profile is LLM-written from user data: it enters the persona fenced as data.
    profile = quote_data(summary, "profile") if summary else NO_PROFILE
    return bound_persona(PERSONA_INIT.render(profile=profile), max_chars)


def bound_persona(text: str, max_chars: int) -> str:
    text = text.strip()
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    # Cut at a sentence or line end when one is near, so the persona stays readable.
    end = max(cut.rfind(". "), cut.rfind("\n"))
    return cut[: end + 1].rstrip() if end > max_chars * 0.6 else cut.rstrip()


@dataclass(frozen=True)
class AgentPersonaRules:
    """The agent's persona rules, handed to the memory service (`memory.service.PersonaRules`)."""

    max_chars: int

    def initial(self, profile_text: str | None) -> tuple[str, str]:
        """A first persona from the profile: (text, prompt ref)."""
        return initial_persona(profile_text, self.max_chars), PERSONA_INIT.ref

    def bound(self, text: str) -> str:
        return bound_persona(text, self.max_chars)
