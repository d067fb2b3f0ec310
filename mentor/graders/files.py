"""Graders from files and over files: what `mentor grade` and `mentor eval --grader` share."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mentor.data.jsonl import read_jsonl
from mentor.errors import MentorError
from mentor.files import atomic_file, check_output_path
from mentor.graders.grade import GradeResult, Summary, build_grader, summarize
from mentor.graders.spec import GraderSpec, parse_grader

log = logging.getLogger("mentor")


def load_grader(path: str | Path, item: dict | None = None) -> GraderSpec:
    """The grader in a JSON file, checked (against an example `item` too, when given)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MentorError(f"grader file not found: {path}")
    return parse_grader(path.read_text(encoding="utf-8"), where=str(path), item=item)


def _objects(row: dict, lineno: int):
    return (row, []) if isinstance(row, dict) else (None, [("(line)", "not a JSON object")])


def read_items(path: str | Path) -> list[dict]:
    """A JSONL file's objects, every line checked."""
    return read_jsonl(path, _objects, "data")


def _sample_of(value, where: str) -> dict:
    if isinstance(value, str):
        return {"output_text": value}
    if isinstance(value, dict) and isinstance(value.get("output_text"), str):
        return value
    raise MentorError(f"{where}: the sample is a text or an object with an 'output_text' text")


def samples_for(items: list[dict], data: str | Path, samples: str | Path | None, field: str) -> list[dict]:
    """Each item's sample: from `field` of the item itself (a text, or an object with `output_text`),
    or the same line of `samples` (an object with `output_text` or `field`; `mentor predict`'s output,
    whose `prediction` is the answer, is paired by its `line`)."""
    if samples is None:
        out = []
        for lineno, item in enumerate(items, start=1):
            if field not in item:
                raise MentorError(f"{data}: row {lineno}: field '{field}': missing (the answer to grade; name its "
                                  "field with --sample-field, or give --samples FILE)")
            out.append(_sample_of(item[field], f"{data}: row {lineno}: field '{field}'"))
        return out
    records = read_jsonl(samples, _objects, "samples")
    if all(isinstance(r, dict) and isinstance(r.get("line"), int) for r in records) and len(records) == len(items):
        records = sorted(records, key=lambda r: r["line"])  # `mentor predict` writes as answers arrive
    if len(records) != len(items):
        raise MentorError(f"{samples}: {len(records)} samples for the {len(items)} rows of {data}")
    out = []
    for lineno, record in enumerate(records, start=1):
        if isinstance(record, dict) and "output_text" not in record and field in record:
            record = record[field]
        out.append(_sample_of(record, f"{samples}: row {lineno}"))
    return out


def write_results(path: str | Path, results: list[GradeResult]) -> None:
    dst = Path(path).expanduser()
    check_output_path(dst)
    with atomic_file(dst) as f:
        for lineno, r in enumerate(results, start=1):
            record = {"line": lineno, "reward": r.reward, "errors": r.errors, "sub_rewards": r.sub_rewards}
            if r.passed is not None:
                record["passed"] = r.passed
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def grade_file(grader: str | Path, data: str | Path, samples: str | Path | None = None,
               sample_field: str = "prediction", output: str | Path | None = None) -> Summary:
    """Grade every row of `data` (the items) with the grader in file `grader`; per-row results to
    `output` (JSONL: line, reward, errors, sub_rewards)."""
    items = read_items(data)
    if not items:
        raise MentorError(f"{data}: no rows")
    spec = load_grader(grader, item=items[0])
    answers = samples_for(items, data, samples, sample_field)
    with build_grader(spec) as g:
        results = g.grade_many(answers, items)
    if output is not None:
        write_results(output, results)
        log.info("per-row results written to %s", output)
    return summarize(results)
