"""How well answers match ground truth: the task metric when truth is a label or a number, else a judge."""

from __future__ import annotations

import re
from collections.abc import Sequence

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def normalize_label(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]+", "", text.lower()).strip()


def parse_number(text: str) -> float | None:
    match = NUMBER.search(text)
    return float(match.group()) if match else None


def metric_kind(truths: Sequence[str]) -> str:
    """'number' when every truth is numeric, 'label' when every truth is short, else 'judge'."""
    if truths and all(NUMBER.fullmatch(t.strip()) for t in truths):
        return "number"
    if truths and all(len(t.split()) <= 3 for t in truths):
        return "label"
    return "judge"


def task_score(kind: str, answers: Sequence[str], truths: Sequence[str]) -> float:
    """Higher is better. label: accuracy; number: minus mean absolute error (non-numeric = 5 off)."""
    if not truths:
        return 0.0
    if kind == "label":
        hits = sum(normalize_label(t) == normalize_label(a) or normalize_label(t) in normalize_label(a).split()
                   for a, t in zip(answers, truths, strict=True))  # fmt: skip
        return hits / len(truths)
    if kind == "number":
        errors = []
        for a, t in zip(answers, truths, strict=True):
            value = parse_number(a)
            errors.append(abs(value - float(t)) if value is not None else 5.0)
        return -sum(errors) / len(errors)
    raise ValueError(f"no task metric for kind {kind!r}")
