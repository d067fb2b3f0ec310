"""Parsing a teacher's chain-of-thought completion into (rationale, answer).

Distilling step-by-step trains the student on the teacher's rationale *and* label, so both must be
clean: the completion is cut at the first invented follow-up (`runon`), the answer sentence is found
in its many shapes ("The answer is (10 * 45).", "Therefore, the answer (arabic numerals) is 18.",
"Answer: neutral", "#### 42", "\\boxed{42}", "<answer>42</answer>") and the answer is normalised for
the task (`labels`); tests/data/cot_corpus measures this on published chain-of-thought texts.
Anything not clearly parseable comes back with ``ok=False`` and a fixed ``reason`` (`reasons`) that
batch reports group by (see `summarize_parses`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import NamedTuple

from mentor.tasks import LABEL_TASKS
from mentor.tasks.answer_text import strip_answer
from mentor.tasks.arithmetic import plain_math
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

# "So", "Therefore," and zero-shot CoT's "Therefore, among A through E," belong to the answer statement.
_CONNECTOR = (r"(?:(?:so|therefore|thus|hence|then)\b[ \t]*,?[ \t]*)?"
              r"(?:among[ \t]+[A-Z][ \t]+through[ \t]+[A-Z][ \t]*,[ \t]*)?")
_ANSWER_SENTENCE = re.compile(
    _CONNECTOR
    + r"\b(?:the[ \t]+|my[ \t]+|our[ \t]+)?"
    # "the correct option is (c)" names the answer too, but "option"/"choice" only with such an
    # adjective: "the first option is a shelf" is reasoning.
    r"(?:(?:final|correct|right|best)[ \t]+(?:option|choice)|(?:(?:final|correct|right|best)[ \t]+)?answer)[ \t]+"
    # Zero-shot CoT's answer prompt names the answer's form: "the answer (arabic numerals) is 18".
    r"(?:\([^()\n]{1,40}\)[ \t]+)?"
    r"(?:is|would[ \t]+be|will[ \t]+be|should[ \t]+be|must[ \t]+be)\b[ \t]*[:：]?[ \t]*",
    re.IGNORECASE,
)
# "Answer: 42", also as a markdown heading or in bold ("**Final Answer:** 42", "### Answer: 42").
_ANSWER_COLON = re.compile(
    r"(?:^|(?<=[.!?])[ \t]+)(?:[#*_]+[ \t]*)?" + _CONNECTOR
    + r"(?:the[ \t]+)?(?:final[ \t]+)?answer(?:\*\*|__)?[ \t]*[:：][ \t]*(?:\*\*|__)?[ \t]*",
    re.IGNORECASE | re.MULTILINE,
)
_HASHES = re.compile(r"^[ \t]*####[ \t]*", re.MULTILINE)
# MATH/Minerva-style solutions box their answer ("... = \boxed{42}$."); the answer is the braces' content.
_BOXED = re.compile(r"\\(?:boxed|fbox)[ \t]*\{")
# reasoning-gym's and R1-style prompts ask for "<answer>42</answer>".
_ANSWER_TAG = re.compile(r"<answer>", re.IGNORECASE)
_ANSWER_TAG_CLOSE = re.compile(r"</answer>", re.IGNORECASE)
_THINK_TAG = re.compile(r"</?think>[ \t]*\n?", re.IGNORECASE)
_TRAILING_CONNECTOR = re.compile(r"\b(?:so|therefore|thus|hence|then)[\s,:]*\Z", re.IGNORECASE)
# A "Final Answer" heading left dangling before a boxed answer on the next line.
_TRAILING_HEADING = re.compile(r"(?:#+[ \t]*|\*\*)?(?:final[ \t]+)?answer(?:\*\*)?[ \t]*[:：]?(?:\*\*)?\Z", re.IGNORECASE)

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


def _brace_end(text: str, start: int) -> tuple[int, bool]:
    """Where the braces opened just before ``start`` close: (index of "}", True), or (len, False)."""
    depth = 1
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i, True
    return len(text), False


class _Statement(NamedTuple):
    """An answer marker, where its statement starts (before any heading it replaced, or for a boxed
    answer at its sentence), where its answer ends and whether the answer is whole."""

    m: re.Match[str]
    start: int
    end: int
    balanced: bool


def _sentence_start(head: str, i: int) -> int:
    while i > 0 and head[i - 1] != "\n" and not (head[i - 1] in ".!?" and head[i].isspace()):
        i -= 1
    return i


def _statements(head: str, spans: bool = False) -> list[_Statement]:
    patterns = (_ANSWER_SENTENCE, _ANSWER_COLON, _HASHES, _BOXED, _ANSWER_TAG)
    found = sorted((m for p in patterns for m in p.finditer(head)), key=lambda x: x.start())
    out: list[_Statement] = []
    last_end, headings, next_line = -1, 0, False
    for m in found:
        start = m.start()
        if m.start() < last_end:
            prev = out[-1].m
            # "Final Answer: The final answer is $42$.", "The answer is $\boxed{42}$": a marker that
            # opens the previous marker's answer makes that one a heading, and so does one on the
            # line a dangling "the correct answer is" was taken to answer on; otherwise it is part
            # of the answer ("the answer is: answer: 5"). Two headings at most, so that degenerate
            # text ("the answer is the answer is ...") is not scanned again for every marker.
            if (prev.re not in (_ANSWER_SENTENCE, _ANSWER_COLON, _HASHES) or headings == 2 or m.start() < prev.end()
                    or (head[prev.end() : m.start()].strip(" \t\n*_#$") and not next_line)):
                continue
            start = out.pop().start
            headings += 1
        else:
            headings = 0
        next_line = False
        if m.re is _BOXED:  # "So the total is $\boxed{42}$.": the whole sentence is the statement
            start = min(start, _sentence_start(head, m.start()))
            end, balanced = _brace_end(head, m.end())
        elif m.re is _ANSWER_TAG:
            close = _ANSWER_TAG_CLOSE.search(head, m.end())
            # A teacher stopped at "</answer>" as its stop sequence leaves the tag open.
            end, balanced = (close.start(), True) if close else (len(head), True)
        else:
            answer_start = m.end()
            line_end = head.find("\n", answer_start)
            if line_end != -1 and not head[answer_start:line_end].strip():
                # "Therefore, the answer (Yes or No) is:\n\nYes": the answer is on the next line.
                answer_start = len(head) - len(head[line_end:].lstrip())
                next_line = True
            end, balanced = _answer_end(head, answer_start, spans)
        out.append(_Statement(m, start, end, balanced))
        last_end = max(end, m.end())
    return out


def find_answers(head: str, spans: bool = False) -> list[tuple[re.Match[str], int, bool]]:
    """Every answer marker in ``head``, in order, with where its answer ends and whether it is whole."""
    return [(s.m, s.end, s.balanced) for s in _statements(head, spans)]


def find_answer(head: str, spans: bool = False) -> tuple[re.Match[str] | None, int, bool]:
    """The earliest answer marker in ``head`` with where its answer ends and whether it is whole."""
    found = find_answers(head, spans)
    return found[0] if found else (None, 0, True)


def _clean_rationale(text: str) -> str:
    """Rationale text: after the last echoed "A:" turn, without a dangling "So"/"Therefore"."""
    text = _THINK_TAG.sub("", text)
    turns = list(_ANSWER_TURN.finditer(text))
    if turns:
        text = text[turns[-1].end() :]
    text = text.strip()
    for _ in range(3):  # "So, therefore" at most; a loop keeps the regex linear on long texts
        m = _TRAILING_CONNECTOR.search(text)
        if not m:
            break
        text = text[: m.start()].rstrip(" \t\n,:")
    return _strip_opener(text).strip()


def _strip_opener(text: str) -> str:
    """The rationale without what opened the boxed answer after it: a math delimiter
    ("so the total is $", "\\[") and a "**Final Answer**" heading line before it."""
    t = text.rstrip()
    for _ in range(2):  # "**Final Answer**\n\\[" has both
        if t.endswith(("\\[", "\\(")):
            t = t[:-2].rstrip()
        elif t.endswith("$$") and t.count("$$") % 2 == 1:  # an unclosed display-math opener
            t = t[:-2].rstrip()
        elif t.endswith("$") and (len(t) == 1 or t[-2].isspace()):  # "is $\boxed{5}$": an opener, not "$x$"
            t = t[:-1].rstrip()
        line_start = t.rfind("\n") + 1
        if _TRAILING_HEADING.match(t, line_start):
            t = t[:line_start].rstrip()
    return t


# No "=" and at most two unit words: "16 - 7 = 9 peaches." is working, not a stated answer.
_MATH_CHAR = r"[\s$€£\d.,()+\-*/×÷%]"
_BARE_MATH = re.compile(
    rf"^{_MATH_CHAR}*(?:0[xX][0-9a-fA-F]+|\d(?:[eE][-+]?\d+)?){_MATH_CHAR}*(?:\s*[A-Za-z]+){{0,2}}\s*\.?$"
)


def _bare_answer(head: str, task: str, choices, labels) -> tuple[str | None, str]:
    """A completion that is nothing but the answer ("42", "(d) canada", "neutral"); None when it
    has anything else, since picking an answer out of free text would be a guess."""
    text = _clean_rationale(head)
    if not text or "\n" in text or task == "extract" or len(text) > 80:
        return None, ""
    if task == "math" and not _BARE_MATH.match(plain_math(strip_answer(text))):  # also "$\\frac{3}{4}$"
        return None, ""
    if task in LABEL_TASKS and match_label(text, labels or NLI_LABELS) is None:
        return None, ""
    label, _ = normalize_answer(text, task, choices, labels)
    return (label, text) if label is not None else (None, "")


def _whole_sentences(text: str) -> str:
    """``text`` up to its last sentence or line end: what a completion cut off by the token limit
    surely said whole ("... The answer is 12" may have been "120")."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return text[: ends[-1]] if ends else ""


