"""The test at the end of a distillation job: student (label only, and reasoning first when it
learned to) and teacher on the test set, in a report that says whether distilling paid off."""

from __future__ import annotations

import logging
from pathlib import Path

from mentor.distill.config import DistillConfig
from mentor.distill.label import label_rows
from mentor.evaluation.evaluate import evaluate_completions, evaluate_student
from mentor.evaluation.report import write_report
from mentor.jobs import TunedModel
from mentor.serving.predict import Predictor

log = logging.getLogger("mentor")


def run_test(cfg: DistillConfig, result: TunedModel, test_rows: list[dict], teacher, template, out: Path,
             notes: list[str]) -> dict:
    """Student and teacher on the test set: the report that says whether distilling paid off."""
    student = Predictor(result.model_path)
    modes = [False, True] if cfg.with_rationale and cfg.method == "step-by-step" else [False]
    results = [evaluate_student(student, test_rows, cfg.task, cfg.answer_field, cfg.labels,
                                with_rationale=mode, label_max_new_tokens=cfg.label_max_new_tokens,
                                rationale_max_new_tokens=cfg.rationale_max_new_tokens,
                                name=f"student: {cfg.method}" + (", rationale then label" if mode else ""))
               for mode in modes]
    if teacher is not None:
        labeled, _ = label_rows(teacher, test_rows, template, cfg.task, cfg.answer_field, cfg.teacher_max_new_tokens)
        results.append(evaluate_completions([l.completion for l in labeled], test_rows, cfg.task, cfg.answer_field,
                                            cfg.labels, name=f"teacher ({cfg.teacher})"))
    notes = notes + [f"student trained {result.steps_run} steps, {result.extra.get('tokens_seen')} tokens, "
                     f"{result.extra.get('seconds')} s"]
    write_report(results, out / "report", f"{cfg.method}: {cfg.model} from {cfg.teacher or 'gold labels'}", notes)
    log.info(f"report: {out / 'report' / 'report.md'}")
    return {r.name: {**r.metrics, "seconds_per_example": r.seconds_per_example,
                     "tokens_per_example": r.tokens_per_example, "parameters": r.parameters} for r in results}
