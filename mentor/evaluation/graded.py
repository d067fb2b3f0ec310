"""`mentor eval --grader FILE`: each model's answers scored by a grader too, beside the task metrics."""

from __future__ import annotations

import logging

from mentor.evaluation.evaluate import EvalResult
from mentor.graders import Grader, summarize

log = logging.getLogger("mentor")


def item_of(row: dict) -> dict:
    """The dataset line as the grader's `item`: without the bookkeeping reading added (_file, _line)."""
    return {k: v for k, v in row.items() if k not in ("_file", "_line")}


def add_grades(result: EvalResult, rows: list[dict], grader: Grader) -> None:
    """`reward_mean` and `grader_errors` in the result's metrics, each prediction's `reward`: the
    grader scores the text the model wrote (its answer, else its rationale)."""
    texts = [r.get("prediction") if r.get("prediction") is not None else r.get("rationale") or ""
             for r in result.predictions]
    graded = grader.grade_many([{"output_text": t} for t in texts], [item_of(r) for r in rows])
    summary = summarize(graded)
    result.metrics["reward_mean"] = summary.reward_mean
    result.metrics["grader_errors"] = summary.errors
    for record, grade in zip(result.predictions, graded):
        record["reward"] = grade.reward
        if grade.errors:
            record["grader_errors"] = grade.errors
    log.info("%s, grader %s: %s", result.name, grader.name, summary.line())
