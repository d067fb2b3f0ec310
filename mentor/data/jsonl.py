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
    if path.is_dir():
        raise MentorError(f"{what} file {path} is a folder; give a JSONL file")
    if not path.is_file():
        raise MentorError(f"{what} file not found: {path}")
    items: list[T] = []
    problems: list[Problem] = []
    total = 0
    with path.open("rb") as f:
        for lineno, data in enumerate(f, start=1):
            try:  # line by line, so a bad byte is reported with its line; a UTF-8 BOM is tolerated
                raw = data.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as err:
                found = [("(line)", f"not UTF-8 text: byte {data[err.start]:#04x} at column {err.start + 1}")]
            else:
                if not raw.strip():
                    continue
                found = _parse_line(raw, lineno, parse, items)
            total += len(found)
            problems += [Problem(str(path), lineno, fld, msg) for fld, msg in found][: max(0, max_problems - len(problems))]
    if total:
        raise DataValidationError(problems, total, cap=max_problems)
    return items


class _NotJson(ValueError):
    """What JSON itself refuses and Python's reader lets through: a key given twice, NaN, Infinity."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _object(pairs: list[tuple[str, object]]) -> dict:
    row: dict = {}
    for key, value in pairs:
        if key in row:  # which of the two was meant cannot be told
            raise _NotJson(key, "given twice in one object")
        row[key] = value
    return row


def _constant(name: str):
    raise _NotJson("(line)", f"{name} is not a JSON number")


def _parse_line(raw: str, lineno: int, parse: RowParser, items: list) -> list[tuple[str, str]]:
    try:
        row = json.loads(raw, object_pairs_hook=_object, parse_constant=_constant)
    except json.JSONDecodeError as err:
        return [("(line)", f"invalid JSON: {err.msg} at column {err.colno}")]
    except _NotJson as err:
        return [(err.field, str(err))]
    if not isinstance(row, dict):
        return [("(line)", f"must be a JSON object, got {type(row).__name__}")]
    try:  # "\ud800" decodes to a string no tokenizer or file can take
        json.dumps(row, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as err:
        return [("(line)", f"holds a lone surrogate {err.object[err.start:err.end]!r}: not Unicode text")]
    item, found = parse(row, lineno)
    if item is not None:
        items.append(item)
    return found
