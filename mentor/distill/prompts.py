"""Few-shot chain-of-thought prompts for the teacher in distilling step-by-step.

The teacher sees a short instruction, worked exemplars in the classic "Q: ... A: <rationale> So the
answer is X." form, then the new question and "A:". Every exemplar ends with exactly the answer
sentence `mentor.distill.parsing.parse_completion` looks for, so a teacher that imitates the shots
writes completions the parser can split into rationale and label. Built-in exemplars exist for each
task; users can bring their own as JSONL, validated line by line before any teacher call is paid for.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from mentor.distill.parsing import NLI_LABELS, TASKS, Parsed, _find_answer, _match_label, cut_runon, parse_completion
from mentor.errors import DataValidationError, MentorError, Problem

ZERO_SHOT_TRIGGER = "Let's think step by step."


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
# Built-in exemplars (hand-written)
# ------------------------------------------------------------------------------------------------

BUILTIN_SHOTS: dict[str, tuple[Shot, ...]] = {
    # SVAMP teacher style: the answer is an arithmetic expression in parentheses.
    "math": (
        Shot(
            "A baker made 45 muffins and sold 28 of them. How many muffins does the baker have left?",
            "The baker made 45 muffins. He sold 28 of them. So he has 45 - 28 = 17 muffins left.",
            "45 - 28",
        ),
        Shot(
            "Tom has 6 boxes of crayons with 8 crayons in each box. He gives away 10 crayons. How many crayons does Tom have now?",
            "Tom has 6 boxes with 8 crayons each, so he has 6 * 8 = 48 crayons. He gives away 10, so he has 48 - 10 = 38 crayons.",
            "(6 * 8) - 10",
        ),
        Shot(
            "A rope 84 meters long is cut into 2 pieces of equal length. How long is each piece?",
            "The rope is 84 meters long. It is cut into 2 equal pieces. So each piece is 84 / 2 = 42 meters long.",
            "84 / 2",
        ),
        Shot(
            "A pack of 4 pencils costs 3 dollars. Maria buys 5 packs and uses 2 pencils. How many pencils does she have left?",
            "Each pack has 4 pencils. She buys 5 packs, so she has 5 * 4 = 20 pencils. The price does not matter. "
            "She uses 2, so she has 20 - 2 = 18 pencils left.",
            "(5 * 4) - 2",
        ),
    ),
    "choice": (
        Shot(
            format_choices("Where would you go to buy a novel?", ["bakery", "bookstore", "garage", "pharmacy", "stadium"]),
            "A novel is a book. Books are sold in a bookstore.",
            "(b) bookstore",
        ),
        Shot(
            format_choices(
                "What do people usually use to cut paper?", ["spoon", "hammer", "scissors", "pillow", "kettle"]
            ),
            "Cutting paper needs a tool with sharp blades. Of the options, only scissors have blades made for paper.",
            "(c) scissors",
        ),
        Shot(
            format_choices(
                "If you are thirsty after a long run, what should you do?",
                ["drink water", "take a nap", "read a book", "run further", "eat salt"],
            ),
            "Thirst means the body needs fluid. Running further or eating salt makes it worse; sleeping or reading "
            "does not help. Drinking water does.",
            "(a) drink water",
        ),
        Shot(
            format_choices("Where is a lion most likely to live in the wild?", ["ocean", "arctic", "city", "savanna", "desert island"]),
            "Wild lions live on grasslands in Africa, which are called savannas.",
            "(d) savanna",
        ),
    ),
    "nli": (
        Shot(
            format_nli("A man in a red shirt is playing a guitar on a stage.", "A man is performing music."),
            "Playing a guitar on a stage is performing music, and the man is doing it.",
            "entailment",
        ),
        Shot(
            format_nli("Two children are sleeping in a tent.", "The children are playing soccer in a field."),
            "Children who are sleeping in a tent cannot be playing soccer in a field at the same time.",
            "contradiction",
        ),
        Shot(
            format_nli("A woman is reading a book on a park bench.", "The woman is waiting for her friend."),
            "The premise says what the woman is doing but not why she is there. She may or may not be waiting for a friend.",
            "neutral",
        ),
        Shot(
            format_nli("A dog is running through deep snow.", "An animal is outside in the cold."),
            "A dog is an animal, and deep snow is outside and cold.",
            "entailment",
        ),
    ),
    "classify": (
        Shot(
            "The battery died after two days and support never answered my emails.",
            "A battery that dies quickly is a defect, and unanswered support adds to the frustration.",
            "negative",
        ),
        Shot(
            "Setup took five minutes and the picture quality is stunning.",
            "Quick setup and stunning picture quality are both praise.",
            "positive",
        ),
        Shot(
            "The package arrived on Tuesday.",
            "This only states when the package arrived, with no opinion either way.",
            "neutral",
        ),
        Shot(
            "I expected to hate it, but it turned out to be the best purchase I made this year.",
            "The writer expected to dislike it, but the conclusion is that it was the best purchase of the year.",
            "positive",
        ),
    ),
    "extract": (
        Shot(
            format_extract(
                "Marie Curie was the first woman to win a Nobel Prize. She shared the 1903 physics prize with Pierre "
                "Curie and Henri Becquerel.",
                "Who was the first woman to win a Nobel Prize?",
            ),
            "The first sentence says Marie Curie was the first woman to win a Nobel Prize.",
            "Marie Curie",
        ),
        Shot(
            format_extract(
                "The Eiffel Tower was built for the 1889 World's Fair in Paris. At 300 metres it was then the tallest "
                "structure in the world.",
                "For which event was the Eiffel Tower built?",
            ),
            "The context says the tower was built for the 1889 World's Fair in Paris.",
            "the 1889 World's Fair",
        ),
        Shot(
            format_extract(
                "The Amazon river flows through Peru, Colombia and Brazil before it reaches the Atlantic Ocean.",
                "Into which ocean does the Amazon flow?",
            ),
            "The river reaches the Atlantic Ocean at the end of its course.",
            "the Atlantic Ocean",
        ),
        Shot(
            format_extract(
                "Photosynthesis takes place in the chloroplasts, which contain the green pigment chlorophyll.",
                "Where does photosynthesis take place?",
            ),
            "The context says photosynthesis takes place in the chloroplasts.",
            "the chloroplasts",
        ),
    ),
}

_CLASSIFY_BUILTIN_LABELS = ("positive", "negative", "neutral")


def _instruction(task: str, labels: Sequence[str] | None) -> str:
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
# User shots
# ------------------------------------------------------------------------------------------------

_ALIASES = {"input": ("input", "input_text"), "rationale": ("rationale",), "label": ("label", "output_text")}


def load_shots(path: str | os.PathLike, task: str | None = None) -> list[Shot]:
    """Read exemplars from JSONL (`{"input", "rationale", "label"}`; `input_text`/`output_text` also
    accepted). Every bad line is reported at once, with file, line and field. With ``task``, each
    shot must also parse back to its own label, so a teacher copying it writes parseable answers."""
    p = Path(path)
    if not p.is_file():
        raise MentorError(f"shots file not found: {p}")
    name = str(p)
    problems: list[Problem] = []
    shots: list[Shot] = []
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise MentorError(f"{name}: not UTF-8 text ({e})") from None
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(Problem(name, lineno, "(line)", f"not valid JSON: {e.msg} at column {e.colno}"))
            continue
        if not isinstance(obj, dict):
            problems.append(Problem(name, lineno, "(line)", f"expected a JSON object, got {type(obj).__name__}"))
            continue
        values: dict[str, str] = {}
        line_ok = True
        for fld, keys in _ALIASES.items():
            present = [k for k in keys if k in obj]
            if not present:
                problems.append(Problem(name, lineno, fld, "missing" + (f" (or '{keys[1]}')" if len(keys) > 1 else "")))
                line_ok = False
                continue
            if len(present) > 1:
                problems.append(Problem(name, lineno, fld, f"give only one of {' / '.join(repr(k) for k in keys)}"))
                line_ok = False
                continue
            key, value = present[0], obj[present[0]]
            if fld == "label" and isinstance(value, (int, float)) and not isinstance(value, bool):
                value = str(value)
            if not isinstance(value, str):
                problems.append(Problem(name, lineno, key, f"must be a string, got {type(value).__name__}"))
                line_ok = False
            elif not value.strip():
                problems.append(Problem(name, lineno, key, "is empty"))
                line_ok = False
            else:
                values[fld] = value.strip()
        if not line_ok:
            continue
        shot = Shot(values["input"], values["rationale"], values["label"])
        problem = _check_shot(shot, task)
        if problem:
            problems.append(Problem(name, lineno, *problem))
            continue
        shots.append(shot)
    if not problems and not shots:
        problems.append(Problem(name, 0, "(file)", "no shots: the file is empty"))
    if problems:
        raise DataValidationError(problems)
    return shots


def _check_shot(shot: Shot, task: str | None) -> tuple[str, str] | None:
    """(field, message) when the shot would teach the teacher a format the parser cannot read."""
    if cut_runon(shot.rationale) != shot.rationale:
        return "rationale", "contains a 'Q:'/'Question:'/'Problem:' marker, which would read as a new exchange"
    if task is None:
        return None
    if _find_answer(shot.rationale)[0] is not None:
        return "rationale", "already contains an answer sentence (\"the answer is ...\"); put the answer in 'label'"
    completion = f"{_sentence(shot.rationale)} {answer_sentence(task, shot.label)}"
    if task == "choice":  # a letter needs no option list; option text alone is checked against itself
        parsed = parse_completion(completion, task)
        if not parsed.ok:
            parsed = parse_completion(completion, task, choices=[shot.label])
    else:
        parsed = parse_completion(completion, task, labels=[shot.label] if task in ("nli", "classify") else None)
    if not parsed.ok:
        return "label", f"the parser cannot read it back ({parsed.reason}): {shot.label!r}"
    return None


def _sentence(text: str) -> str:
    """``text`` ending in sentence punctuation, so the answer sentence does not run into it."""
    text = text.strip()
    return text if text.endswith((".", "!", "?", '"', ")")) else text + "."


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

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise MentorError(f"unknown task {self.task!r}; expected one of: {', '.join(TASKS)}")
        blocks = [self.instruction] if self.instruction else []
        for shot in self.shots:
            blocks.append(f"Q: {shot.input}\nA: {_sentence(shot.rationale)} {answer_sentence(self.task, shot.label)}")
        object.__setattr__(self, "_prefix", "\n\n".join(blocks) + ("\n\n" if blocks else ""))

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
        if task not in TASKS:
            raise MentorError(f"unknown task {task!r}; expected one of: {', '.join(TASKS)}")
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

    def parse(self, completion: str, choices: list[str] | None = None) -> Parsed:
        """Parse a completion of this template's prompt with the matching task and labels."""
        return parse_completion(completion, self.task, choices=choices, labels=list(self.labels) if self.labels else None)


def _builtin_for(task: str, labels: Sequence[str] | None) -> tuple[Shot, ...]:
    shots = BUILTIN_SHOTS[task]
    if task not in ("nli", "classify") or labels is None:
        return shots
    mapped = []
    for s in shots:
        target = _match_label(s.label, labels)
        if target is None:
            return ()  # the label set does not fit the built-in exemplars: zero-shot instead
        mapped.append(Shot(s.input, s.rationale, target))
    return tuple(mapped)


def build_prompt(
    input_text: str | Mapping[str, Any],
    task: str,
    shots: Sequence[Shot] | str | os.PathLike | None = None,
    labels: Sequence[str] | None = None,
) -> str:
    """One prompt; for many inputs build a `PromptTemplate` once and call its `render`."""
    return PromptTemplate.for_task(task, shots, labels).render(input_text)
