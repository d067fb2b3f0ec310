"""A grader as GRPO's reward function, and the prompts it is asked with."""

from __future__ import annotations

import json
import logging

from mentor.reinforce.data import Item

log = logging.getLogger("mentor")


class GraderReward:
    """TRL calls this with a batch of sampled answers and the dataset's columns; each answer is scored
    by the grader against its line (`item`). A sample the grader fails on (it raised, timed out,
    judged nothing) scores 0 and is counted, never stopping the job."""

    __name__ = "grader"

    def __init__(self, grader):
        self.grader = grader
        self.errors = 0
        self.graded = 0

    def __call__(self, prompts, completions, completion_ids, item, log_metric=None, **kwargs) -> list[float]:
        items = [json.loads(i) for i in item]
        samples = [{"output_text": c if isinstance(c, str) else c[-1]["content"]} for c in completions]
        results = self.grader.grade_many(samples, items)
        failed = sum(bool(r.errors) for r in results)
        self.errors += failed
        self.graded += len(results)
        if failed:
            first = next(r.errors[0] for r in results if r.errors)
            log.debug("the grader failed on %d of %d samples (scored 0); first: %s", failed, len(results), first)
        if log_metric is not None:
            log_metric("grader_error_rate", failed / max(1, len(results)))
        return [float(r.reward) for r in results]


def prompt_rows(items: list[Item], render) -> list[dict]:
    """GRPO's dataset: the rendered prompt, and the line as JSON (columns of one type, whatever the
    lines hold) for the grader."""
    return [{"prompt": render(i), "item": json.dumps(i.row)} for i in items]
