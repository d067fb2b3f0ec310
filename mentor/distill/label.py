"""The teacher step: prompt the teacher with few-shot chain-of-thought, parse rationale and label.

Used by `mentor distill` and alone by `mentor label`. Teacher calls go through the teacher's
persistent cache, so a rerun (or a resumed run) pays only for what is missing.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from mentor.data.rows import read_rows
from mentor.files import atomic_file, atomic_write, check_output_path
from mentor.tasks.answers import Parsed, ParseSummary, summarize_parses
from mentor.tasks.arithmetic import numbers_match
from mentor.tasks.labels import normalize_answer
from mentor.tasks.prompts import PromptTemplate
from mentor.teachers import GenerationParams, RecordedTeacher, Teacher, build_teacher

log = logging.getLogger("mentor")


@dataclass
class Labeled:
    """One input with what the teacher said about it."""

    row: dict
    completion: str
    parsed: Parsed
    agrees: bool | None  # teacher answer vs gold answer (None when there is no gold)

    def teacher_label(self, task: str) -> str | None:
        """The label to train on: for math, the expression as written (the student learns to write
        the arithmetic, which is then evaluated), else the normalised label."""
        if task == "math" and self.parsed.raw_answer:
            return self.parsed.raw_answer.strip()
        return self.parsed.label


def make_teacher(spec: str, rows: list[dict], output_dir: Path | None, concurrency: int = 8,
                 cache: str | Path | None = None) -> Teacher:
    return build_teacher(spec, cache, output_dir=output_dir, rows=rows, concurrency=concurrency)


def label_rows(teacher: Teacher, rows: list[dict], template: PromptTemplate, task: str,
               answer_field: str | None = "output_text", max_new_tokens: int = 256) -> tuple[list[Labeled], ParseSummary]:
    """Ask the teacher about every row (cached), parse each completion, compare with gold answers."""
    inputs = [r["input_text"] for r in rows]
    # a recorded teacher is keyed by the input itself; live teachers get the few-shot CoT prompt
    prompts = inputs if isinstance(teacher, RecordedTeacher) else [template.render(x) for x in inputs]
    stop = ["\n\nQ:", "\nQ:"] if not isinstance(teacher, RecordedTeacher) else None
    completions = teacher.complete(prompts, GenerationParams(max_new_tokens=max_new_tokens, temperature=0.0, stop=stop))
    labeled = []
    for row, completion in zip(rows, completions):
        parsed = template.parse(completion.text, choices=row.get("choices"), cut_off=completion.cut_off)
        gold = row.get(answer_field) if answer_field else None
        agrees = None
        if parsed.ok and isinstance(gold, str):
            norm_gold, _ = normalize_answer(gold, task, row.get("choices"), template.labels)
            agrees = norm_gold is not None and (numbers_match(parsed.label, norm_gold) if task == "math"
                                                else parsed.label == norm_gold)
        labeled.append(Labeled(row, completion.text, parsed, agrees))
    summary = summarize_parses([l.parsed for l in labeled], [l.completion for l in labeled])
    return labeled, summary


def write_labeled(labeled: list[Labeled], task: str, path: Path) -> Path:
    """The labeled data as JSONL (written whole, then renamed): input, rationale, teacher label."""
    with atomic_file(path) as f:
        for item in labeled:
            row = {k: v for k, v in item.row.items() if not k.startswith("_")}
            row.update({
                "teacher_completion": item.completion,
                "rationale": item.parsed.rationale if item.parsed.ok else None,
                "teacher_label": item.teacher_label(task) if item.parsed.ok else None,
                "teacher_answer": item.parsed.label,
                "parse_ok": item.parsed.ok,
                "parse_reason": item.parsed.reason,
                "teacher_agrees": item.agrees,
            })
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def teacher_report(summary: ParseSummary, labeled: list[Labeled], teacher: Teacher) -> str:
    agree = [l.agrees for l in labeled if l.agrees is not None]
    lines = [f"teacher {teacher.identity}: {teacher.stats.summary()}", str(summary)]  # parse rate, failures by example
    if agree:
        lines.append(f"teacher answer agrees with the gold answer on {sum(agree)}/{len(agree)} parsed examples "
                     f"({sum(agree) / len(agree):.1%})")
    return "\n".join(lines)


def label_file(teacher_spec: str, data: str, output: str, task: str = "math", prompt_examples: str | None = None,
               labels: list[str] | None = None, answer_field: str = "output_text", concurrency: int = 8,
               max_new_tokens: int = 256, cache: str | Path | None = None) -> Path:
    """`mentor label`: the teacher step alone, writing labeled JSONL and a report beside it."""
    rows = read_rows(data, text=(answer_field,))
    out = Path(output)
    check_output_path(out)  # before the teacher is paid for anything
    template = PromptTemplate.for_task(task, shots=prompt_examples, labels=labels)
    teacher = make_teacher(teacher_spec, rows, out.parent, concurrency, cache)
    labeled, summary = label_rows(teacher, rows, template, task, answer_field, max_new_tokens)
    write_labeled(labeled, task, out)
    report = teacher_report(summary, labeled, teacher)
    atomic_write(out.with_suffix(".report.txt"), report + "\n")
    log.info(report)
    log.info(f"labeled data: {out}")
    return out
