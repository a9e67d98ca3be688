"""Memory's own prompt: the semantic profile summary (memory sits below the agent and owns it)."""

from __future__ import annotations

from personaagent.prompting import PromptTemplate

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
