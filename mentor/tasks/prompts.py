"""Few-shot chain-of-thought prompts for the teacher in distilling step-by-step.

The teacher sees a short instruction, worked exemplars in the classic "Q: ... A: <rationale> So the
answer is X." form, then the new question and "A:". Every exemplar ends with exactly the answer
sentence `mentor.tasks.answers.parse_completion` looks for, so a teacher that imitates the shots
writes completions the parser can split into rationale and label. Built-in exemplars ship as data
(`exemplars/<task>.jsonl`); users can bring their own as JSONL. Both are read by the same checks,
line by line, before any teacher call is paid for.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mentor.data.jsonl import read_jsonl
from mentor.errors import DataValidationError, MentorError, Problem
from mentor.tasks import LABEL_TASKS, TASKS, check_task
from mentor.tasks.answers import Parsed, find_answer, parse_completion
from mentor.tasks.labels import NLI_LABELS, match_label
from mentor.tasks.runon import cut_runon

ZERO_SHOT_TRIGGER = "Let's think step by step."
EXEMPLARS_DIR = Path(__file__).with_name("exemplars")


@dataclass(frozen=True)
class Shot:
    """One worked exemplar: the question, its reasoning, and the answer as the teacher should write it."""

    input: str
    rationale: str
    label: str


# ------------------------------------------------------------------------------------------------
# Input formatting
# ------------------------------------------------------------------------------------------------

_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def format_choices(question: str, choices: Sequence[str]) -> str:
    """A multiple-choice question with lettered options, as the choice shots show them."""
    options = " ".join(f"({_LETTERS[i]}) {c}" for i, c in enumerate(choices))
    return f"{question.strip()}\nAnswer Choices: {options}"


def format_nli(premise: str, hypothesis: str) -> str:
    return f"Premise: {premise.strip()}\nHypothesis: {hypothesis.strip()}\nDoes the premise entail the hypothesis?"


def format_extract(context: str, question: str) -> str:
    return f"Context: {context.strip()}\nQuestion: {question.strip()}"


_FIELDS = {
    "math": ("question",),
    "choice": ("question", "choices"),
    "nli": ("premise", "hypothesis"),
    "classify": ("text",),
    "extract": ("context", "question"),
}


def format_input(task: str, fields: Mapping[str, Any]) -> str:
    """Render structured input ({"premise": ..., "hypothesis": ...} for nli, and so on) as prompt text."""
    missing = [k for k in _FIELDS[task] if k not in fields]
    if missing:
        raise MentorError(f"task {task!r} input needs field(s) {', '.join(_FIELDS[task])}; missing: {', '.join(missing)}")
    if task == "choice":
        return format_choices(fields["question"], list(fields["choices"]))
    if task == "nli":
        return format_nli(fields["premise"], fields["hypothesis"])
    if task == "extract":
        return format_extract(fields["context"], fields["question"])
    return str(fields[_FIELDS[task][0]]).strip()


# ------------------------------------------------------------------------------------------------
# Instruction and answer sentence
# ------------------------------------------------------------------------------------------------


def _instruction(task: str, labels: Sequence[str] | None) -> str:
    """What the teacher is asked to do, ending with the answer form the parser reads."""
    if task == "math":
        return 'Solve each math word problem. Reason step by step, then end with "The answer is (<arithmetic expression>)."'
    if task == "choice":
        return 'Answer each multiple-choice question. Reason step by step, then end with "So the answer is (<letter>) <option>."'
    if task == "extract":
        return (
            "Answer each question with a span copied from its context. Reason step by step, "
            'then end with: So the answer is "<span>".'
        )
    names = ", ".join(labels or NLI_LABELS)
    if task == "nli":
        return (
            "Decide whether each premise entails the hypothesis, contradicts it, or neither. Reason step by step, "
            f'then end with "So the answer is <label>." using one of: {names}.'
        )
    return f'Classify each text. Reason step by step, then end with "So the answer is <label>." using one of: {names}.'


def answer_sentence(task: str, label: str) -> str:
    """The sentence that closes an exemplar; `parse_completion` recognises each of these forms."""
    label = label.strip()
    if task == "math":
        return f"The answer is {label}." if _wrapped(label) else f"The answer is ({label})."
    if task == "extract":
        return f'So the answer is "{label}".'
    return f"So the answer is {label}."


def _wrapped(expr: str) -> bool:
    """Whether one pair of parentheses encloses the whole expression ("(6 * 8)", not "(6 * 8) - 10")."""
    if not (expr.startswith("(") and expr.endswith(")")):
        return False
    depth = 0
    for i, ch in enumerate(expr):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0 and i < len(expr) - 1:
            return False
    return True


# ------------------------------------------------------------------------------------------------
# Exemplars: user files and the built-in ones
# ------------------------------------------------------------------------------------------------

_ALIASES = {"input": ("input", "input_text"), "rationale": ("rationale",), "label": ("label", "output_text")}


def load_shots(path: str | os.PathLike, task: str | None = None) -> list[Shot]:
    """Read exemplars from JSONL (`{"input", "rationale", "label"}`; `input_text`/`output_text` also
    accepted). Every bad line is reported at once, with file, line and field. With ``task``, each
    shot must also parse back to its own label, so a teacher copying it writes parseable answers."""
    shots = read_jsonl(path, lambda row, _lineno: _parse_shot(row, task), "shots")
    if not shots:
        raise DataValidationError([Problem(str(Path(path).expanduser()), 0, "(file)", "no shots: the file is empty")])
    return shots


def _parse_shot(row: dict, task: str | None) -> tuple[Shot | None, list[tuple[str, str]]]:
    """One exemplar line as a Shot, or None with every (field, message) wrong with it."""
    values: dict[str, str] = {}
    problems: list[tuple[str, str]] = []
    for fld, keys in _ALIASES.items():
        present = [k for k in keys if k in row]
        if not present:
            problems.append((fld, "missing" + (f" (or '{keys[1]}')" if len(keys) > 1 else "")))
            continue
        if len(present) > 1:
            problems.append((fld, f"give only one of {' / '.join(repr(k) for k in keys)}"))
            continue
        key, value = present[0], row[present[0]]
        if fld == "label" and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            problems.append((key, f"must be a string, got {type(value).__name__}"))
        elif not value.strip():
            problems.append((key, "is empty"))
        else:
            values[fld] = value.strip()
    if problems:
        return None, problems
    shot = Shot(values["input"], values["rationale"], values["label"])
    problem = _check_shot(shot, task)
    return (None, [problem]) if problem else (shot, [])


def _check_shot(shot: Shot, task: str | None) -> tuple[str, str] | None:
    """(field, message) when the shot would teach the teacher a format the parser cannot read."""
    if cut_runon(shot.rationale) != shot.rationale:
        return "rationale", "contains a 'Q:'/'Question:'/'Problem:' marker, which would read as a new exchange"
    if task is None:
        return None
    if find_answer(shot.rationale)[0] is not None:
        return "rationale", "already contains an answer sentence (\"the answer is ...\"); put the answer in 'label'"
    completion = f"{_sentence(shot.rationale)} {answer_sentence(task, shot.label)}"
    if task == "choice":  # a letter needs no option list; option text alone is checked against itself
        parsed = parse_completion(completion, task)
        if not parsed.ok:
            parsed = parse_completion(completion, task, choices=[shot.label])
    else:
        parsed = parse_completion(completion, task, labels=[shot.label] if task in LABEL_TASKS else None)
    if not parsed.ok:
        return "label", f"the parser cannot read it back ({parsed.reason}): {shot.label!r}"
    return None


def _sentence(text: str) -> str:
    """``text`` ending in sentence punctuation, so the answer sentence does not run into it."""
    text = text.strip()
    return text if text.endswith((".", "!", "?", '"', ")")) else text + "."


def _read_builtin(task: str) -> tuple[Shot, ...]:
    """The shipped exemplars of ``task``, checked like user shots. An object ``input`` holds the
    task's fields and is rendered with `format_input`, so exemplars show inputs as real ones are."""

    def parse(row: dict, lineno: int) -> tuple[Shot | None, list[tuple[str, str]]]:
        if isinstance(row.get("input"), Mapping):
            row = {**row, "input": format_input(task, row["input"])}
        return _parse_shot(row, task)

    return tuple(read_jsonl(EXEMPLARS_DIR / f"{task}.jsonl", parse, "exemplars"))


