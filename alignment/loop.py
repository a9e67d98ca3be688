"""The paper's test-time alignment for one user: simulate, textual-gradient feedback, persona update.

For the user's latest n interactions with ground truth (newest first): re-run the full agent under the
current persona (each interaction left out of its own retrieval), ask the LLM for feedback comparing
answer and truth, aggregate, ask the LLM for the updated persona; repeat E iterations. An acceptance
gate (beyond the paper) scores the candidate on the same batch and keeps it only if not worse.
Nothing is written here: the caller stores the result, so a crash mid-way changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Sequence
from typing import Any, Protocol

from pydantic import BaseModel, Field

from agent.core import PersonaAgent
from agent.persona import bound_persona
from agent.prompts import ALIGN_FEEDBACK, ALIGN_JUDGE, ALIGN_UPDATE
from alignment.scoring import metric_kind, task_score
from memory.records import Interaction
from personaagent.llm import LLM, TokenUsage
from personaagent.quoting import quote_data
from personaagent.settings import AlignmentSettings

FEEDBACK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "persona_change": {"type": "string", "maxLength": 400},
        "search_keywords": {"type": "string", "maxLength": 200},
        "preferences": {"type": "string", "maxLength": 300},
    },
    "required": ["persona_change", "search_keywords", "preferences"],
}
JUDGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"score": {"type": "integer", "minimum": 0, "maximum": 10}},
    "required": ["score"],
}


class AlignmentOutcome(BaseModel):
    user_id: str
    base_version: int
    accepted: bool
    candidate: str | None = None
    feedback: list[dict[str, Any]] = Field(default_factory=list)
    score_before: float | None = None
    score_after: float | None = None
    metric: str | None = None
    interactions: list[int] = Field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    llm_calls: int = 0
    seconds: float = 0.0
    skipped: str | None = None


class AlignmentMemory(Protocol):
    async def ground_truth(self, user_id: str, n: int) -> list[Interaction]: ...


class TokenMeter:
    """Counts the tokens and calls of one alignment (all of its LLM calls go through `chat`)."""

    def __init__(self, llm: LLM, cache_salt: str | None = None) -> None:
        self.llm = llm
        self.cache_salt = cache_salt
        self.usage = TokenUsage()

    async def chat(self, messages: list[dict[str, Any]], **kwargs: Any) -> str:
        result = await self.llm.chat(messages, cache_salt=self.cache_salt, **kwargs)
        self.usage.add(result.usage)
        return result.text


_PROMPT_LABEL = re.compile(r"^\s*new persona:\s*", re.IGNORECASE | re.MULTILINE)
# <data ...>, </data>, and as the prompt quoted them: <\data ...>, <\/data>
_DATA_FENCE_TAG = re.compile(r"<\\?/?data\b[^>]*>", re.IGNORECASE)


def clean_rewrite(text: str) -> str:
    """The persona in a rewrite, without what a small model copies from the update prompt: the current
    persona echoed before a "New persona:" label, and the data-fence tags the prompt quoted it in."""
    text = _PROMPT_LABEL.split(text)[-1]
    text = _DATA_FENCE_TAG.sub("", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


async def simulate(
    agent: PersonaAgent,
    user_id: str,
    persona: str,
    items: Sequence[Interaction],
    cfg: AlignmentSettings,
    meter: TokenMeter,
) -> list[str]:
    """The agent's answers to the batch under `persona`, each item left out of its own retrieval."""

    async def one(item: Interaction) -> str:
        plan = await agent.prepare(
            user_id,
            [{"role": "user", "content": item.input}],
            exclude_ids=[item.id],
            persona_override=persona,
        )
        answer = await agent.answer(plan, max_tokens=cfg.answer_max_tokens, priority=cfg.priority)
        meter.usage.add(plan.usage)
        return answer

    return list(await asyncio.gather(*(one(i) for i in items)))


async def score(
    meter: TokenMeter, kind: str, items: Sequence[Interaction], answers: Sequence[str], cfg: AlignmentSettings
) -> float:
    truths = [i.output or "" for i in items]
    if kind != "judge":
        return task_score(kind, answers, truths)

    async def judge(item: Interaction, answer: str) -> float:
        prompt = ALIGN_JUDGE.render(
            input=quote_data(item.input[:1000], "request"),
            answer=quote_data(answer[:1000], "answer"),
            truth=quote_data((item.output or "")[:1000], "wanted_answer"),
        )
        text = await meter.chat(
            [{"role": "user", "content": prompt}],
            max_tokens=16,
            json_schema=JUDGE_SCHEMA,
            priority=cfg.priority,
        )
        try:
            return float(json.loads(text)["score"]) / 10
        except (ValueError, KeyError, TypeError):
            return 0.0

    values = await asyncio.gather(*(judge(i, a) for i, a in zip(items, answers, strict=True)))
    return sum(values) / len(values)


