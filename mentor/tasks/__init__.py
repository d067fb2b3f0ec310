"""Task knowledge shared by distillation and evaluation; this module is the registry of task names.

The names are defined here once and everything else (configs, CLIs, prompts, parsing, metrics)
imports them. Submodules hold the rest: `prompts`, `answers`, `labels`, `arithmetic`, `runon`,
`metrics`. Kept import-light (no submodules, no torch) because configs read it at CLI start-up.
"""

from __future__ import annotations

from typing import Literal, get_args

from mentor.errors import MentorError

TaskName = Literal["math", "choice", "nli", "classify", "extract"]
TASKS: tuple[str, ...] = get_args(TaskName)

# Tasks whose answer must be one of a label set (nli has a default set, classify needs one given).
LABEL_TASKS: tuple[str, ...] = ("nli", "classify")


def check_task(task: str) -> None:
    """Raise a MentorError naming the known tasks unless ``task`` is one of them."""
    if task not in TASKS:
        raise MentorError(f"unknown task {task!r}; expected one of: {', '.join(TASKS)}")
