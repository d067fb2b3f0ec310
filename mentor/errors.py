"""Errors meant for users: the message alone must say what is wrong and how to fix it."""

from __future__ import annotations

from dataclasses import dataclass


class MentorError(Exception):
    """An error caused by input or environment, reported to users without a traceback."""


class DamagedJobFile(MentorError):
    """A job's own file (state, config, result) that mentor cannot read: reported, never recorded
    as the job's failure (a finished job stays finished)."""


@dataclass(frozen=True)
class Problem:
    """One bad spot in an input file."""

    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: field '{self.field}': {self.message}"


class DataValidationError(MentorError):
    """Every problem found in a data file (up to a cap); raised before any training starts."""

    def __init__(self, problems: list[Problem], total: int | None = None, cap: int = 50):
        self.problems = problems
        self.total = total if total is not None else len(problems)
        shown = "\n".join(f"  {p}" for p in problems[:cap])
        more = f"\n  ... and {self.total - min(cap, len(problems))} more" if self.total > min(cap, len(problems)) else ""
        super().__init__(f"{self.total} problem(s) in the data; nothing was done with it:\n{shown}{more}")
