"""Rows of a JSONL file that need only a few string fields (distillation, labelling, evaluation)."""

from __future__ import annotations

from pathlib import Path

from mentor.data.jsonl import read_jsonl
from mentor.errors import MentorError


def read_rows(path: str | Path, required: tuple[str, ...] = ("input_text",)) -> list[dict]:
    """JSONL rows with the fields distillation needs; every problem named by file, line, field."""
    def parse(row: dict, lineno: int):
        missing = [(name, "missing or empty") for name in required
                   if not isinstance(row.get(name), str) or not row[name].strip()]
        return (None if missing else {**row, "_line": lineno}), missing

    rows = read_jsonl(path, parse, "data")
    if not rows:
        raise MentorError(f"{path}: no rows")
    return rows
