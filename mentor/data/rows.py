"""Rows of a JSONL file that need only a few string fields (distillation, labelling, evaluation)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from mentor.data.jsonl import read_jsonl
from mentor.errors import MentorError
from mentor.files import atomic_file


def read_rows(path: str | Path, required: tuple[str, ...] = ("input_text",),
              text: tuple[str, ...] = ("output_text",)) -> list[dict]:
    """JSONL rows with the fields distillation needs; every problem named by file, line, field.

    `required` fields must be non-empty text; `text` fields (answers), where present, text, a number
    being read as its text (42 -> "42", as math datasets write answers); `choices`, where present, a
    list of option texts. Each row keeps where it came from in `_file` and `_line`."""
    def parse(row: dict, lineno: int):
        row = {**row, **{name: str(row[name]) for name in text
                         if isinstance(row.get(name), (int, float)) and not isinstance(row[name], bool)}}
        problems = [(name, "missing or empty") for name in required
                    if not isinstance(row.get(name), str) or not row[name].strip()]
        problems += [(name, f"must be text or a number, got {type(row[name]).__name__}") for name in text
                     if name not in required and row.get(name) is not None and not isinstance(row[name], str)]
        choices = row.get("choices")
        if choices is not None and not (isinstance(choices, list) and choices
                                        and all(isinstance(c, str) and c.strip() for c in choices)):
            problems.append(("choices", "must be a list of option texts"))
        return (None if problems else {**row, "_file": str(path), "_line": lineno}), problems

    rows = read_jsonl(path, parse, "data")
    if not rows:
        raise MentorError(f"{path}: no rows")
    return rows


MAX_HELD_OUT = 256  # the seeds' evaluation sets hold 10 to 256 examples: more costs time, not insight


def hold_out(rows: list[dict], share: float, path: str | Path | None = None) -> tuple[list[dict], list[dict]]:
    """(kept, held out): `share` of the rows (at least 1, at most 256) held out as validation data.

    The choice depends only on the rows themselves (a fixed shuffle, not the job's seed), so runs
    with different seeds or recipe variants are compared on the same validation rows. With `path`,
    the held-out rows are written there (without mentor's bookkeeping fields) for the record."""
    if not 0 < share < 1:
        raise MentorError(f"validation share must be between 0 and 1, got {share}")
    if len(rows) < 2:
        raise MentorError(f"{len(rows)} row(s): too few to hold any out for validation")
    count = min(MAX_HELD_OUT, max(1, round(share * len(rows))), len(rows) - 1)
    order = list(range(len(rows)))
    random.Random(len(rows)).shuffle(order)
    held = set(order[:count])
    kept = [r for i, r in enumerate(rows) if i not in held]
    validation = [r for i, r in enumerate(rows) if i in held]
    if path is not None:
        with atomic_file(path) as f:
            for r in validation:
                f.write(json.dumps({k: v for k, v in r.items() if not k.startswith("_")}, ensure_ascii=False) + "\n")
    return kept, validation