_SENTENCE_END = re.compile(r"[.!?][\"'”’)\]*_$]*(?=\s)|\n")
# "If the answer is yes, ...", "Is the answer is 5?": an answer weighed, not given.
_HYPOTHETICAL = re.compile(r"\b(?:if|whether|suppose|assume|assuming|unless)(?:\s+that)?\s*\Z", re.IGNORECASE)


def parse_completion(
    text: str,
    task: str,
    choices: list[str] | None = None,
    labels: list[str] | None = None,
    cut_off: bool = False,
    fields: Sequence[str] = (),
) -> Parsed:
    """Split a teacher completion (the text written after the prompt's "A:") into rationale and
    normalised label, cutting everything after the answer sentence.

    ``choices`` are the option texts of a multiple-choice question (letters map to them in order);
    ``labels`` the label set for "nli" (default entailment/neutral/contradiction) and "classify".
    ``cut_off``: generation stopped at the token limit, so only whole sentences are read.
    ``fields``: the input field labels of the prompt's format beyond the built-in ones
    (`INPUT_FIELD_LABELS`), e.g. a user's own few-shot format's "Review": a line opening with one
    after the answer starts a run-on.
    """
    check_labels(task, labels)
    if not text or not text.strip():
        return Parsed("", None, "", False, REASON_EMPTY)
    head = cut_repeated_input(cut_runon(text), fields,
                              reads=lambda answer: normalize_answer(answer, task, choices, labels)[0] is not None)
    if cut_off and head.rstrip() == text.rstrip():  # the cut is in the answer's part, not in a run-on
        head = _whole_sentences(head)
        if not head.strip():
            return Parsed("", None, "", False, REASON_TRUNCATED)
    lowered = head.lower()
    think_end = lowered.rfind("</think>")
    if think_end == -1 and "<think>" in lowered:  # the thinking never ended: its guesses are no answer
        return Parsed(_clean_rationale(head), None, "", False, f"{REASON_TRUNCATED}: thinking never closed")
    markers = [mk for mk in _statements(head, spans=task == "extract") if not _hypothetical(head, mk)]
    after_thinking = head[think_end + len("</think>") :] if think_end != -1 else head
    if think_end != -1:
        # Reasoning models try answers while thinking aloud ("<think>... so 5? No, wait ...</think>"):
        # only what follows the thinking counts, and it counts alone when it says anything.
        markers = [mk for mk in markers if mk.m.start() > think_end] or ([] if after_thinking.strip() else markers)
    if not markers:
        label, raw = _bare_answer(after_thinking, task, choices, labels)
        if label is not None:  # after thinking aloud, the thinking is the rationale
            return Parsed(_clean_rationale(head[:think_end]) if think_end != -1 else "", label, raw, True)
        reason = REASON_TRUNCATED if cut_off else REASON_NO_ANSWER
        return Parsed(_clean_rationale(head), None, "", False, reason)
    # The closing answer statement wins: chain-of-thought often opens by restating what is asked
    # ("The answer must be the place where beavers get their supplies. ... So the answer is (c).").
    # Earlier statements count only to catch a completion that names two different answers.
    m, start, end, balanced = markers[-1]
    rationale = _clean_rationale(head[:start])
    raw = head[m.end() : end].strip()
    if not balanced:
        return Parsed(rationale, None, raw, False, REASON_TRUNCATED)
    label, reason = normalize_answer(raw, task, choices, labels)
    if label is not None:
        for earlier, earlier_start, earlier_end, whole in markers[:-1]:
            other = normalize_answer(head[earlier.end() : earlier_end].strip(), task, choices, labels)[0] if whole else None
            if other is not None and not _same(other, label, task):
                return Parsed(rationale, None, raw, False, f"{REASON_CONFLICTING}: {other!r} and {label!r}")
            if other is not None:  # the same answer said twice: the rationale ends before the first time
                rationale = _clean_rationale(head[:earlier_start])
                break
    return Parsed(rationale, label, raw, label is not None, reason)


