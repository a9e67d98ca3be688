"""LaMP metrics against hand-computed cases; data loading, the synthetic set, resume log, report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from evaluation.lamp import LAMP_2M_LABELS, find_split, load_split, task_spec
from evaluation.methods import Prediction, eval_user_id
from evaluation.metrics import classification_metrics, generation_metrics, regression_metrics, task_metrics
from evaluation.report import markdown
from evaluation.runner import MethodResult, PredictionLog, TaskResult
from evaluation.synthetic import MOVIE_CUES, build_task, write_dataset
from tests import REPO_ROOT


def test_classification_accuracy_and_macro_f1_by_hand() -> None:
    # preds -> indices [0, 1, 1, -1], golds -> [0, 0, 1, 2]
    # label a: P=1 R=1/2 F1=2/3; label b: P=1/2 R=1 F1=2/3; label c: F1=0  => macro 4/9
    result = classification_metrics([" a", "b", "b", "x"], ["a", "a", "b ", "c"], ["a", "b", "c"])
    assert result["accuracy"] == pytest.approx(0.5)
    assert result["f1"] == pytest.approx(4 / 9)


def test_macro_f1_counts_labels_never_seen_as_zero_like_the_official_evaluator() -> None:
    result = classification_metrics(["a", "b", "b", "x"], ["a", "a", "b", "c"], ["a", "b", "c", "d"])
    assert result["f1"] == pytest.approx((2 / 3 + 2 / 3) / 4)


def test_answer_outside_the_label_set_maps_to_minus_one_like_the_official_evaluator() -> None:
    # Both map to -1 and compare equal (the official quirk); a case variant of a label is wrong.
    assert classification_metrics(["zzz"], ["yyy"], ["a"])["accuracy"] == 1.0
    assert classification_metrics(["Comedy"], ["comedy"], LAMP_2M_LABELS)["accuracy"] == 0.0


def test_regression_non_numeric_is_the_farther_extreme() -> None:
    # gold 4: "bad" -> 1 (|1-4| = 3 > |5-4| = 1); gold 2: "??" -> 5
    result = regression_metrics(["2", "bad", "4.5", "??"], ["1", "4", "5", "2"])
    errors = [1.0, -3.0, -0.5, 3.0]
    assert result["mae"] == pytest.approx(sum(abs(e) for e in errors) / 4)
    assert result["rmse"] == pytest.approx(math.sqrt(sum(e * e for e in errors) / 4))


def test_rouge_by_hand() -> None:
    # "the cat sat" vs "the cat sat on the mat": P = 3/3, R = 3/6 -> F = 2/3 (unigrams and LCS alike)
    result = generation_metrics(["the cat sat", "a b"], ["the cat sat on the mat", "c d"])
    assert result["rouge-1"] == pytest.approx((2 / 3 + 0) / 2)
    assert result["rouge-L"] == pytest.approx((2 / 3 + 0) / 2)
    # Order matters for ROUGE-L, not for ROUGE-1.
    swapped = generation_metrics(["sat cat the"], ["the cat sat"])
    assert swapped["rouge-1"] == pytest.approx(1.0)
    assert swapped["rouge-L"] == pytest.approx(1 / 3)


def test_task_metrics_dispatch_and_length_check() -> None:
    assert set(task_metrics(task_spec("LaMP-3"), ["3"], ["3"])) == {"mae", "rmse"}
    assert set(task_metrics(task_spec("LaMP-1"), ["[1]"], ["[2]"])) == {"accuracy", "f1"}
    assert set(task_metrics(task_spec("LaMP-4"), ["x"], ["x"])) == {"rouge-1", "rouge-L"}
    with pytest.raises(ValueError):
        task_metrics(task_spec("LaMP-3"), ["3"], ["3", "4"])
    with pytest.raises(ValueError):
        task_spec("LaMP-9")


def test_official_files_load_and_profile_items_become_interactions(tmp_path: Path) -> None:
    folder = tmp_path / "LaMP-2N"
    folder.mkdir()
    questions = [{"id": 7, "input": "q?", "profile": [
        {"id": "p1", "text": "Budget passes", "title": "Senate vote", "category": "politics", "date": "2019-05-04"},
        {"id": "p2", "text": "Cup final", "title": "Win", "category": "sports"},
    ]}]  # fmt: skip
    (folder / "dev_questions.json").write_text(json.dumps(questions))
    (folder / "dev_outputs.json").write_text(
        json.dumps({"task": "LaMP_2", "golds": [{"id": "7", "output": "crime"}]})
    )
    q, o = find_split(tmp_path, "LaMP-2N")
    [example] = load_split(q, o)
    assert example.id == "7" and example.gold == "crime"
    spec = task_spec("LaMP-2N")
    first = spec.interaction(example.profile[0], 0)
    assert "Senate vote" in first.input and "Budget passes" in first.input and first.output == "politics"
    assert first.timestamp is not None and first.timestamp.year == 2019
    # No date: list order is time order.
    assert spec.interaction(example.profile[1], 1).timestamp.year == 2020
    # Tweets have no ground truth.
    assert task_spec("LaMP-7").interaction({"text": "hello"}, 0).output is None
    with pytest.raises(FileNotFoundError):
        find_split(tmp_path, "LaMP-3")


def test_synthetic_answers_follow_each_users_own_history() -> None:
    questions, outputs = build_task("LaMP-2M", users=8, profile_size=12, seed=0)
    golds = {g["id"]: g["output"] for g in outputs["golds"]}
    cue_tag = {cue: tag for tag, cues in MOVIE_CUES.items() for cue in cues}
    differing = 0
    for q in questions:
        assert q["id"].startswith("syn-") and golds[q["id"]] in LAMP_2M_LABELS
        # Every pair the user tagged tells which of the two tags they prefer: the rule is consistent,
        # and the question's answer is the preferred one of its two cues.
        beats = set()
        for item in q["profile"]:
            tags = {cue_tag[c] for c in cue_tag if c in item["description"]}
            (other,) = tags - {item["tag"]}
            beats.add((item["tag"], other))
        assert not any((b, a) in beats for a, b in beats)
        differing += len({t for t, _ in beats}) > 1
    assert differing >= 4  # users prefer different tags: the answer is personal
    # Deterministic for a seed.
    assert build_task("LaMP-2M", 8, 12, 0) == (questions, outputs)


def test_shipped_synthetic_dataset_is_what_the_script_writes(tmp_path: Path) -> None:
    write_dataset(tmp_path)
    shipped = REPO_ROOT / "evaluation" / "data" / "synthetic"
    for task in ("LaMP-2M", "LaMP-3", "LaMP-5"):
        for name in ("dev_questions.json", "dev_outputs.json", "train_questions.json", "train_outputs.json"):
            assert (shipped / task / name).read_text() == (tmp_path / task / name).read_text()


def test_prediction_log_resumes_and_ignores_a_cut_line(tmp_path: Path) -> None:
    path = tmp_path / "predictions.jsonl"
    log = PredictionLog(path)
    log.append(Prediction(method="rag", id="1", user_id="u", prediction="4", gold="5", seconds=1.0))
    with path.open("a") as f:
        f.write('{"method": "rag", "id": "2", "predic')  # interrupted mid-write
    again = PredictionLog(path)
    assert set(again.done) == {("rag", "1")}


def test_eval_user_ids_are_valid_and_distinct() -> None:
    a = eval_user_id("run1", "rag", "syn/lamp 3:001")
    b = eval_user_id("run1", "pag", "syn/lamp 3:001")
    assert (
        a != b
        and all(c.isalnum() or c in "._@-" for c in a)
        and len(eval_user_id("r", "m", "x" * 300)) == 128
    )


def test_markdown_prints_paper_numbers_beside_ours() -> None:
    result = TaskResult(task="LaMP-3", data="d", synthetic=False, model="m", run_id="r", methods=[
        MethodResult(method="rag", description="", n=2, errors=0, metrics={"mae": 0.5, "rmse": 0.7},
                     seconds_per_question=1.0),
    ])  # fmt: skip
    table = markdown([result])
    assert "| rag | 0.500 | 0.700 |" in table
    assert "paper: PersonaAgent" in table and "0.241" in table


def test_intervals_and_paired_verdicts() -> None:
    from evaluation.intervals import compare, interval, per_question
    from evaluation.lamp import task_spec

    spec = task_spec("LaMP-2M")
    golds = [spec.labels[i % len(spec.labels)] for i in range(40)]  # type: ignore[index]
    right = per_question(spec, golds, golds)
    wrong = per_question(spec, ["nonsense"] * 40, golds)
    half = [1.0 if i % 2 else 0.0 for i in range(40)]
    assert right == [1.0] * 40 and wrong == [0.0] * 40
    low, high = interval(half)
    assert low < 0.5 < high and high - low > 0.1  # 40 coin flips: a wide interval around the mean
    assert compare("a", "b", "accuracy", right, wrong).verdict == "better"
    assert compare("b", "a", "accuracy", wrong, right).verdict == "worse"
    assert compare("a", "b", "accuracy", half, half[1:] + half[:1]).verdict == "within noise"
    # Lower is better for MAE: smaller errors win.
    assert compare("a", "b", "mae", [0.0] * 40, [2.0] * 40).verdict == "better"


def test_train_users_are_not_dev_users() -> None:
    dev, _ = build_task("LaMP-5", 16, 12, 0, "dev")
    train, _ = build_task("LaMP-5", 16, 12, 0, "train")
    assert {q["id"] for q in dev}.isdisjoint(q["id"] for q in train)
    assert {q["input"] for q in dev} != {q["input"] for q in train}


def test_free_form_answers_are_read_for_the_label_or_rating_they_name() -> None:
    from evaluation.lamp import task_spec
    from evaluation.metrics import free_form_answer

    tags = task_spec("LaMP-2M")
    assert free_form_answer(tags, "The tag is dark comedy.") == "dark comedy"  # not "comedy"
    assert free_form_answer(tags, "Sci-fi, or maybe comedy.") == "sci-fi"  # the first one named
    assert free_form_answer(tags, "Based on a book!") == "based on a book"
    assert free_form_answer(tags, "no idea") == "no idea"  # outside the label set: scored as wrong
    rating = task_spec("LaMP-3")
    assert free_form_answer(rating, "I would rate it 4 out of 5.") == "4"
    assert free_form_answer(rating, "2.5 stars") == "2.5 stars"  # not a rating of the set
    assert free_form_answer(task_spec("LaMP-5"), "  A Title  ") == "A Title"


def test_the_report_says_what_answering_cost_per_method() -> None:
    from evaluation.methods import Prediction
    from evaluation.report import markdown
    from evaluation.runner import MethodResult, TaskResult, _cost_summary

    def pred(call_text: bool, written: int) -> Prediction:
        return Prediction(method="m", id="q", user_id=None, prediction="x", gold="y", seconds=1.0, llm_calls=3,
                          tool_rounds=1, prompt_tokens=90, completion_tokens=10, call_text=call_text,
                          calls_parsed=1, calls_written=written)  # fmt: skip

    cost = _cost_summary([pred(True, 1), pred(False, 0), pred(False, 0), pred(False, 0)])
    assert cost["call_text_share"] == 0.25 and cost["llm_calls_per_question"] == 3.0
    assert cost["tokens_per_question"] == 100.0 and (cost["calls_parsed"], cost["calls_written"]) == (4, 1)
    method = MethodResult(method="persona_agent_no_align", description="", n=4, errors=0,
                          metrics={"accuracy": 0.5}, seconds_per_question=1.0, primary_metric="accuracy",
                          **cost)  # fmt: skip
    result = TaskResult(task="LaMP-2M", data="d", synthetic=True, model="m", run_id="r", free_form=True,
                        methods=[method])  # fmt: skip
    text = markdown([result])
    assert "free-form answers" in text and "| persona_agent_no_align | 25% (1 of 4) | 3.00 | 1.00 | 100 | 4 / 1 |" in text