# A field label at a line start of an exemplar's input: a capitalised name of up to four words.
_FIELD_LABEL = re.compile(r"^[ \t]*([A-Z][A-Za-z0-9_-]*(?:[ \t][A-Za-z0-9_-]+){0,3})[ \t]*:(?=[ \t]|$)", re.MULTILINE)

# Hand-written; the math ones follow the SVAMP teacher style (the answer is an arithmetic expression).
BUILTIN_SHOTS: dict[str, tuple[Shot, ...]] = {task: _read_builtin(task) for task in TASKS}
_CLASSIFY_BUILTIN_LABELS = ("positive", "negative", "neutral")


def _builtin_for(task: str, labels: Sequence[str] | None) -> tuple[Shot, ...]:
    """The built-in exemplars with their labels mapped onto ``labels`` (nli/classify)."""
    shots = BUILTIN_SHOTS[task]
    if task not in LABEL_TASKS or labels is None:
        return shots
    mapped = []
    for s in shots:
        target = match_label(s.label, labels)
        if target is None:
            return ()  # the label set does not fit the built-in exemplars: zero-shot instead
        mapped.append(Shot(s.input, s.rationale, target))
    return tuple(mapped)


# ------------------------------------------------------------------------------------------------
# Templates
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptTemplate:
    """A task's instruction and exemplars, rendered once and reused for every input.

    ``labels`` is the label set for nli/classify: it is named in the instruction and built-in
    exemplar labels are mapped onto it ("entailment" becomes "yes" for yes/no/... label sets). If a
    built-in classify exemplar has no counterpart in ``labels`` the template goes zero-shot rather
    than show the teacher answers outside the label set.
    """

    task: str
    shots: tuple[Shot, ...]
    labels: tuple[str, ...] | None = None
    instruction: str = ""
    _prefix: str = field(default="", init=False, repr=False, compare=False)
    # the field labels that open the exemplars' input lines ("Review:" in "Review: ...") and the
    # built-in formats' own: a teacher that writes one after its answer is inventing the next
    # example in this format (see `mentor.tasks.answers.cut_repeated_input`)
    input_fields: tuple[str, ...] = field(default=(), init=False, compare=False)

    def __post_init__(self) -> None:
        check_task(self.task)
        blocks = [self.instruction] if self.instruction else []
        for shot in self.shots:
            blocks.append(f"Q: {shot.input}\nA: {_sentence(shot.rationale)} {answer_sentence(self.task, shot.label)}")
        object.__setattr__(self, "_prefix", "\n\n".join(blocks) + ("\n\n" if blocks else ""))
        found = {m.group(1).strip() for shot in self.shots for m in _FIELD_LABEL.finditer(shot.input)}
        object.__setattr__(self, "input_fields", tuple(sorted(found)))

    @classmethod
    def for_task(
        cls,
        task: str,
        shots: Sequence[Shot] | str | os.PathLike | None = None,
        labels: Sequence[str] | None = None,
        instruction: str | None = None,
    ) -> PromptTemplate:
        """Built-in exemplars when ``shots`` is None, none (zero-shot) when it is empty, else the given
        shots or the JSONL file they are in."""
        check_task(task)
        if task == "classify" and labels is None:
            labels = _CLASSIFY_BUILTIN_LABELS
        if isinstance(shots, (str, os.PathLike)):
            shots = load_shots(shots, task=task)
        elif shots is None:
            shots = _builtin_for(task, labels)
        labels_t = tuple(labels) if labels is not None else None
        return cls(task, tuple(shots), labels_t, _instruction(task, labels_t) if instruction is None else instruction)

    @property
    def zero_shot(self) -> bool:
        return not self.shots

    def render(self, input: str | Mapping[str, Any]) -> str:
        """The full prompt for one input; the teacher's completion continues after the final "A:"."""
        text = format_input(self.task, input) if isinstance(input, Mapping) else str(input).strip()
        if not text:
            raise MentorError("empty input: nothing to ask the teacher")
        tail = f"A: {ZERO_SHOT_TRIGGER}" if self.zero_shot else "A:"
        return f"{self._prefix}Q: {text}\n{tail}"

    __call__ = render

    def parse(self, completion: str, choices: list[str] | None = None, cut_off: bool = False) -> Parsed:
        """Parse a completion of this template's prompt with the matching task, labels and input
        fields (`cut_off`: generation stopped at the token limit)."""
        return parse_completion(completion, self.task, choices=choices, labels=list(self.labels) if self.labels else None,
                                cut_off=cut_off, fields=self.input_fields)



def build_prompt(
    input_text: str | Mapping[str, Any],
    task: str,
    shots: Sequence[Shot] | str | os.PathLike | None = None,
    labels: Sequence[str] | None = None,
) -> str:
    """One prompt; for many inputs build a `PromptTemplate` once and call its `render`."""
    return PromptTemplate.for_task(task, shots, labels).render(input_text)
