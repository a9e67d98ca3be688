"""LaMP metrics, computed exactly as the official evaluator (LaMP-Benchmark/LaMP, eval/evaluation.py).

- classification: predictions and golds are stripped and mapped to their index in the task's label set
  (-1 when outside it, so an answer outside the set is always wrong); accuracy, and macro-F1 over
  `labels=range(len(label_set))` (scikit-learn, which the official `evaluate` metric wraps), so a label that
  never occurs in golds or predictions counts as F1 0.
- regression (LaMP-3): `float(prediction)`; a non-numeric prediction becomes whichever of 1 or 5 is
  farther from the gold; MAE and RMSE.
- generation: ROUGE-1 and ROUGE-L F-measure from Google's `rouge_score` (what `evaluate`'s rouge wraps),
  no stemming. The official script reports `evaluate`'s bootstrap "mid" of the mean; we report the plain
  mean, which the bootstrap estimates, so repeated scoring of the same outputs gives the same number.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from sklearn.metrics import f1_score

from evaluation.lamp import TaskSpec


def _label_index(text: str, labels: Sequence[str]) -> int:
    try:
        return list(labels).index(text)
    except ValueError:
        return -1


def classification_metrics(
    predictions: Sequence[str], golds: Sequence[str], labels: Sequence[str]
) -> dict[str, float]:
    preds = [_label_index(p.strip(), labels) for p in predictions]
    refs = [_label_index(g.strip(), labels) for g in golds]
    accuracy = sum(p == r for p, r in zip(preds, refs, strict=True)) / len(refs)
    f1 = f1_score(refs, preds, labels=list(range(len(labels))), average="macro", zero_division=0.0)
    return {"accuracy": float(accuracy), "f1": float(f1)}


def _as_rating(prediction: str, gold: str) -> float:
    try:
        return float(prediction)
    except ValueError:
        y = float(gold)
        return 1.0 if abs(1 - y) > abs(5 - y) else 5.0


def regression_metrics(predictions: Sequence[str], golds: Sequence[str]) -> dict[str, float]:
    preds = [_as_rating(p.strip(), g) for p, g in zip(predictions, golds, strict=True)]
    refs = [float(g) for g in golds]
    errors = [p - r for p, r in zip(preds, refs, strict=True)]
    return {
        "mae": sum(abs(e) for e in errors) / len(errors),
        "rmse": math.sqrt(sum(e * e for e in errors) / len(errors)),
    }


def generation_metrics(predictions: Sequence[str], golds: Sequence[str]) -> dict[str, float]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=False)
    scores = [scorer.score(g.strip(), p.strip()) for p, g in zip(predictions, golds, strict=True)]
    return {
        "rouge-1": sum(s["rouge1"].fmeasure for s in scores) / len(scores),
        "rouge-L": sum(s["rougeL"].fmeasure for s in scores) / len(scores),
    }


def free_form_answer(spec: TaskSpec, text: str) -> str:
    """What a free-form answer says, in the metric's terms: for a label set, the label the answer names
    first (whole words, case-insensitive; a longer label wins at the same place, so "dark comedy" is not
    "comedy"); for a rating, the first digit 1-5 standing alone. An answer that names none stays as it is
    and scores as wrong, as in the official evaluators. Generation tasks are scored on the whole answer."""
    if spec.kind == "generation":
        return text.strip()
    if spec.kind == "regression":
        match = re.search(r"(?<![\d.])[1-5](?![\d.]\d)", text)
        return match.group(0) if match else text.strip()
    lowered = text.lower()
    best: tuple[int, int, str] | None = None
    for label in spec.labels or []:
        match = re.search(r"(?<![\w-])" + re.escape(label.lower()) + r"(?![\w-])", lowered)
        if match and (best is None or (match.start(), -len(label)) < (best[0], best[1])):
            best = (match.start(), -len(label), label)
    return best[2] if best else text.strip()


def task_metrics(spec: TaskSpec, predictions: Sequence[str], golds: Sequence[str]) -> dict[str, float]:
    if len(predictions) != len(golds) or not golds:
        raise ValueError(
            f"need as many predictions as golds, and at least one ({len(predictions)} vs {len(golds)})"
        )
    if spec.kind == "classification":
        assert spec.labels is not None
        return classification_metrics(predictions, golds, spec.labels)
    if spec.kind == "regression":
        return regression_metrics(predictions, golds)
    return generation_metrics(predictions, golds)


# Which direction is better, for tables and plots.
HIGHER_IS_BETTER = {
    "accuracy": True,
    "f1": True,
    "mae": False,
    "rmse": False,
    "rouge-1": True,
    "rouge-L": True,
}
