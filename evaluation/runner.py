"""Run methods over a LaMP split against a running server: concurrent, resumable, with a progress bar."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, Field
from tqdm import tqdm

from evaluation.client import AlignmentJob
from evaluation.intervals import KEY_COMPARISONS, Comparison, compare, interval, per_question, primary_metric
from evaluation.lamp import LaMPExample, find_split, load_split, task_spec
from evaluation.methods import METHODS, EvalSettings, HTTPEvaluator, Prediction
from evaluation.metrics import free_form_answer, task_metrics

logger = logging.getLogger(__name__)


class RunRequest(BaseModel):
    base_url: str
    data: Path
    tasks: list[str]
    methods: list[str]
    out: Path
    split: str = "dev"
    limit: int | None = Field(None, ge=1)
    concurrency: int = Field(4, ge=1, le=256)
    model: str | None = None
    api_key: str = "not-needed"
    settings: EvalSettings = Field(default_factory=EvalSettings)


class MethodResult(BaseModel):
    method: str
    description: str
    n: int
    errors: int = Field(description="questions whose request failed (scored as an empty answer)")
    metrics: dict[str, float]
    seconds_per_question: float
    call_text_share: float | None = Field(
        None, description="answers that hold a tool call written as text or markup (target 0)"
    )
    llm_calls_per_question: float | None = None
    tool_rounds_per_question: float | None = None
    tokens_per_question: float | None = Field(None, description="prompt + completion, every engine call")
    calls_parsed: int | None = Field(None, description="tool calls read by vLLM's parser, all questions")
    calls_written: int | None = Field(None, description="tool calls written as JSON text, all questions")
    alignments_accepted: int | None = None
    primary_metric: str = ""
    interval: tuple[float, float] | None = Field(
        None, description="95% bootstrap interval of the primary metric"
    )


class TaskResult(BaseModel):
    task: str
    data: str
    synthetic: bool
    model: str
    run_id: str
    methods: list[MethodResult]
    free_form: bool = Field(False, description="answered as users ask (no label choice, tools offered)")
    alignment_wall_s: float | None = Field(None, description="setting up and aligning all aligned users")
    answer_wall_s: float = Field(0.0, description="answering every question, alignment excluded")
    comparisons: list[Comparison] = Field(default_factory=list, description="paired, on the primary metric")
    error_samples: list[str] = Field(default_factory=list)


def is_synthetic(examples: list[LaMPExample]) -> bool:
    return bool(examples) and all(e.id.startswith("syn-") for e in examples)


class PredictionLog:
    """`predictions.jsonl`: appended as answers arrive, so an interrupted run resumes where it stopped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: dict[tuple[str, str], Prediction] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    p = Prediction.model_validate_json(line)
                except ValueError:
                    continue  # a line cut short by the interruption
                self.done[(p.method, p.id)] = p

    def append(self, prediction: Prediction) -> None:
        with self.path.open("a") as f:
            f.write(prediction.model_dump_json() + "\n")
            f.flush()
        self.done[(prediction.method, prediction.id)] = prediction


def _run_id(folder: Path) -> str:
    """Kept in the output folder: a resumed run keeps its id (and its users' names)."""
    marker = folder / "run_id"
    if marker.exists():
        return marker.read_text().strip()
    run_id = uuid.uuid4().hex[:8]
    marker.write_text(run_id + "\n")
    return run_id


async def served_model(base_url: str, api_key: str) -> str:
    async with httpx.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {api_key}"}) as client:
        response = await client.get(f"{base_url.rstrip('/')}/v1/models")
        response.raise_for_status()
        return str(response.json()["data"][0]["id"])


