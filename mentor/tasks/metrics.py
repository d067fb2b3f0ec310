"""Task metrics for evaluation reports.

Predictions come from parsed model outputs (see `mentor.tasks.answers`), so a missing answer is
``None`` and counts as wrong rather than being dropped: dropping would flatter a model that often
fails to answer. Numbers compare with a relative tolerance, so "3.333333" matches 10/3 and
"$1,200" matches "1200". Every metric is a fraction in [0, 1]; an empty list scores 0.0.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

from mentor.errors import MentorError
from mentor.tasks import LABEL_TASKS, TASKS
from mentor.tasks.arithmetic import numbers_match, parse_number
from mentor.tasks.labels import normalize_answer

Gold = str | Sequence[str]


def _check(preds: Sequence, golds: Sequence) -> None:
    """Predictions and gold answers must pair up one to one."""
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions but {len(golds)} gold answers")


def _refs(gold: Gold) -> list[str]:
    """Several acceptable answers may be given for one example (SQuAD style)."""
    return [gold] if isinstance(gold, str) else [str(g) for g in gold]


def _norm_label(s: object) -> str:
    """Label text for comparison: single spaces, lower case, no quotes or final period."""
    text = re.sub(r"\s+", " ", str(s)).strip().lower()
    return text.strip("\"'“”‘’` ").rstrip(".").strip()


def _gold_labels(gold: Gold, task: str, labels: Sequence[str] | None) -> list[str]:
    """Each reference as the label predictions are normalised to; one that is no label stays as written."""
    if task == "classify" and not labels:
        return _refs(gold)  # no label set to read them into
    return [normalize_answer(ref, task, labels=labels)[0] or ref for ref in _refs(gold)]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def accuracy(
    preds: Sequence[str | None],
    golds: Sequence[Gold],
    numeric: bool = True,
    rel_tol: float = 1e-4,
) -> float:
    """Exact match after light normalisation (case, spaces, quotes, final period); when ``numeric``
    and both sides read as numbers, equal within ``rel_tol`` instead."""
    _check(preds, golds)

    def hit(pred: str | None, gold: str) -> bool:
        if pred is None:
            return False
        if numeric and parse_number(pred) is not None and parse_number(gold) is not None:
            return numbers_match(pred, gold, rel_tol=rel_tol)
        return _norm_label(pred) == _norm_label(gold)

    return _mean([float(any(hit(p, g) for g in _refs(gold))) for p, gold in zip(preds, golds)])


def choice_accuracy(
    preds: Sequence[str | None],
    golds: Sequence[str],
    choices: Sequence[str] | Sequence[Sequence[str]] | None = None,
) -> float:
    """Multiple-choice accuracy where either side may be a letter ("b", "(b)") or the option text.

    ``choices`` is one option list shared by all examples or one list per example; without it only
    like compares with like (letter with letter, text with text)."""
    _check(preds, golds)
    per_example = bool(choices) and not isinstance(choices[0], str)
    if per_example and len(choices) != len(preds):
        raise ValueError(f"{len(choices)} choice lists for {len(preds)} predictions")
    scores = []
    for i, (pred, gold) in enumerate(zip(preds, golds)):
        if pred is None:
            scores.append(0.0)
            continue
        if per_example:  # a row without options compares like with like
            opts = list(choices[i]) if choices[i] else None
        else:
            opts = list(choices) if choices else None
        p, _ = normalize_answer(str(pred), "choice", choices=opts)
        g, _ = normalize_answer(str(gold), "choice", choices=opts)
        same = p is not None and p == g
        scores.append(float(same or _norm_label(pred) == _norm_label(gold)))
    return _mean(scores)


# SQuAD v1.1 normalisation: lower case, no punctuation, no articles, single spaces.
def normalize_squad(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _token_f1(pred: str, gold: str) -> float:
    p, g = normalize_squad(pred).split(), normalize_squad(gold).split()
    if not p or not g:
        return float(p == g)
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def exact_match(preds: Sequence[str | None], golds: Sequence[Gold]) -> float:
    """SQuAD exact match: equal after `normalize_squad`, best over the acceptable answers."""
    _check(preds, golds)
    return _mean(
        [
            float(p is not None and any(normalize_squad(p) == normalize_squad(g) for g in _refs(gold)))
            for p, gold in zip(preds, golds)
        ]
    )


def f1(preds: Sequence[str | None], golds: Sequence[Gold]) -> float:
    """SQuAD token-level F1, best over the acceptable answers, averaged over examples."""
    _check(preds, golds)
    return _mean([max(_token_f1(p, g) for g in _refs(gold)) if p is not None else 0.0 for p, gold in zip(preds, golds)])


def rouge_l(preds: Sequence[str | None], golds: Sequence[Gold], use_stemmer: bool = True) -> float:
    """Mean ROUGE-L F-measure (Google's ``rouge-score`` package, the reference implementation used by
    most papers), best over the acceptable answers."""
    _check(preds, golds)
    try:
        from rouge_score import rouge_scorer
    except ImportError:  # pragma: no cover - depends on the install
        raise MentorError("ROUGE-L needs the 'rouge-score' package: pip install rouge-score") from None
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)
    return _mean(
        [
            max(scorer.score(g, p)["rougeL"].fmeasure for g in _refs(gold)) if p is not None else 0.0
            for p, gold in zip(preds, golds)
        ]
    )


# The tasks plus "text": free text such as rationales, scored by ROUGE-L.
SCORED_TASKS = (*TASKS, "text")


def score(
    preds: Sequence[str | None],
    golds: Sequence[Gold],
    task: str,
    choices: Sequence[str] | Sequence[Sequence[str]] | None = None,
    rel_tol: float = 1e-4,
    labels: Sequence[str] | None = None,
) -> dict[str, float]:
    """The metrics that fit ``task``, plus ``n`` and ``answered`` (share of non-None predictions):

    math: accuracy with numeric tolerance; choice: choice accuracy; nli/classify: label accuracy;
    extract: exact match and token F1 (SQuAD); text (free text such as rationales): ROUGE-L.
    """
    _check(preds, golds)
    if task not in SCORED_TASKS:
        raise MentorError(f"unknown task {task!r} for scoring; expected one of: {', '.join(SCORED_TASKS)}")
    out: dict[str, float] = {"n": len(preds), "answered": _mean([float(p is not None) for p in preds])}
    if task == "math":
        out["accuracy"] = accuracy(preds, golds, numeric=True, rel_tol=rel_tol)
    elif task == "choice":
        out["accuracy"] = choice_accuracy(preds, golds, choices)
    elif task in LABEL_TASKS:  # gold and prediction as the same label ("yes" is "entailment" for nli)
        out["accuracy"] = accuracy(preds, [_gold_labels(g, task, labels) for g in golds], numeric=False)
    elif task == "extract":
        out["exact_match"] = exact_match(preds, golds)
        out["f1"] = f1(preds, golds)
    else:
        out["rouge_l"] = rouge_l(preds, golds)
    return out
