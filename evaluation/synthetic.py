"""Write a small SYNTHETIC dataset in the official LaMP file format, where each answer depends on the user.

    python -m evaluation.synthetic --out evaluation/data/synthetic [--users 16] [--profile 12] [--seed 0]

Two splits of different users: `dev` (what the docs report) and `train` (drawn from another random stream,
ids "syn-train-..."): prompts and settings are tuned on `train`, never on `dev`.

Every user follows a personal rule that their profile reveals and the question needs:
- LaMP-2M (movie tagging): each description mentions cues of two tags; the user always picks the one that
  ranks higher in their own tag preference order. Without the user's history both tags are equally right.
- LaMP-3 (product rating): the review's wording sets a base score; the user adds a personal habit
  (harsh -2 ... generous +2), clipped to 1..5.
- LaMP-5 (paper titles): the user titles every paper with their own template.

Not LaMP data and not comparable with published LaMP numbers: it checks the pipeline and that
personalization helps when the history carries the answer. Ids start with "syn-".
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

from evaluation.lamp import LAMP_2M_LABELS

MOVIE_CUES: dict[str, list[str]] = {
    "sci-fi": ["a starship crew", "an alien signal", "a time machine", "a colony on Mars"],
    "comedy": ["a bumbling uncle", "a slapstick wedding", "a prank war", "a clumsy waiter"],
    "romance": ["two strangers who fall in love", "a long-distance love letter", "a summer romance", "a wedding proposal"],
    "action": ["a car chase across the city", "a heist gone wrong", "a rogue commando", "a rooftop shootout"],
    "fantasy": ["a dragon's egg", "a wizard's apprentice", "an enchanted forest", "a cursed crown"],
    "true story": ["real events of 1962", "the true account of a miner", "a real-life rescue", "a famous trial"],
}  # fmt: skip
REVIEW_CUES: dict[int, list[str]] = {
    1: ["It broke after one day.", "Completely useless, stopped working at once.", "Arrived damaged and never worked."],
    2: ["Disappointing build quality.", "Works poorly and feels cheap.", "Below what I hoped for."],
    3: ["It is okay for the price.", "Does the job, nothing special.", "Average, some pros and cons."],
    4: ["Works well and feels solid.", "Good value, does what it says.", "Reliable and easy to use."],
    5: ["Absolutely love it, flawless.", "Best purchase this year, perfect.", "Outstanding quality in every way."],
}  # fmt: skip
PRODUCTS = ["kettle", "headphones", "backpack", "desk lamp", "blender", "keyboard", "tent", "water bottle"]
TOPICS = ["graph neural networks", "protein folding", "speech recognition", "federated learning",
          "image segmentation", "query optimization", "robot grasping", "climate forecasting"]  # fmt: skip
METHODS = ["contrastive", "Bayesian", "sparse", "hierarchical", "self-supervised", "retrieval-augmented"]
PROPERTIES = ["robustness", "efficiency", "fairness", "scalability", "interpretability"]
TITLE_STYLES = [
    "{Topic}: A {Method} Approach",
    "Towards {Property} in {Topic}",
    "On the {Property} of {Method} {Topic}",
    "{Method} Learning for {Topic}",
]

QUESTION_2M = (
    "Which tag does this movie relate to among the following tags? Just answer with the tag name without "
    "further explanation. tags: [{tags}] description: {description}"
)
QUESTION_3 = (
    "What is the score of the following review on a scale of 1 to 5? just answer with 1, 2, 3, 4, or 5 "
    "without further explanation. review: {review}"
)
QUESTION_5 = "Generate a title for the following abstract of a paper: {abstract}"


def _movie(rng: random.Random, ranking: list[str]) -> tuple[str, str]:
    first, second = rng.sample(list(MOVIE_CUES), 2)
    description = f"A film about {rng.choice(MOVIE_CUES[first])} and {rng.choice(MOVIE_CUES[second])}."
    tag = min((first, second), key=ranking.index)
    return description, tag


def _review(rng: random.Random, habit: int) -> tuple[str, str]:
    base = rng.randint(1, 5)
    text = f"{rng.choice(REVIEW_CUES[base])} (a {rng.choice(PRODUCTS)})"
    return text, str(min(5, max(1, base + habit)))


def _paper(rng: random.Random, style: str) -> tuple[str, str]:
    topic, method, prop = rng.choice(TOPICS), rng.choice(METHODS), rng.choice(PROPERTIES)
    abstract = (
        f"We study {topic}. We propose a {method} method and show that it improves {prop} "
        f"on three benchmarks."
    )
    title = style.format(Topic=topic.title(), Method=method.capitalize(), Property=prop.capitalize())
    return abstract, title


SPLITS = ("dev", "train")


def build_task(
    task: str, users: int, profile_size: int, seed: int, split: str = "dev"
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    # `dev` keeps the stream it always had (reported results stay reproducible); `train` users differ.
    rng = random.Random(f"{task}:{seed}" if split == "dev" else f"{task}:{seed}:{split}")
    prefix = "syn" if split == "dev" else f"syn-{split}"
    questions: list[dict[str, Any]] = []
    golds: list[dict[str, str]] = []
    for u in range(users):
        uid = f"{prefix}-{task.lower()}-{u:03d}"
        if task == "LaMP-2M":
            ranking = rng.sample(list(MOVIE_CUES), len(MOVIE_CUES))
            items = [_movie(rng, ranking) for _ in range(profile_size + 1)]
            profile = [
                {"id": f"{uid}-p{i}", "description": d, "tag": t} for i, (d, t) in enumerate(items[:-1])
            ]
            description, gold = items[-1]
            question = QUESTION_2M.format(tags=", ".join(LAMP_2M_LABELS), description=description)
        elif task == "LaMP-3":
            habit = rng.choice([-2, -1, 0, 1, 2])
            items = [_review(rng, habit) for _ in range(profile_size + 1)]
            profile = [{"id": f"{uid}-p{i}", "text": t, "score": s} for i, (t, s) in enumerate(items[:-1])]
            review, gold = items[-1]
            question = QUESTION_3.format(review=review)
        elif task == "LaMP-5":
            style = rng.choice(TITLE_STYLES)
            items = [_paper(rng, style) for _ in range(profile_size + 1)]
            profile = [
                {"id": f"{uid}-p{i}", "abstract": a, "title": t} for i, (a, t) in enumerate(items[:-1])
            ]
            abstract, gold = items[-1]
            question = QUESTION_5.format(abstract=abstract)
        else:
            raise ValueError(f"no synthetic generator for {task}")
        questions.append({"id": uid, "input": question, "profile": profile})
        golds.append({"id": uid, "output": gold})
    return questions, {"task": task, "golds": golds}


SYNTHETIC_TASKS = ("LaMP-2M", "LaMP-3", "LaMP-5")


def write_dataset(out: Path, users: int = 16, profile_size: int = 12, seed: int = 0) -> list[Path]:
    written = []
    for task in SYNTHETIC_TASKS:
        folder = Path(out) / task
        folder.mkdir(parents=True, exist_ok=True)
        for split in SPLITS:
            questions, outputs = build_task(task, users, profile_size, seed, split)
            (folder / f"{split}_questions.json").write_text(json.dumps(questions, indent=1) + "\n")
            (folder / f"{split}_outputs.json").write_text(json.dumps(outputs, indent=1) + "\n")
        written.append(folder)
    (Path(out) / "README.md").write_text(
        "# SYNTHETIC LaMP-format data\n\nGenerated by `python -m evaluation.synthetic` "
        f"(users={users}, profile={profile_size}, seed={seed}), splits {', '.join(SPLITS)} (tune on train, "
        "report on dev). Not LaMP data: see the module docstring.\n"
    )
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="evaluation/data/synthetic")
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--profile", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for folder in write_dataset(Path(args.out), args.users, args.profile, args.seed):
        print(f"wrote {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
