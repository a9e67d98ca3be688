"""Every prompt template of the system, each with a name and a version (recorded with what it wrote)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    version: int
    text: str

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.version}"

    def render(self, **values: str) -> str:
        return self.text.format(**values)


PROFILE_SUMMARY = PromptTemplate(
    name="profile_summary",
    version=1,
    text=(
        "Below are past interactions of one user (what they asked or wrote, and the answer or label when "
        "known). Write a short profile of this user in at most {max_words} words: their preferences, "
        "habits, recurring topics and style. Use only what the interactions show. Write plain sentences, "
        "no lists, no preamble.\n\nInteractions:\n{interactions}\n\nUser profile:"
    ),
)

ALL_TEMPLATES = (PROFILE_SUMMARY,)
