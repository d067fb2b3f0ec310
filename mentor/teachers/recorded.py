"""Completions a teacher already wrote, looked up by input text: distillation from saved outputs.

- `recorded:FILE.jsonl`: lines `{"input_text": ..., "teacher_completion": ...}` or
  `{"prompt"|"input": ..., "completion": ...}`;
- `recorded:field=NAME`: the completion is field NAME of each dataset row; the caller passes the
  rows (`RecordedTeacher.from_rows(rows, NAME)` or `build_teacher(spec, rows=rows)`).

Nothing is paid for, so there is no cache; stats still count the lookups. Generation params are
ignored except `n` (that many recorded completions per input, first recorded first).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from mentor.data.jsonl import read_jsonl
from mentor.errors import DataValidationError, MentorError, Problem
from mentor.teachers.base import Completion, GenerationParams, OnAnswer, Teacher

INPUT_FIELDS = ("input_text", "prompt", "input")
COMPLETION_FIELDS = ("teacher_completion", "completion")


class RecordedTeacher(Teacher):
    """Answers from a table {input text: [completions]} built from a JSONL file or dataset rows."""

    def __init__(self, answers: Mapping[str, list[str]], identity: str, source: str, progress: bool | None = None):
        super().__init__(identity, cache=None, progress=progress)
        self.answers = dict(answers)
        self.source = source  # what to name in errors: the file, or the rows' field

    @classmethod
    def from_file(cls, path: str | Path, progress: bool | None = None) -> RecordedTeacher:
        """Every bad line (not JSON, not an object, a field missing or not text) is reported at once,
        with file, line and field."""
        path = Path(path).expanduser()
        pairs = read_jsonl(path, lambda row, number: _check(row, None, None), "recorded teacher")
        answers: dict[str, list[str]] = {}
        for prompt, completion in pairs:
            answers.setdefault(prompt, []).append(completion)
        return cls(answers, f"recorded:{path.resolve()}", str(path), progress=progress)

    @classmethod
    def from_rows(
        cls,
        rows: Iterable[Mapping],
        field: str = "teacher_completion",
        input_field: str | None = None,
        source: str = "the dataset",
        progress: bool | None = None,
    ) -> RecordedTeacher:
        """Completions kept in field `field` of each row, keyed by `input_field` (default: the first
        of input_text, prompt, input that the row has). Row numbers in errors count from 1."""
        answers = _collect(enumerate(rows, 1), source, field, input_field)
        return cls(answers, f"recorded:field={field}", f"{source} (field '{field}')", progress=progress)

    def _answer(self, prompts: list[str], params: GenerationParams, on_answer: OnAnswer) -> dict[str, str]:
        missing = [p for p in prompts if len(self.answers.get(p, ())) < params.n]
        if missing:
            shown = "; ".join(repr(p[:80]) for p in missing[:3])
            need = "" if params.n == 1 else f" ({params.n} needed per input)"
            raise MentorError(
                f"{self.source} has no recorded completion{need} for {len(missing)} input(s), e.g. {shown}. "
                f"Record completions for every input, or use a live teacher."
            )
        for prompt in prompts:
            self.stats.add(calls=1)
            on_answer(prompt, [Completion(text) for text in self.answers[prompt][: params.n]])
        return {}


def _collect(
    rows: Iterable[tuple[int, Mapping]],
    source: str,
    field: str | None,
    input_field: str | None,
) -> dict[str, list[str]]:
    """{input: [completions]} from numbered rows; every bad row becomes a Problem, raised together."""
    answers: dict[str, list[str]] = {}
    first_seen: dict[str, tuple[str, int]] = {}
    problems: list[Problem] = []
    for number, row in rows:
        # rows read by `read_rows` know their file and line; joined train/eval/test rows have no
        # common numbering
        where = (row.get("_file", source), row.get("_line", number))
        pair, found = _check(row, field, input_field)
        problems += [Problem(*where, name, message) for name, message in found]
        if pair is None:
            continue
        if pair[0] in answers and answers[pair[0]][0] != pair[1]:  # one input, one recorded answer
            other = first_seen[pair[0]]
            problems.append(Problem(*where, field or "completion",
                                    f"the same input at {other[0]}:{other[1]} has a different recorded completion"))
            continue
        first_seen.setdefault(pair[0], where)
        answers.setdefault(pair[0], [pair[1]])
    if problems:
        raise DataValidationError(problems)
    return answers


def _check(row: Mapping, field: str | None, input_field: str | None) -> tuple[tuple[str, str] | None, list[tuple[str, str]]]:
    """(input, completion) of one row, or None and its problems as (field, message)."""
    in_name = input_field or next((k for k in INPUT_FIELDS if k in row), None)
    out_name = field or next((k for k in COMPLETION_FIELDS if k in row), None)
    if in_name is None or in_name not in row:
        return None, [(input_field or " or ".join(INPUT_FIELDS), "missing: the input the completion answers")]
    if out_name is None or out_name not in row:
        return None, [(field or " or ".join(COMPLETION_FIELDS), "missing: the recorded completion")]
    bad = [(name, f"must be a string, got {type(row[name]).__name__}") for name in (in_name, out_name)
           if not isinstance(row[name], str)]
    return (None if bad else (row[in_name], row[out_name])), bad