async def feedback_for(
    meter: TokenMeter, persona: str, item: Interaction, answer: str, cfg: AlignmentSettings
) -> dict[str, Any]:
    prompt = ALIGN_FEEDBACK.render(
        persona=quote_data(persona[:3000], "persona"),
        input=quote_data(item.input[:1500], "request"),
        answer=quote_data(answer[:800], "answer"),
        truth=quote_data((item.output or "")[:800], "wanted_answer"),
    )
    text = await meter.chat(
        [{"role": "user", "content": prompt}],
        max_tokens=200,
        json_schema=FEEDBACK_SCHEMA,
        priority=cfg.priority,
    )
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = {"persona_change": text[:400], "search_keywords": "", "preferences": ""}
    return {"interaction_id": item.id, "answer": answer, "truth": item.output, **data}


def aggregate(feedback: Sequence[dict[str, Any]]) -> str:
    return "\n".join(
        f"- Request {n + 1}: persona change: {f.get('persona_change', '')}; search: {f.get('search_keywords', '')}; "
        f"user preferences: {f.get('preferences', '')}"
        for n, f in enumerate(feedback)
    )


async def align_user(
    agent: PersonaAgent,
    memory: AlignmentMemory,
    user_id: str,
    persona: str,
    base_version: int,
    cfg: AlignmentSettings,
) -> AlignmentOutcome:
    """One alignment of one user. Pure computation: returns the outcome, stores nothing."""
    started = time.monotonic()
    meter = TokenMeter(agent.llm, agent.salts.user(user_id))
    items = await memory.ground_truth(user_id, cfg.n)
    outcome = AlignmentOutcome(
        user_id=user_id, base_version=base_version, accepted=False, interactions=[i.id for i in items]
    )
    if not items:
        outcome.skipped = "no interactions with ground truth"
        return outcome
    kind = metric_kind([i.output or "" for i in items])
    outcome.metric = kind
    current = persona
    unusable: str | None = None  # why the last rewrite was not taken, with what the model wrote
    answers = await simulate(agent, user_id, current, items, cfg, meter)
    outcome.score_before = await score(meter, kind, items, answers, cfg) if cfg.gate else None
    for _ in range(cfg.iterations):
        feedback = list(
            await asyncio.gather(
                *(feedback_for(meter, current, i, a, cfg) for i, a in zip(items, answers, strict=True))
            )
        )
        outcome.feedback.extend(feedback)
        prompt = ALIGN_UPDATE.render(
            persona=quote_data(current, "persona"),
            feedback=quote_data(aggregate(feedback), "feedback"),
            max_words=str(cfg.persona_max_words),
        )
        text = await meter.chat(
            [{"role": "user", "content": prompt}], max_tokens=cfg.update_max_tokens, priority=cfg.priority
        )
        candidate = bound_persona(clean_rewrite(text), agent.settings.max_persona_chars)
        if len(candidate.split()) < 5 or candidate == current:
            # An empty or degenerate rewrite is not a persona, an unchanged one needs no second look: the
            # re-answers under it would be the last ones again.
            what = "the current persona again" if candidate == current else "no persona"
            unusable = f"the update wrote {what}: {text.strip()[:200]!r}"
            break
        current = candidate
        answers = (
            await simulate(agent, user_id, current, items, cfg, meter)
            if (cfg.gate or cfg.iterations > 1)
            else answers
        )
    outcome.candidate = current if current != persona else None
    if outcome.candidate is None:
        outcome.skipped = unusable or "the update produced no new persona"
    elif cfg.gate:
        outcome.score_after = await score(meter, kind, items, answers, cfg)
        outcome.accepted = outcome.score_after >= (outcome.score_before or 0.0)
    else:
        outcome.accepted = True
    outcome.prompt_tokens, outcome.completion_tokens = (
        meter.usage.prompt_tokens,
        meter.usage.completion_tokens,
    )
    outcome.llm_calls = meter.usage.calls
    outcome.seconds = time.monotonic() - started
    return outcome