async def run_task(request: RunRequest, task: str, model: str) -> TaskResult:
    spec = task_spec(task)
    questions, outputs = find_split(request.data, task, request.split)
    examples = [e for e in load_split(questions, outputs) if e.gold is not None][: request.limit]
    if not examples:
        raise ValueError(f"{questions}: no questions with gold outputs")
    folder = request.out / task
    folder.mkdir(parents=True, exist_ok=True)
    run_id = _run_id(folder)
    log = PredictionLog(folder / "predictions.jsonl")
    evaluator = HTTPEvaluator(request.base_url, model, spec, run_id, request.settings, request.api_key)
    pending = [(m, e) for m in request.methods for e in examples if (m, e.id) not in log.done]
    errors: dict[tuple[str, str], str] = {}
    gate = asyncio.Semaphore(request.concurrency)
    aligned: dict[tuple[str, str], dict[str, Any]] = {}

    async def set_up(method: str, example: LaMPExample) -> tuple[str, LaMPExample, str] | None:
        try:
            async with gate:
                user_id = await evaluator.setup_user(METHODS[method], example)
            assert user_id is not None
            return method, example, user_id
        except Exception as exc:  # answered (set up and aligned again) one by one in the answering phase
            logger.warning("%s %s %s: setup for alignment failed: %r", task, method, example.id, exc)
            return None

    async def wait_aligned(method: str, example: LaMPExample, user_id: str, job: AlignmentJob) -> None:
        try:
            aligned[(method, example.id)] = await evaluator.align(user_id, job)
        except Exception as exc:  # answered (and aligned again) one by one in the answering phase
            logger.warning("%s %s %s: batch alignment failed: %r", task, method, example.id, exc)

    async def one(method: str, example: LaMPExample) -> None:
        async with gate:
            try:
                log.append(
                    await evaluator.answer(METHODS[method], example, aligned.get((method, example.id)))
                )
            except Exception as exc:  # recorded and retried by the next (resumed) run
                errors[(method, example.id)] = f"{type(exc).__name__}: {exc}"
                logger.warning("%s %s %s failed: %r", task, method, example.id, exc)

    total = len(request.methods) * len(examples)
    to_align = [(m, e) for m, e in pending if METHODS[m].align]
    alignment_wall_s = None
    try:
        if to_align:
            # Every aligned user is set up before any alignment is queued, and every job is queued before
            # any is awaited: the alignment service takes them as one round (up to `alignment.round_size`
            # users) through the pool. Queued while others were still being set up, the first jobs would
            # form a round of their own and the rest would wait for it to end.
            started = time.monotonic()
            ready = [r for r in await asyncio.gather(*(set_up(m, e) for m, e in to_align)) if r is not None]
            jobs = await asyncio.gather(
                *(evaluator.start_alignment(user_id) for _, _, user_id in ready), return_exceptions=True
            )
            waits = []
            for (m, e, user_id), job in zip(ready, jobs, strict=True):
                if isinstance(job, AlignmentJob):
                    waits.append(wait_aligned(m, e, user_id, job))
                else:
                    logger.warning("%s %s %s: queueing the alignment failed: %r", task, m, e.id, job)
            with tqdm(
                total=len(to_align), initial=len(to_align) - len(waits), desc=f"{task} align", unit="user"
            ) as bar:
                for future in asyncio.as_completed(waits):
                    await future
                    bar.update(1)
            alignment_wall_s = time.monotonic() - started
        started = time.monotonic()
        with tqdm(total=total, initial=total - len(pending), desc=task, unit="q") as bar:
            for future in asyncio.as_completed([one(m, e) for m, e in pending]):
                await future
                bar.update(1)
                bar.set_postfix(errors=len(errors))
        answer_wall_s = time.monotonic() - started
    finally:
        await evaluator.close()

    results = []
    metric = primary_metric(spec)
    scores: dict[str, list[float]] = {}
    free_form = request.settings.free_form
    for name in request.methods:
        preds = [log.done.get((name, e.id)) for e in examples]
        golds = [e.gold or "" for e in examples]
        texts = [p.prediction if p else "" for p in preds]
        if free_form:  # the label or rating the answer names, as the official evaluators read answers
            texts = [free_form_answer(spec, t) for t in texts]
        scores[name] = per_question(spec, texts, golds)
        answered = [p for p in preds if p is not None]
        aligned = [p.alignment for p in answered if p.alignment is not None]
        results.append(
            MethodResult(
                method=name,
                description=METHODS[name].description,
                n=len(examples),
                errors=sum(p is None for p in preds),
                metrics=task_metrics(spec, texts, golds),
                seconds_per_question=sum(p.seconds for p in answered) / max(1, len(answered)),
                **_cost_summary(answered),
                alignments_accepted=sum(bool(a.get("accepted")) for a in aligned) if aligned else None,
                primary_metric=metric,
                interval=interval(scores[name]),
            )
        )
    comparisons = [
        compare(a, b, metric, scores[a], scores[b]) for a, b in KEY_COMPARISONS if a in scores and b in scores
    ]
    result = TaskResult(
        task=task,
        data=str(questions),
        synthetic=is_synthetic(examples),
        model=model,
        run_id=run_id,
        free_form=free_form,
        methods=results,
        alignment_wall_s=alignment_wall_s,
        answer_wall_s=answer_wall_s,
        comparisons=comparisons,
        error_samples=list(errors.values())[:5],
    )
    (folder / "results.json").write_text(result.model_dump_json(indent=2) + "\n")
    return result


def _cost_summary(answered: list[Prediction]) -> dict[str, Any]:
    """Per method: the share of answers with call text, engine calls, tool rounds and tokens per question
    (over the answers that recorded them; runs resumed from before these were recorded have none)."""
    known = [p for p in answered if p.llm_calls is not None]
    if not known:
        return {}
    n = len(known)
    return {
        "call_text_share": sum(bool(p.call_text) for p in known) / n,
        "llm_calls_per_question": sum(p.llm_calls or 0 for p in known) / n,
        "tool_rounds_per_question": sum(p.tool_rounds or 0 for p in known) / n,
        "tokens_per_question": sum((p.prompt_tokens or 0) + (p.completion_tokens or 0) for p in known) / n,
        "calls_parsed": sum(p.calls_parsed or 0 for p in known),
        "calls_written": sum(p.calls_written or 0 for p in known),
    }


async def run(request: RunRequest) -> list[TaskResult]:
    unknown = [m for m in request.methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    for task in request.tasks:
        task_spec(task)  # fail before any work on a misspelled task
    request.out.mkdir(parents=True, exist_ok=True)
    model = request.model or await served_model(request.base_url, request.api_key)
    return [await run_task(request, task, model) for task in request.tasks]


def results_payload(results: list[TaskResult]) -> dict[str, Any]:
    return {"tasks": [json.loads(r.model_dump_json()) for r in results]}
