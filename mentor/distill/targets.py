"""The student's training examples for each distillation method: which rows are kept, which
label and rationale each learns, and the label and rationale tasks encoded side by side."""

from __future__ import annotations

from typing import TYPE_CHECKING

from datasets import Dataset

from mentor.data.encode import EncodeStats, encode
from mentor.data.formats import Example
from mentor.distill.config import DistillConfig
from mentor.distill.label import Labeled
from mentor.distill.multitask import merge_tasks
from mentor.tasks.prompts import answer_sentence

if TYPE_CHECKING:
    from mentor.training.setup import Student


def _example(prompt: str, target: str) -> Example:
    return Example([{"role": "user", "content": prompt}, {"role": "assistant", "content": target}], "text")


def student_targets(cfg: DistillConfig, rows: list[dict], labeled: list[Labeled] | None) -> tuple[list[dict], dict]:
    """(input, label, rationale) per kept example for the chosen method, and what was dropped why."""
    kept, dropped = [], {"teacher unparseable": 0, "teacher disagrees with gold": 0, "no gold label": 0}
    for i, row in enumerate(rows):
        gold = row.get(cfg.label_field)
        gold = gold if isinstance(gold, str) and gold.strip() else None
        item = labeled[i] if labeled else None
        if cfg.method == "finetune":
            if gold is None:
                dropped["no gold label"] += 1
                continue
            kept.append({"input": row["input_text"], "label": gold, "rationale": None})
            continue
        parsed = item is not None and item.parsed.ok and (cfg.method != "step-by-step" or bool(item.parsed.rationale))
        # with mask_wrong_rationales a gold-labelled example whose rationale is unusable (unparseable or
        # reaching a wrong answer) still trains the label task, as in fine-tuning; its rationale is masked
        keep_for_label = cfg.method == "step-by-step" and cfg.mask_wrong_rationales and gold is not None
        if not parsed and not keep_for_label:
            dropped["teacher unparseable"] += 1
            continue
        if parsed and cfg.filter_disagreements and item.agrees is False:
            dropped["teacher disagrees with gold"] += 1
            continue
        # standard distillation trains on the teacher's labels; step-by-step on gold labels when
        # the data has them (labeled mode) and on the teacher's otherwise (unlabeled mode)
        label = item.teacher_label(cfg.task) if (cfg.method == "standard" or gold is None) else gold
        rationale = item.parsed.rationale if cfg.method == "step-by-step" and parsed else None
        masked = keep_for_label and (not parsed or item.agrees is False)
        kept.append({"input": row["input_text"], "label": label, "rationale": rationale or "", "mask_rationale": masked})
    return kept, {k: v for k, v in dropped.items() if v}


def encode_targets(cfg: DistillConfig, targets: list[dict], student: Student, stats: EncodeStats,
                   with_rationale: bool) -> Dataset:
    loaded = student.loaded
    kw = dict(is_seq2seq=loaded.is_seq2seq, use_chat_template=student.use_chat_template,
              max_input_tokens=student.max_input_tokens, max_output_tokens=student.max_output_tokens, stats=stats)
    prefix = cfg.label_prefix if cfg.method == "step-by-step" else ""
    label_rows = [encode(_example(prefix + t["input"], t["label"]), loaded.tokenizer, **kw) for t in targets]
    rationale_rows = None
    if with_rationale:
        def rationale_target(t):
            if cfg.rationale_format == "rationale+label":
                return f"{t['rationale']} {answer_sentence(cfg.task, t['label'])}"
            return t["rationale"]
        rationale_rows = []
        for t in targets:
            row = encode(_example(cfg.rationale_prefix + t["input"], rationale_target(t)), loaded.tokenizer, **kw)
            if t.get("mask_rationale"):
                row["labels"] = [-100] * len(row["labels"])
            rationale_rows.append(row)
    return Dataset.from_list(merge_tasks(label_rows, rationale_rows))
