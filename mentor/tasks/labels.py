"""Label normalisation: one canonical label per answer, whatever words the teacher used.

A teacher may answer an NLI question "yes", "entailed" or "it is entailed", and a multiple-choice
question "(d)", "D) canada" or "canada". Training and scoring compare canonical labels, so each
answer is mapped onto the task's label set (or option list), or refused with a reason: a wrong label
taught to a student is worse than a dropped example.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from mentor.errors import MentorError
from mentor.tasks import LABEL_TASKS, check_task
from mentor.tasks.answer_text import QUOTES, strip_answer
from mentor.tasks.arithmetic import evaluate_math, format_number
from mentor.tasks.reasons import (
    REASON_CHOICE_CONFLICT,
    REASON_CONFLICTING,
    REASON_EMPTY_ANSWER,
    REASON_MULTIPLE,
    REASON_NOT_IN_LABELS,
    REASON_TRUNCATED,
)

NLI_LABELS = ("entailment", "neutral", "contradiction")

# Words a teacher uses for the NLI labels; a label set such as yes/no/maybe maps through the same groups.
_SYNONYMS: tuple[frozenset[str], ...] = (
    frozenset({"entailment", "entailed", "entails", "entail", "yes", "true", "it is entailed", "correct"}),
    frozenset({"contradiction", "contradicts", "contradicted", "contradict", "no", "false", "incorrect"}),
    frozenset(
        {
            "neutral", "maybe", "it is not possible to tell", "not possible to tell", "it's not possible to tell",
            "unknown", "undetermined", "cannot be determined", "can't be determined", "can not be determined",
            "it cannot be determined", "impossible to tell", "it is impossible to tell", "not enough information",
            "inconclusive", "cannot tell", "can't tell", "unclear",
        }
    ),
)


def _norm_text(s: str) -> str:
    """Text compared for label equality: lower case, single spaces, no quotes, punctuation or article."""
    s = s.lower().replace("_", " ")
    s = re.sub(r"\s+", " ", s).strip().strip(QUOTES).strip(" .!?,;:")
    return re.sub(r"^(?:the|a|an) ", "", s)


def match_label(candidate: str, labels: Sequence[str]) -> str | None:
    """The label ``candidate`` names, directly or through a synonym group, or None."""
    c = _norm_text(candidate)
    for label in labels:
        if _norm_text(label) == c:
            return label
    for group in _SYNONYMS:
        if c in group:
            for label in labels:
                if _norm_text(label) in group:
                    return label
    return None


def _normalise_label(ans: str, labels: Sequence[str]) -> tuple[str | None, str]:
    """(label, "") when ``ans`` names one of ``labels``, alone or before an aside; else (None, reason)."""
    hit = match_label(ans, labels)
    if hit is not None:
        return hit, ""
    # "yes, because ..." / "neutral (the premise says nothing about ...)": a label, then an aside.
    m = re.match(r"^(.+?)\s*(?:[,;:(\u2014]|\s-\s|\s(?:because|since|as)\b)", ans.strip())
    if m:
        hit = match_label(m.group(1), labels)
        if hit is not None:
            if _aside_disagrees(ans.strip()[m.end(1) :], hit, labels):
                return None, REASON_CONFLICTING
            return hit, ""
    return None, REASON_NOT_IN_LABELS


# The words that name an NLI label in an aside: its own name and verb forms, not the everyday
# synonyms ("true", "no", "maybe") that explanations use freely.
_NAMING = (r"entail\w*", r"contradict\w*", r"neutral")
_NEGATED = re.compile(r"(?:\bnot|n't|\bnever|\bno|\bneither|\bnor)\s+(?:\w+\s+){0,3}\Z", re.IGNORECASE)


def _aside_disagrees(aside: str, hit: str, labels: Sequence[str]) -> bool:
    """Whether the aside after a label takes it back: names another label ("false; it is entailed",
    "unknown, probably entailment") or denies this one ("yes, it is not entailed")."""
    for label in labels:
        group = next((g for g in _SYNONYMS if _norm_text(label) in g), None)
        # a label that is an everyday word ("yes", "no", "true") is named in its group's terms only
        names = [word for word, g in zip(_NAMING, _SYNONYMS) if g is group]
        if group is None or re.fullmatch("|".join(_NAMING), _norm_text(label)):
            names.append(re.escape(_norm_text(label)))
        for m in re.finditer(rf"\b(?:{'|'.join(names)})\b", aside, re.IGNORECASE):
            negated = bool(_NEGATED.search(aside, 0, m.start()))
            if negated == (label == hit):
                return True
    return False


# (pattern, strict): a strict form counts only when its text is the letter's own option or absent,
# so "B, melted" is option B but "A, B, D, or E" and "probably (A)" are not option A.
_LETTER_FORMS = tuple(
    (re.compile(pattern, re.IGNORECASE | re.DOTALL), strict)
    for pattern, strict in (
        (r"^(?:(?:option|choice)\s*)?\((?P<letter>[a-z])\)\s*(?P<text>.*)$", False),
        (r"^(?:(?:option|choice)\s*)?(?P<letter>[a-z])\s*[).:]\s*(?P<text>.*)$", False),
        (r"^(?:option|choice)\s+(?P<letter>[a-z])\b\s*(?P<text>.*)$", False),
        (r"^(?P<letter>[a-z])$", False),
        # Zero-shot CoT answers "the answer is B, melted."; others put the letter last: "melted (B)".
        (r"^\(?(?P<letter>[a-z])\)?\s*,\s*(?P<text>.+)$", True),
        (r"^(?P<text>.+?)\s*\((?P<letter>[a-z])\)$", True),
    )
)
_LETTER_IN_PARENS = re.compile(r"\(([a-z])\)", re.IGNORECASE)
# A capital letter named as the answer in the text after a letter: "B. No wait, it is C."
_LETTER_NAMED = re.compile(r"\b(?i:answer is|it is|it's)\s+\(?([A-Z])\)?(?=[\s.,;:!?]|$)")


def _normalise_choice(ans: str, choices: Sequence[str] | None) -> tuple[str | None, str]:
    """The canonical option text for a letter ("(d)", "D)"), letter plus text or option text alone;
    the lowercase letter when no ``choices`` are given."""
    normed = [_norm_text(c) for c in choices] if choices else []
    text = ans.strip()
    if choices and _norm_text(text) in normed:  # whole answer is an option (even a one-letter one)
        return choices[normed.index(_norm_text(text))], ""
    for form, strict in _LETTER_FORMS:
        m = form.match(text)
        if not m:
            continue
        letter, rest = m.group("letter").lower(), _norm_text(m.groupdict().get("text") or "")
        others = _LETTER_IN_PARENS.findall(rest) + _LETTER_NAMED.findall(m.groupdict().get("text") or "")
        if any(other.lower() != letter for other in others):
            return None, REASON_MULTIPLE  # "(A) or (B)", "(A), (B), (C), or (D)", "B. No wait, it is C."
        idx = ord(letter) - ord("a")
        own = normed[idx] if idx < len(normed) else None
        if strict and rest and rest != own:
            continue
        if not choices:
            return letter, ""
        if own is None:
            return None, REASON_NOT_IN_LABELS
        if rest and rest != own and rest in normed:
            return None, REASON_CHOICE_CONFLICT
        return choices[idx], ""
    return None, REASON_NOT_IN_LABELS


def normalize_answer(
    answer: str,
    task: str,
    choices: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
) -> tuple[str | None, str]:
    """Normalise one answer text for ``task``: (label, "") or (None, reason). Math answers become a
    canonical number, choices the option text (the letter without ``choices``), nli/classify a label
    of the set, extract spans stay as written."""
    check_labels(task, labels)
    ans = strip_answer(answer)
    if not ans:
        return None, REASON_EMPTY_ANSWER
    if task == "math":
        try:
            return format_number(evaluate_math(ans)), ""
        except ValueError as e:
            return None, str(e).split(":")[0]
    if task == "choice":
        return _normalise_choice(ans, choices)
    if task in LABEL_TASKS:
        return _normalise_label(ans, labels or NLI_LABELS)
    return _span(ans)


def _span(ans: str) -> tuple[str | None, str]:
    """An extracted span as written; two quoted spans are two answers, an open quote a cut one."""
    if ans.count('"') >= 4 or ans.count("“") >= 2:  # '"Paris" or "Lyon"', '"Paris", not "Lyon"'
        return None, REASON_MULTIPLE
    if (ans.startswith('"') and ans.count('"') == 1) or (ans.startswith("“") and "”" not in ans):  # not 6'2"
        return None, REASON_TRUNCATED
    return ans, ""


def check_labels(task: str, labels: Sequence[str] | None) -> None:
    """Raise a MentorError for an unknown task, or a classify task without its label set."""
    check_task(task)
    if task == "classify" and not labels:
        raise MentorError("task 'classify' needs its label set: pass labels=[...]")