# Field labels that open an input in the prompt formats (mentor.tasks.prompts renders "Premise:",
# "Hypothesis:", "Context:", "Question:", "Answer Choices:") and in common few-shot formats. A
# teacher that runs on after its answer often invents the next example in the prompt's own format;
# a line that opens with one of these after an answer starts that run-on.
INPUT_FIELD_LABELS = (
    "Q", "Question", "Problem", "Premise", "Hypothesis", "Context", "Passage", "Text", "Sentence", "Options",
    "Answer Choices", "Choices",
)


@lru_cache(maxsize=64)
def _field_line(fields: tuple[str, ...]) -> re.Pattern[str]:
    names = sorted(set(INPUT_FIELD_LABELS) | set(fields), key=len, reverse=True)  # "Question" before "Q"
    return re.compile(r"^[ \t]*(?:" + "|".join(re.escape(n) for n in names) + r")[ \t]*[:：]", re.MULTILINE)


def cut_repeated_input(head: str, fields: Sequence[str] = (), reads: Callable[[str], bool] | None = None) -> str:
    """``head`` up to the first line that opens an input field ("Premise:", a user format's own
    fields) after an answer was stated: the teacher inventing the next example in the prompt's
    format. Fields before any answer are the teacher echoing or quoting its input and stay, unless
    a whole new input block (two field lines or more) opens a paragraph after the teacher's own
    text. A trailing line that is only the start of a field name ("Pre", cut off by the token limit)
    is no answer and is dropped too.

    ``reads(answer text)``: whether an answer reads as one of the task's (a number, a label, an
    option). Only such an answer ends the example: "The answer must be a place with supplies." opens
    chain-of-thought by restating the question, and a field quoted after it is no run-on."""
    names = tuple(fields)
    field_line = _field_line(names)
    stated: list[int] | None = None
    for m in field_line.finditer(head):
        if stated is None:  # found lazily: most completions have no field line at all
            stated = [s.end for s in _statements(head) if s.balanced and not _hypothetical(head, s)
                      and (reads is None or reads(head[s.m.end() : s.end]))]
        if any(end <= m.start() for end in stated) or _new_example(head, m.start(), field_line):
            head = head[: m.start()]
            break
    return _drop_field_fragment(head, names, reads)


