"""Task metrics on hand-computed values."""

from __future__ import annotations

import json

import pytest

from mentor.errors import MentorError
from mentor.tasks.metrics import (
    accuracy,
    choice_accuracy,
    exact_match,
    f1,
    normalize_squad,
    rouge_l,
    score,
)


def test_accuracy_numeric_tolerance():
    preds = ["450", "3.333333", "$1,200", "12 apples", "2.5", None, "41"]
    golds = ["450.0", "3.3333333333", "1200", "12", "2.50", "7", "42"]
    assert accuracy(preds, golds) == pytest.approx(5 / 7)
    # Tolerance is relative: 1e-4 of 1000 is 0.1.
    assert accuracy(["1000.05"], ["1000"]) == 1.0
    assert accuracy(["1000.5"], ["1000"]) == 0.0
    assert accuracy(["1000.5"], ["1000"], rel_tol=1e-3) == 1.0
    # Without numeric comparison only the normalised strings count.
    assert accuracy(["2.50"], ["2.5"], numeric=False) == 0.0
    assert accuracy(["Neutral."], [" neutral"], numeric=False) == 1.0
    assert accuracy(["paris"], [["Paris", "City of Paris"]]) == 1.0
    assert accuracy([], []) == 0.0
    with pytest.raises(ValueError, match="2 predictions but 1"):
        accuracy(["1", "2"], ["1"])


def test_choice_accuracy():
    choices = ["bakery", "bookstore", "garage"]
    preds = ["(b)", "bookstore", "B) bookstore", "c", None, "(a) garage"]
    golds = ["bookstore", "b", "(b)", "garage", "bakery", "bakery"]
    # "(a) garage" names one option by letter and another by text: not counted as either.
    assert choice_accuracy(preds, golds, choices) == pytest.approx(4 / 6)
    per_example = [["x", "y"], ["y", "x"]]
    assert choice_accuracy(["(a)", "(a)"], ["x", "x"], per_example) == 0.5
    # Without choices, letters compare with letters and texts with texts.
    assert choice_accuracy(["(b)", "B", "bookstore", "b"], ["b", "(b) bookstore", "Bookstore", "bookstore"]) == 0.75
    # rows without options of their own (mentor eval passes one entry per row) compare like with like
    assert choice_accuracy(["(b)", "bookstore"], ["b", "garage"], [None, None]) == 0.5


def test_squad_f1_and_exact_match():
    assert normalize_squad("The  Denver Broncos!") == "denver broncos"
    # pred tokens {denver, broncos, team}, gold {denver, broncos}: P = 2/3, R = 1, F1 = 0.8
    assert f1(["the Denver Broncos team"], ["Denver Broncos"]) == pytest.approx(0.8)
    assert f1(["Carolina"], [["Denver Broncos", "Carolina Panthers"]]) == pytest.approx(2 / 3)
    assert f1(["nothing in common"], ["Denver"]) == 0.0
    assert f1([None, "a"], ["Denver", "the"]) == 0.5  # both empty after normalisation counts as a match
    assert exact_match(["The Denver Broncos.", "Denver"], ["denver broncos", "Denver Broncos"]) == 0.5


def test_rouge_l():
    # LCS of "the cat sat on the mat" / "the cat is on the mat" is "the cat on the mat": 5 of 6 each way.
    assert rouge_l(["the cat sat on the mat"], ["the cat is on the mat"]) == pytest.approx(5 / 6)
    assert rouge_l(["a b c d"], ["a b c d"]) == 1.0
    assert rouge_l(["x y"], ["a b"]) == 0.0
    # LCS "a c" (2 tokens): P = 2/2, R = 2/4, F = 2/3; averaged with an exact match.
    assert rouge_l(["a c", "z"], ["a b c d", "z"]) == pytest.approx((2 / 3 + 1) / 2)
    assert rouge_l([None], ["a"]) == 0.0
    # Stemming: "running" and "runs" both stem to "run".
    assert rouge_l(["he runs"], ["he running"]) == 1.0
    assert rouge_l(["he runs"], ["he running"], use_stemmer=False) == 0.5


def test_score_picks_metrics_per_task():
    assert score(["42", None], ["42", "7"], "math") == {"n": 2, "answered": 0.5, "accuracy": 0.5}
    assert score(["(b)"], ["bookstore"], "choice", choices=["bakery", "bookstore"])["accuracy"] == 1.0
    assert score(["Entailment"], ["entailment"], "nli")["accuracy"] == 1.0
    # a gold written as the predictions are read ("yes" is entailment, "no" contradiction)
    assert score(["entailment", "contradiction"], ["yes", "entailment"], "nli")["accuracy"] == 0.5
    assert score(["positive"], [["Positive.", "good"]], "classify", labels=["positive", "negative"])["accuracy"] == 1.0
    assert score(["10"], ["10.0"], "classify")["accuracy"] == 0.0  # labels are not numbers
    out = score(["Denver Broncos"], ["the Denver Broncos"], "extract")
    assert out["exact_match"] == 1.0 and out["f1"] == 1.0
    assert score(["the cat sat on the mat"], ["the cat is on the mat"], "text")["rouge_l"] == pytest.approx(5 / 6)
    with pytest.raises(MentorError, match="unknown task"):
        score(["a"], ["a"], "bleu")


def test_each_model_keeps_its_own_predictions_file(tmp_path):
    from mentor.evaluation.evaluate import EvalResult
    from mentor.evaluation.report import write_report

    long = "runs/" + "x" * 60
    results = [EvalResult(f"{long}-seed{i}", {"accuracy": i / 2}, predictions=[{"seed": i}]) for i in (0, 1)]
    results.append(EvalResult("a/b", {"accuracy": 0.0}, predictions=[{"seed": "a/b"}]))
    results.append(EvalResult("a_b", {"accuracy": 0.0}, predictions=[{"seed": "a_b"}]))
    (tmp_path / "predictions-old-model.jsonl").write_text("{}\n")  # an earlier run's
    write_report(results, tmp_path, "t")
    files = sorted(tmp_path.glob("predictions-*.jsonl"))
    assert sorted(p.read_text() for p in files) == sorted(f'{{"seed": {json.dumps(r.predictions[0]["seed"])}}}\n'
                                                         for r in results)
    assert (tmp_path / "report.md").exists() and not list(tmp_path.glob(".*tmp*"))
