"""Evaluation methods, each answered through the running serving stack over HTTP (the product is measured).

Baselines build their prompt on the client and call the plain OpenAI endpoint; RAG and PAG read the user's
memories and profile from the user API; PersonaAgent and its ablations are personalized chats (`user` set),
the ablations switched per request with `persona_agent_options`.
"""

from __future__ import annotations

import contextlib
import random
import re
import time
from typing import Any, Literal

import httpx
from openai import AsyncOpenAI
from pydantic import BaseModel, Field

from evaluation.client import AlignmentJob, ServeAPIError, ServeClient
from evaluation.lamp import LaMPExample, TaskSpec
from personaagent.quoting import history_block, quote_data
from personaagent.written_calls import contains_call_text


class Method(BaseModel):
    name: str
    description: str
    context: Literal["none", "icl", "rag", "pag", "agent"]
    align: bool = False
    options: dict[str, bool] = Field(default_factory=dict, description="persona_agent_options")

    @property
    def uses_memory(self) -> bool:
        return self.context in {"rag", "pag", "agent"}


METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method(name="non_personalized", description="the question alone", context="none"),
        Method(name="icl", description="k random profile items in the prompt", context="icl"),
        Method(name="rag", description="top-k retrieved profile items in the prompt", context="rag"),
        Method(name="pag", description="profile summary + top-k retrieved items", context="pag"),
        Method(name="persona_agent_no_align", description="PersonaAgent, initial persona", context="agent"),
        Method(name="persona_agent", description="PersonaAgent, aligned persona", context="agent", align=True),
        # Ablations of the aligned agent. Without a persona there is nothing for alignment to change.
        Method(name="no_persona", description="PersonaAgent without persona", context="agent",
               options={"persona": False}),
        Method(name="no_memory", description="PersonaAgent without memory", context="agent", align=True,
               options={"memory": False}),
        Method(name="no_action", description="PersonaAgent without action module", context="agent",
               align=True, options={"tools": False}),
    ]
}  # fmt: skip


class Prediction(BaseModel):
    """One answered question: a line of the run's `predictions.jsonl` (what a resumed run skips)."""

    method: str
    id: str
    user_id: str | None
    prediction: str
    gold: str | None
    seconds: float
    persona_version: int | None = None
    alignment: dict[str, Any] | None = Field(None, description="the alignment job's result, when aligned")
    llm_calls: int | None = Field(None, description="engine calls of the answering request")
    tool_rounds: int | None = Field(None, description="of those, rounds that ran the agent's tools")
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    call_text: bool | None = Field(None, description="the answer holds a tool call written as text or markup")
    calls_parsed: int | None = Field(None, description="tool calls read by vLLM's parser (markup)")
    calls_written: int | None = Field(None, description="tool calls written as JSON text, read by the agent")


class EvalSettings(BaseModel):
    k: int = Field(3, ge=1, description="profile items in ICL / retrieved items in RAG and PAG")
    alignment_timeout_s: float = Field(
        3600,
        gt=0,
        description="how long to wait for one user's alignment job; the batch is queued at once, so the "
        "last jobs wait for the whole batch (on a CPU with the quality model, tens of minutes)",
    )
    poll_s: float = Field(1.0, gt=0)
    keep_users: bool = False
    free_form: bool = Field(
        False,
        description="answer as users ask: no output format (the label choice), the agent's tools offered, "
        "the task's free-form token budget; labels and ratings are read from the answer",
    )


def eval_user_id(run_id: str, method: str, example_id: str) -> str:
    """A user per (run, method, question): methods never see each other's memories or personas."""
    raw = f"eval.{run_id}.{method}.{example_id}"
    return re.sub(r"[^A-Za-z0-9._@+-]", "-", raw)[:128]


