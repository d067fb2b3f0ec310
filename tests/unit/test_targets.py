"""Which rows a distilled student learns from, and which label and rationale each teaches
(mentor.distill.targets.student_targets), for every distillation method."""

from __future__ import annotations

import pytest

from mentor.distill.config import DistillConfig
from mentor.distill.label import Labeled
from mentor.distill.targets import student_targets
from mentor.tasks.answers import Parsed


def config(method: str, **fields) -> DistillConfig:
    return DistillConfig(model="tiny:llama", data="train.jsonl", output="out", method=method, task="classify",
                         **fields)


def said(label: str | None, rationale: str = "because", agrees: bool | None = None) -> Labeled:
    parsed = Parsed(rationale=rationale, label=label, raw_answer=label or "", ok=label is not None)
    return Labeled(row={}, completion=f"{rationale} so {label}", parsed=parsed, agrees=agrees)


ROWS = [{"input_text": "a", "output_text": "yes"}, {"input_text": "b", "output_text": "no"},
        {"input_text": "c", "output_text": ""}]


def test_finetune_learns_gold_labels_and_drops_rows_without_one():
    kept, dropped = student_targets(config("finetune"), ROWS, None)
    assert kept == [{"input": "a", "label": "yes", "rationale": None}, {"input": "b", "label": "no", "rationale": None}]
    assert dropped == {"no gold label": 1}


def test_standard_learns_the_teachers_label_even_where_gold_differs():
    kept, dropped = student_targets(config("standard"), ROWS, [said("yes"), said("yes", agrees=False), said("no")])
    assert [k["label"] for k in kept] == ["yes", "yes", "no"] and dropped == {}


def test_step_by_step_learns_gold_labels_with_the_teachers_rationales_and_teacher_labels_without_gold():
    kept, _ = student_targets(config("step-by-step"), ROWS,
                              [said("no", "r1", agrees=False), said("no", "r2", agrees=True), said("yes", "r3")])
    assert [(k["label"], k["rationale"], k["mask_rationale"]) for k in kept] == \
        [("yes", "r1", False), ("no", "r2", False), ("yes", "r3", False)]


def test_step_by_step_drops_a_teacher_answer_without_a_rationale_or_that_did_not_parse():
    kept, dropped = student_targets(config("step-by-step"), ROWS, [said("yes", rationale=""), said(None), said("no")])
    assert [k["input"] for k in kept] == ["c"] and dropped == {"teacher unparseable": 2}


def test_filtering_drops_disagreements_and_masking_keeps_their_label_task():
    answers = [said("no", agrees=False), said(None), said("no", agrees=True)]
    kept, dropped = student_targets(config("step-by-step", filter_disagreements=True), ROWS, answers)
    assert [k["input"] for k in kept] == ["c"]
    assert dropped == {"teacher unparseable": 1, "teacher disagrees with gold": 1}
    kept, dropped = student_targets(config("step-by-step", mask_wrong_rationales=True), ROWS[:2], answers[:2])
    assert [(k["label"], k["mask_rationale"]) for k in kept] == [("yes", True), ("no", True)] and dropped == {}


@pytest.mark.parametrize("gold", [None, "   ", 7])
def test_a_missing_blank_or_non_text_gold_label_is_no_gold_label(gold):
    kept, _ = student_targets(config("standard"), [{"input_text": "a", "output_text": gold}], [said("yes")])
    assert kept[0]["label"] == "yes"
    assert student_targets(config("finetune"), [{"input_text": "a", "output_text": gold}], None)[1] == \
        {"no gold label": 1}
