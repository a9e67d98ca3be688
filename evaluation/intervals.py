"""Noise in a result: 95% bootstrap intervals per method and paired comparisons between methods.

Each task has one primary metric, the mean of a per-question score: accuracy (LaMP-1/2M/2N), absolute
error (LaMP-3, as MAE), ROUGE-1 F (LaMP-4/5/7). Resampling questions with replacement gives a method's
interval; resampling the same questions for two methods gives the interval of their paired difference
(every method answers the same questions, so the pairing removes the questions' own spread). A
difference whose interval contains 0 is inside the noise: no win either way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel

from evaluation.lamp import TaskSpec
from evaluation.metrics import HIGHER_IS_BETTER, _as_rating, _label_index

BOOTSTRAP_SAMPLES = 5000


def primary_metric(spec: TaskSpec) -> str:
    return {"classification": "accuracy", "regression": "mae"}.get(spec.kind, "rouge-1")


def per_question(spec: TaskSpec, predictions: Sequence[str], golds: Sequence[str]) -> list[float]:
    """The primary metric's score of each question (their mean is the metric)."""
    if spec.kind == "classification":
        assert spec.labels is not None
        return [float(_label_index(p.strip(), spec.labels) == _label_index(g.strip(), spec.labels))
                for p, g in zip(predictions, golds, strict=True)]  # fmt: skip
    if spec.kind == "regression":
        return [abs(_as_rating(p.strip(), g) - float(g)) for p, g in zip(predictions, golds, strict=True)]
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=False)
    return [
        scorer.score(g.strip(), p.strip())["rouge1"].fmeasure for p, g in zip(predictions, golds, strict=True)
    ]


def _resampled_means(values: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(values), size=(BOOTSTRAP_SAMPLES, len(values)))
    return values[picks].mean(axis=1)


def interval(scores: Sequence[float], seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean."""
    means = _resampled_means(np.asarray(scores, dtype=float), seed)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


class Comparison(BaseModel):
    """`method` minus `baseline` on the primary metric, paired over the same questions."""

    method: str
    baseline: str
    metric: str
    difference: float
    low: float
    high: float
    verdict: str  # "better", "worse" or "within noise" (for `method`, in the metric's good direction)


def compare(
    method: str,
    baseline: str,
    metric: str,
    scores: Sequence[float],
    base_scores: Sequence[float],
    seed: int = 0,
) -> Comparison:
    diff = np.asarray(scores, dtype=float) - np.asarray(base_scores, dtype=float)
    low, high = interval(diff.tolist(), seed)
    sign = 1 if HIGHER_IS_BETTER.get(metric, True) else -1
    verdict = "within noise"
    if low > 0 or high < 0:
        verdict = "better" if sign * diff.mean() > 0 else "worse"
    return Comparison(method=method, baseline=baseline, metric=metric, difference=float(diff.mean()),
                      low=low, high=high, verdict=verdict)  # fmt: skip


# The comparisons the method is judged by, when both sides ran.
KEY_COMPARISONS = (
    ("persona_agent_no_align", "rag"),
    ("persona_agent_no_align", "non_personalized"),
    ("persona_agent", "persona_agent_no_align"),
    ("persona_agent", "rag"),
)