class HTTPEvaluator:
    """Answers one (method, question) pair against a running PersonaAgent Serve."""

    def __init__(
        self,
        base_url: str,
        model: str,
        spec: TaskSpec,
        run_id: str,
        settings: EvalSettings,
        api_key: str = "not-needed",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.spec = spec
        self.run_id = run_id
        self.settings = settings
        # The openai client retries 429s by itself, honoring Retry-After; `ServeClient` does the same.
        self.openai = AsyncOpenAI(base_url=f"{self.base_url}/v1", api_key=api_key, timeout=600, max_retries=5)
        self.api = ServeClient(self.base_url, api_key)

    async def close(self) -> None:
        await self.openai.close()
        await self.api.close()

    # -- memory setup ------------------------------------------------------------------------------

    async def _fresh_user(self, user_id: str, example: LaMPExample) -> None:
        """Delete any half-finished earlier attempt, then import the profile (never the question)."""
        await self.api.delete_user(user_id)
        items = [self.spec.interaction(item, n) for n, item in enumerate(example.profile)]
        # The method decides whether to align.
        await self.api.import_interactions(user_id, items, schedule_alignment=False)

    async def setup_user(self, method: Method, example: LaMPExample) -> str | None:
        """The method's user: fresh history, profile (PAG, agent) and persona (agent). None: no memory."""
        if not method.uses_memory:
            return None
        user_id = eval_user_id(self.run_id, method.name, example.id)
        await self._fresh_user(user_id, example)
        if method.context in {"pag", "agent"}:
            await self.api.refresh_profile(user_id)
        if method.context == "agent":
            await self.api.create_persona(user_id)  # built from the profile
        return user_id

    async def start_alignment(self, user_id: str) -> AlignmentJob:
        return await self.api.align(user_id)

    async def align(self, user_id: str, job: AlignmentJob | None = None) -> dict[str, Any]:
        """Wait for the user's alignment job (started here unless `job` is given); its result, in short."""
        job = await self.api.wait_job(
            job or await self.start_alignment(user_id),
            self.settings.alignment_timeout_s,
            self.settings.poll_s,
        )
        if job.state != "done":
            raise RuntimeError(f"alignment job {job.id} {job.state}: {job.error}")
        result = job.result or {}
        keep = ("accepted", "score_before", "score_after", "metric", "skipped", "llm_calls", "prompt_tokens")
        return {k: result.get(k) for k in keep}

    # -- answering ---------------------------------------------------------------------------------

    def _decoding(self) -> dict[str, Any]:
        """Classification (and the LaMP-3 rating) decode with a structured choice over the label set,
        except in the free-form mode, which asks as a user would."""
        if self.settings.free_form or not self.spec.labels:
            return {}
        return {"structured_outputs": {"choice": self.spec.labels}}

    async def _complete(
        self, messages: list[dict[str, str]], user: str | None = None, **extra: Any
    ) -> tuple[str, dict[str, Any]]:
        """The answer, and what it cost (engine calls, tool rounds, tokens) and whether it holds call text."""
        response = await self.openai.chat.completions.create(
            model=self.model,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=self.spec.free_max_tokens if self.settings.free_form else self.spec.max_tokens,
            temperature=0.0,
            extra_body={**self._decoding(), **extra},
            **({"user": user} if user else {}),
        )
        text = (response.choices[0].message.content or "").strip()
        trace = (response.model_extra or {}).get("persona_agent") or {}
        usage = response.usage
        cost = {
            "llm_calls": trace.get("llm_calls", 1),
            "tool_rounds": trace.get("tool_llm_calls", 0),
            "prompt_tokens": usage.prompt_tokens if usage else None,
            "completion_tokens": usage.completion_tokens if usage else None,
            "call_text": contains_call_text(text, None, truncated=response.choices[0].finish_reason == "length"),
            "calls_parsed": sum(r["calls"] for r in trace.get("rounds", []) if not r["written_calls"]),
            "calls_written": sum(r["calls"] for r in trace.get("rounds", []) if r["written_calls"]),
        }
        return text, cost

    async def _prompt_context(self, method: Method, example: LaMPExample, user_id: str) -> str:
        k = self.settings.k
        if method.context == "icl":
            rng = random.Random(f"{self.run_id}:{example.id}")
            chosen = rng.sample(range(len(example.profile)), min(k, len(example.profile)))
            pairs = [self.spec.render_item(example.profile[i]) for i in sorted(chosen)]
            return history_block(pairs)
        hits = await self.api.search(user_id, example.input[:2000], k)
        context = history_block([(h.interaction.input, h.interaction.output) for h in hits])
        if method.context == "pag":
            profile = await self.api.get_profile(user_id)
            profile_text = profile.text.strip() if profile else ""
            context = f"Summary of this user:\n{quote_data(profile_text, 'profile')}\n\n{context}"
        return context

    async def answer(
        self, method: Method, example: LaMPExample, aligned: dict[str, Any] | None = None
    ) -> Prediction:
        """Answer one question. `aligned`: the user was set up and aligned beforehand (the alignment's
        result), as the runner does for all users of an aligned method at once; then `seconds` is the
        answering time only."""
        started = time.monotonic()
        user_id = eval_user_id(self.run_id, method.name, example.id) if method.uses_memory else None
        alignment = aligned
        persona_version = None
        cost: dict[str, Any] = {}
        try:
            if aligned is None:
                user_id = await self.setup_user(method, example)
            if method.context == "agent":
                assert user_id is not None
                if method.align and alignment is None:
                    alignment = await self.align(user_id)
                persona_version = (await self.api.get_persona(user_id)).version
                extra = {"persona_agent_options": method.options} if method.options else {}
                text, cost = await self._complete(
                    [{"role": "user", "content": example.input}], user=user_id, **extra
                )
            elif method.context == "none":
                text, cost = await self._complete([{"role": "user", "content": example.input}])
            else:
                context = await self._prompt_context(method, example, user_id or "")
                text, cost = await self._complete(
                    [{"role": "user", "content": f"{context}\n\n{example.input}"}]
                )
        finally:
            if user_id is not None and not self.settings.keep_users:
                with contextlib.suppress(httpx.HTTPError, ServeAPIError):  # never hide the answer's own error
                    await self.api.delete_user(user_id)
        return Prediction(
            method=method.name,
            id=example.id,
            user_id=user_id,
            prediction=text,
            gold=example.gold,
            seconds=time.monotonic() - started,
            persona_version=persona_version,
            alignment=alignment,
            **cost,
        )