def _new_example(head: str, start: int, field_line: re.Pattern[str]) -> bool:
    """Whether a field line with no answer before it opens an invented example: a paragraph after
    the teacher's own text (reasoning, not echoed input fields) that starts with two field lines or
    more, a whole input block, so whatever answer follows belongs to the invented example. One
    field line there is the teacher quoting its input ("Hypothesis: he plays it. Holding is not
    playing.") and stays."""
    before = head[:start]
    if not before.endswith("\n\n") and not re.search(r"\n[ \t]*\n[ \t]*\Z", before):
        return False
    block = head[start:].split("\n")
    if len(block) < 2 or not field_line.match(block[1]):
        return False
    return any(line.strip() and not field_line.match(line) for line in before.split("\n"))


def _drop_field_fragment(head: str, fields: tuple[str, ...], reads: Callable[[str], bool] | None) -> str:
    """``head`` without a last line that is only the beginning of a field name ("Pre", "Hypoth").
    Three letters at least (a lone "C" may be the answer to "the answer is:"), and never what reads
    as an answer of the task (a label "Pro" is not the start of "Problem:")."""
    body = head.rstrip()
    line_start = body.rfind("\n") + 1
    fragment = body[line_start:].strip()
    if (line_start and len(fragment) >= 3
            and any(name.startswith(fragment) and name != fragment for name in (*INPUT_FIELD_LABELS, *fields))
            and not (reads is not None and reads(fragment))):
        return body[:line_start]
    return head


def _hypothetical(head: str, statement: _Statement) -> bool:
    """Whether an answer marker is weighed, not stated: "if the answer is yes", "is the answer 5?"."""
    if _HYPOTHETICAL.search(head, _sentence_start(head, statement.m.start()), statement.m.start()):
        return True
    return statement.m.re is _ANSWER_SENTENCE and head[statement.end : statement.end + 1] == "?"


def _same(a: str, b: str, task: str) -> bool:
    if task == "math":
        from mentor.tasks.arithmetic import numbers_match

        return numbers_match(a, b)
    if task == "extract":  # one span written two ways: "s-a-n-n" and "sann", "Marie Curie" and "marie curie"
        return re.sub(r"[\W_]+", "", a.lower()) == re.sub(r"[\W_]+", "", b.lower())
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
