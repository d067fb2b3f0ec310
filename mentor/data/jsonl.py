"""Reading JSONL input files the one way every mentor command does: every line is checked, every
problem is collected with file, line and field, and nothing is used unless the whole file is good."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from mentor.errors import DataValidationError, MentorError, Problem

T = TypeVar("T")
MAX_PROBLEMS = 50
# parse(row, line number) -> (item or None, [(field, message), ...])
RowParser = Callable[[dict, int], "tuple[T | None, list[tuple[str, str]]]"]


def read_jsonl(path: str | Path, parse: RowParser, what: str = "data", max_problems: int = MAX_PROBLEMS) -> list[T]:
    """Parse every non-blank line of a JSONL file; raise DataValidationError listing every problem."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MentorError(f"{what} file not found: {path}")
    items: list[T] = []
    problems: list[Problem] = []
    total = 0
    try:
        with path.open("r", encoding="utf-8") as f:
            for lineno, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                try:
                    row = json.loads(raw)
                except json.JSONDecodeError as err:
                    found = [("(line)", f"invalid JSON: {err.msg} at column {err.colno}")]
                else:
                    if isinstance(row, dict):
                        item, found = parse(row, lineno)
                        if item is not None:
                            items.append(item)
                    else:
                        found = [("(line)", f"must be a JSON object, got {type(row).__name__}")]
                total += len(found)
                problems += [Problem(str(path), lineno, fld, msg) for fld, msg in found][: max(0, max_problems - len(problems))]
    except UnicodeDecodeError as err:
        raise MentorError(f"{path}: not UTF-8 text ({err})") from None
    if total:
        raise DataValidationError(problems, total, cap=max_problems)
    return items
