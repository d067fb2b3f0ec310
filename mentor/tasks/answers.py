"""Parsing a teacher's chain-of-thought completion into (rationale, answer).

Distilling step-by-step trains the student on the teacher's rationale *and* label, so both must be
clean: the completion is cut at the first invented follow-up (`runon`), the answer sentence is found
in its many shapes ("The answer is (10 * 45).", "Answer: neutral", "#### 42") and the answer is
normalised for the task (`labels`). Anything not clearly parseable comes back with ``ok=False`` and
a fixed ``reason`` (`reasons`) that batch reports group by (see `summarize_parses`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from mentor.tasks import LABEL_TASKS
from mentor.tasks.labels import NLI_LABELS, check_labels, match_label, normalize_answer
from mentor.tasks.reasons import REASON_CONFLICTING, REASON_EMPTY, REASON_NO_ANSWER, REASON_TRUNCATED
from mentor.tasks.runon import cut_runon


@dataclass(frozen=True)
class Parsed:
    """One parsed completion; ``label`` is normalised for the task and set only when ``ok``."""

    rationale: str
    label: str | None
    raw_answer: str
    ok: bool
    reason: str = ""


# An answer turn marker at a line start: the teacher echoed the question, then answered.
_ANSWER_TURN = re.compile(r"^[ \t]*A[ \t]*[:：][ \t]*", re.MULTILINE)

_CONNECTOR = r"(?:(?:so|therefore|thus|hence|then)\b[ \t]*,?[ \t]*)?"
_ANSWER_SENTENCE = re.compile(
    _CONNECTOR
    + r"\b(?:the[ \t]+|my[ \t]+|our[ \t]+)?(?:final[ \t]+|correct[ \t]+|right[ \t]+)?answer[ \t]+"
    r"(?:is|would[ \t]+be|will[ \t]+be|should[ \t]+be|must[ \t]+be)\b[ \t]*[:：]?[ \t]*",
    re.IGNORECASE,
)
_ANSWER_COLON = re.compile(
    r"(?:^|(?<=[.!?])[ \t]+)" + _CONNECTOR + r"(?:the[ \t]+)?(?:final[ \t]+)?answer[ \t]*[:：][ \t]*",
    re.IGNORECASE | re.MULTILINE,
)
_HASHES = re.compile(r"^[ \t]*####[ \t]*", re.MULTILINE)
_TRAILING_CONNECTOR = re.compile(r"\b(?:so|therefore|thus|hence|then)[\s,:]*\Z", re.IGNORECASE)

_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "mt", "inc", "prof"}


def _answer_end(text: str, start: int, spans: bool = False) -> tuple[int, bool]:
    """End of the answer that starts at ``start``: the first sentence end outside parentheses and
    quotes, or the line end. Returns (end, balanced); unbalanced means the answer was cut off.
    Only free-text ``spans`` may hold abbreviations ("St. Louis"): elsewhere "B. Because ..." ends
    at "B."."""
    depth = 0
    in_quote = False
    i = start
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\n":
            break
        if ch == '"':
            in_quote = not in_quote
        elif ch == "“":
            in_quote = True
        elif ch == "”":
            in_quote = False
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(0, depth - 1)
        elif ch in ".!?" and depth == 0 and not in_quote:
            nxt = text[i + 1] if i + 1 < n else ""
            at_space = nxt == "" or nxt.isspace()
            if at_space and (ch != "." or not spans or not _is_abbreviation(text, start, i)):
                if ch == "." and spans and re.search(r"\b(?:[A-Za-z]\.)+[A-Za-z]$", text[start:i]):
                    i += 1  # "Washington D.C." keeps its last period
                break
        i += 1
    return i, depth == 0


def _is_abbreviation(text: str, start: int, dot: int) -> bool:
    """Whether the period at ``dot`` closes an abbreviation ("St.", "D.C.") rather than a sentence."""
    m = re.search(r"([A-Za-z]+)$", text[start:dot])
    if not m:
        return False
    word = m.group(1)
    if word.lower() in _ABBREVIATIONS:
        return True
    return len(word) == 1 and word.isupper() and dot + 2 < len(text) and text[dot + 2 : dot + 3].isupper()


def find_answers(head: str, spans: bool = False) -> list[tuple[re.Match[str], int, bool]]:
    """Every answer marker in ``head``, in order, with where its answer ends and whether it is whole."""
    found = sorted((m for p in (_ANSWER_SENTENCE, _ANSWER_COLON, _HASHES) for m in p.finditer(head)),
                   key=lambda x: x.start())
    out, last_end = [], -1
    for m in found:
        if m.start() < last_end:
            continue  # one marker inside another's answer ("the answer is: answer: 5")
        end, balanced = _answer_end(head, m.end(), spans)
        out.append((m, end, balanced))
        last_end = end
    return out


def find_answer(head: str, spans: bool = False) -> tuple[re.Match[str] | None, int, bool]:
    """The earliest answer marker in ``head`` with where its answer ends and whether it is whole."""
    found = find_answers(head, spans)
    return found[0] if found else (None, 0, True)


def _clean_rationale(text: str) -> str:
    """Rationale text: after the last echoed "A:" turn, without a dangling "So"/"Therefore"."""
    turns = list(_ANSWER_TURN.finditer(text))
    if turns:
        text = text[turns[-1].end() :]
    text = text.strip()
    for _ in range(3):  # "So, therefore" at most; a loop keeps the regex linear on long texts
        m = _TRAILING_CONNECTOR.search(text)
        if not m:
            break
        text = text[: m.start()].rstrip(" \t\n,:")
    return text.strip()


# No "=" and at most two unit words: "16 - 7 = 9 peaches." is working, not a stated answer.
_BARE_MATH = re.compile(r"^[\s$€£\d.,()+\-*/×÷%]*\d[\s$€£\d.,()+\-*/×÷%]*(?:\s*[A-Za-z]+){0,2}\s*\.?$")


def _bare_answer(head: str, task: str, choices, labels) -> tuple[str | None, str]:
    """A completion that is nothing but the answer ("42", "(d) canada", "neutral"); None when it
    has anything else, since picking an answer out of free text would be a guess."""
    text = _clean_rationale(head)
    if not text or "\n" in text or task == "extract" or len(text) > 80:
        return None, ""
    if task == "math" and not _BARE_MATH.match(text):
        return None, ""
    if task in LABEL_TASKS and match_label(text, labels or NLI_LABELS) is None:
        return None, ""
    label, _ = normalize_answer(text, task, choices, labels)
    return (label, text) if label is not None else (None, "")


def parse_completion(
    text: str,
    task: str,
    choices: list[str] | None = None,
    labels: list[str] | None = None,
) -> Parsed:
    """Split a teacher completion (the text written after the prompt's "A:") into rationale and
    normalised label, cutting everything after the answer sentence.

    ``choices`` are the option texts of a multiple-choice question (letters map to them in order);
    ``labels`` the label set for "nli" (default entailment/neutral/contradiction) and "classify".
    """
    check_labels(task, labels)
    if not text or not text.strip():
        return Parsed("", None, "", False, REASON_EMPTY)
    head = cut_runon(text)
    markers = find_answers(head, spans=task == "extract")
    if not markers:
        label, raw = _bare_answer(head, task, choices, labels)
        if label is not None:
            return Parsed("", label, raw, True)
        return Parsed(_clean_rationale(head), None, "", False, REASON_NO_ANSWER)
    # The closing answer statement wins: chain-of-thought often opens by restating what is asked
    # ("The answer must be the place where beavers get their supplies. ... So the answer is (c).").
    # Earlier statements count only to catch a completion that names two different answers.
    m, end, balanced = markers[-1]
    rationale = _clean_rationale(head[: m.start()])
    raw = head[m.end() : end].strip()
    if not balanced:
        return Parsed(rationale, None, raw, False, REASON_TRUNCATED)
    label, reason = normalize_answer(raw, task, choices, labels)
    if label is not None:
        for earlier, earlier_end, whole in markers[:-1]:
            other = normalize_answer(head[earlier.end() : earlier_end].strip(), task, choices, labels)[0] if whole else None
            if other is not None and not _same(other, label, task):
                return Parsed(rationale, None, raw, False, f"{REASON_CONFLICTING}: {other!r} and {label!r}")
            if other is not None:  # the same answer said twice: the rationale ends before the first time
                rationale = _clean_rationale(head[: earlier.start()])
                break
    return Parsed(rationale, label, raw, label is not None, reason)


def _same(a: str, b: str, task: str) -> bool:
    if task == "math":
        from mentor.tasks.arithmetic import numbers_match

        return numbers_match(a, b)
    return a == b


@dataclass
class ParseSummary:
    """How a batch of completions parsed: counts per failure reason and a few examples of each,
    so a distillation report can show what was dropped and why."""

    total: int
    ok: int
    failed: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[dict]] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.ok / self.total if self.total else 0.0

    def to_dict(self) -> dict:
        return {"total": self.total, "ok": self.ok, "rate": self.rate, "failed": dict(self.failed), "examples": self.examples}

    def __str__(self) -> str:
        lines = [f"parsed {self.ok}/{self.total} completions ({100 * self.rate:.1f}%)"]
        for reason, n in sorted(self.failed.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {n:5d}  {reason}")
            for ex in self.examples.get(reason, []):
                lines.append(f"         #{ex['index']}: {ex['excerpt']!r}")
        return "\n".join(lines)


def summarize_parses(
    results: Iterable[Parsed],
    completions: Sequence[str] | None = None,
    max_examples: int = 3,
    excerpt_chars: int = 160,
) -> ParseSummary:
    """Count ok/failed parses by reason, keeping up to ``max_examples`` per reason (the end of
    the completion's kept part, where parsing went wrong, when ``completions`` are given)."""
    results = list(results)
    failed: Counter[str] = Counter()
    examples: dict[str, list[dict]] = {}
    for i, p in enumerate(results):
        if p.ok:
            continue
        failed[p.reason] += 1
        bucket = examples.setdefault(p.reason, [])
        if len(bucket) < max_examples:
            source = cut_runon(completions[i]) if completions is not None else (p.rationale + " " + p.raw_answer)
            bucket.append({"index": i, "raw_answer": p.raw_answer, "excerpt": _excerpt(source, excerpt_chars)})
    ok = sum(1 for p in results if p.ok)
    return ParseSummary(total=len(results), ok=ok, failed=dict(failed), examples=examples)


def _excerpt(text: str, chars: int) -> str:
    """The start and the end of a text, cut at words: where an answer went wrong is usually in one
    of them, and a cut from the middle of a word hides which."""
    text = " ".join(text.split())
    if len(text) <= chars:
        return text
    half = chars // 2
    head = text[:half].rsplit(" ", 1)[0]
    tail = text[-half:].split(" ", 1)[-1]
    return f"{head} ... {tail}"
