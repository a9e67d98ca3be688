"""LaMP tasks: the official file format, each task's label set and metric kind, profile items as interactions.

File format (https://lamp-benchmark.github.io): `<split>_questions.json` is a list of
`{"id", "input", "profile": [...]}`; `<split>_outputs.json` is `{"task", "golds": [{"id", "output"}]}`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from memory.records import InteractionIn

MetricKind = Literal["classification", "regression", "generation"]

# Label sets exactly as the official evaluator's `get_all_labels` (order matters for macro-F1 indices).
LAMP_1_LABELS = ["[1]", "[2]"]
LAMP_2M_LABELS = [
    "sci-fi", "based on a book", "comedy", "action", "twist ending", "dystopia", "dark comedy", "classic",
    "psychology", "fantasy", "romance", "thought-provoking", "social commentary", "violence", "true story",
]  # fmt: skip
LAMP_2N_LABELS = [
    "food & drink", "sports", "education", "parents", "religion", "travel", "business", "crime",
    "science & technology", "culture & arts", "entertainment", "politics", "women", "style & beauty",
    "healthy living",
]  # fmt: skip
LAMP_3_LABELS = ["1", "2", "3", "4", "5"]

# When profile items carry no date, list order is taken as time order, one day apart from this origin.
_UNDATED_ORIGIN = datetime(2020, 1, 1, tzinfo=UTC)


class LaMPExample(BaseModel):
    """One test question of one user, with the user's profile and (when known) the gold output."""

    model_config = ConfigDict(extra="ignore")
    id: str
    input: str
    profile: list[dict[str, Any]]
    gold: str | None = None


class TaskSpec(BaseModel):
    """How one LaMP task is read, prompted, decoded and scored."""

    name: str
    kind: MetricKind
    labels: list[str] | None = Field(
        None, description="structured choice at decoding; the metric's label set"
    )
    max_tokens: int = Field(8, description="answer budget (generation tasks need more)")
    free_max_tokens: int = Field(
        48, description="answer budget in the free-form mode, where a model answers in a sentence as it would a user"
    )
    render_item: Callable[[dict[str, Any]], tuple[str, str | None]] = Field(exclude=True)

    def interaction(self, item: dict[str, Any], position: int) -> InteractionIn:
        """A profile item as a memory interaction (input, output, date)."""
        text, output = self.render_item(item)
        return InteractionIn(
            input=text,
            output=output,
            timestamp=_parse_date(item.get("date")) or _UNDATED_ORIGIN + timedelta(days=position),
            metadata={"lamp_id": str(item.get("id", position))},
        )


def _parse_date(value: Any) -> datetime | None:
    if not value:
        return None
    for fmt in ("%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y"):
        try:
            return datetime.strptime(str(value), fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    return None


def _s(item: dict[str, Any], key: str) -> str:
    return str(item.get(key) or "").strip()


# Profile items become requests phrased like the task, with the user's own answer as output, so the agent's
# memory search and the alignment loop see the same kind of request the question is.
TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in [
        TaskSpec(
            name="LaMP-1",
            kind="classification",
            labels=LAMP_1_LABELS,
            render_item=lambda i: (f"Write a title for this abstract of my paper: {_s(i, 'abstract')}", _s(i, "title")),
        ),
        TaskSpec(
            name="LaMP-2M",
            kind="classification",
            labels=LAMP_2M_LABELS,
            render_item=lambda i: (f"Which tag does this movie relate to? description: {_s(i, 'description')}", _s(i, "tag")),
        ),
        TaskSpec(
            name="LaMP-2N",
            kind="classification",
            labels=LAMP_2N_LABELS,
            render_item=lambda i: (
                f"Which category does this article relate to? title: {_s(i, 'title')} article: {_s(i, 'text')}",
                _s(i, "category"),
            ),
        ),
        TaskSpec(
            name="LaMP-3",
            kind="regression",
            labels=LAMP_3_LABELS,
            render_item=lambda i: (f"What is the score of this review on a scale of 1 to 5? review: {_s(i, 'text')}", _s(i, "score")),
        ),
        TaskSpec(
            name="LaMP-4",
            kind="generation",
            max_tokens=32,
            free_max_tokens=96,
            render_item=lambda i: (f"Generate a headline for this article: {_s(i, 'text')}", _s(i, "title")),
        ),
        TaskSpec(
            name="LaMP-5",
            kind="generation",
            max_tokens=32,
            free_max_tokens=96,
            render_item=lambda i: (f"Generate a title for this abstract of a paper: {_s(i, 'abstract')}", _s(i, "title")),
        ),
        TaskSpec(
            name="LaMP-7",
            kind="generation",
            max_tokens=64,
            free_max_tokens=96,
            # A tweet has no request behind it: it is history without ground truth.
            render_item=lambda i: (f"My tweet: {_s(i, 'text')}", None),
        ),
    ]
}  # fmt: skip


def task_spec(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"unknown LaMP task {name!r}; one of {', '.join(TASKS)}")
    return TASKS[name]


def load_split(questions_path: Path, outputs_path: Path | None = None) -> list[LaMPExample]:
    """Read a `*_questions.json` file and, when given, its `*_outputs.json` golds."""
    raw = json.loads(Path(questions_path).read_text())
    if not isinstance(raw, list):
        raise ValueError(f"{questions_path}: expected a JSON list of questions")
    golds: dict[str, str] = {}
    if outputs_path is not None:
        data = json.loads(Path(outputs_path).read_text())
        golds = {str(g["id"]): str(g["output"]) for g in data["golds"]}
    examples = []
    for row in raw:
        example = LaMPExample.model_validate({**row, "id": str(row["id"])})
        example.gold = golds.get(example.id)
        examples.append(example)
    return examples


def find_split(data_dir: Path, task: str, split: str = "dev") -> tuple[Path, Path | None]:
    """Locate `<task>/<split>_questions.json` (or `<split>_questions.json` directly in `data_dir`)."""
    for folder in (Path(data_dir) / task, Path(data_dir)):
        questions = folder / f"{split}_questions.json"
        if questions.exists():
            outputs = folder / f"{split}_outputs.json"
            return questions, outputs if outputs.exists() else None
    raise FileNotFoundError(f"no {split}_questions.json for {task} under {data_dir}")
