"""Turn a teacher's raw chain-of-thought completion into (rationale, label).

Distilling step-by-step trains the student on the teacher's rationale *and* label, so both must be
clean: big teachers keep writing after their answer (invented "Q: ... A: ..." follow-ups, repeated
few-shot blocks, text cut off mid-sentence), and the answer comes in many shapes ("The answer is
(10 * 45).", "Answer: neutral", "(d) canada", "#### 42", "$1,200"). A wrong label silently taught
to a student is worse than a dropped example, so anything not clearly parseable comes back with
``ok=False`` and a short, fixed ``reason`` that batches can be grouped by (see `summarize_parses`).
"""

from __future__ import annotations

import ast
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Iterable, Sequence

from mentor.errors import MentorError

TASKS = ("math", "choice", "nli", "classify", "extract")

# Fixed failure reasons: batch reports group by these, so keep them short and stable.
REASON_EMPTY = "empty completion"
REASON_NO_ANSWER = "no answer sentence"
REASON_EMPTY_ANSWER = "empty answer"
REASON_TRUNCATED = "answer truncated"
REASON_MULTIPLE = "multiple answers"
REASON_NOT_EVALUABLE = "expression not evaluable"
REASON_NOT_IN_LABELS = "label not in label set"
REASON_CHOICE_CONFLICT = "letter and option text disagree"

NLI_LABELS = ("entailment", "neutral", "contradiction")


@dataclass(frozen=True)
class Parsed:
    """One parsed completion; ``label`` is normalised for the task and set only when ``ok``."""

    rationale: str
    label: str | None
    raw_answer: str
    ok: bool
    reason: str = ""


# --------------------------------------------------------------------------------------------
# Cutting run-on continuations
# --------------------------------------------------------------------------------------------

# A new invented question: at a line start, or inline right after a sentence end.
_RUNON = re.compile(
    r"(?:^|(?<=[.!?)\]])[ \t]+)[ \t]*(?:Q|Question|Problem)[ \t]*[:：]",
    re.MULTILINE,
)
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
_QUOTES = "\"'“”‘’`*"


# Field labels of the prompt inputs (see mentor.distill.prompts); lines made only of these before a
# "Question:" are the teacher echoing its own input, not an invented follow-up.
_INPUT_FIELD = re.compile(r"^[ \t]*(?:Context|Passage|Premise|Hypothesis|Text)[ \t]*:", re.IGNORECASE)


def cut_runon(text: str) -> str:
    """The completion up to the first invented follow-up question. A "Q:" at the very start, or a
    "Question:" after nothing but echoed input fields ("Context: ..."), repeats the prompt's own
    question and is kept; the answer turn after it is found by its "A:"."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    for m in _RUNON.finditer(text):
        before = text[: m.start()].strip()
        if before and not all(_INPUT_FIELD.match(line) for line in before.split("\n") if line.strip()):
            return text[: m.start()]
    return text


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
            if nxt == "" or nxt.isspace():
                if ch != "." or not spans or not _is_abbreviation(text, start, i):
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


def _find_answer(head: str, spans: bool = False) -> tuple[re.Match[str] | None, int, bool]:
    """The earliest answer marker in ``head`` with where its answer ends and whether it is whole."""
    found = [m for m in (p.search(head) for p in (_ANSWER_SENTENCE, _ANSWER_COLON, _HASHES)) if m]
    if not found:
        return None, 0, True
    m = min(found, key=lambda x: x.start())
    end, balanced = _answer_end(head, m.end(), spans)
    return m, end, balanced


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


def _strip_answer(raw: str) -> str:
    """Answer text without wrapping quotes/markdown emphasis and trailing sentence punctuation."""
    s = raw.strip()
    for _ in range(3):  # e.g. '**"Paris".**'
        s = s.strip().rstrip(";:,!").strip()
        if s.endswith(".") and not re.search(r"\b(?:[A-Za-z]\.){2,}$", s):  # keep "D.C."
            s = s[:-1].rstrip()
        if len(s) >= 2 and s[0] in _QUOTES and s[-1] in _QUOTES:
            s = s[1:-1]
    return s.strip()


# --------------------------------------------------------------------------------------------
# Safe arithmetic (math)
# --------------------------------------------------------------------------------------------

_MAX_EXPR_CHARS = 400
_MAX_BITS = 4096
_BINOPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow)
_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d*)?|\.\d+)|([A-Za-z][A-Za-z'\-]*)|(\*\*|//|[-+*/%()=]))")


_SCALES = {"dozen": 12, "hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9, "trillion": 10**12}


class _NotEvaluable(Exception):
    pass


def _eval_node(node: ast.AST) -> Fraction:
    """Exact value of an arithmetic AST using only numbers, + - * / // % ** and unary signs."""
    if isinstance(node, ast.Expression):
        return _eval_node(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return Fraction(repr(node.value)) if isinstance(node.value, float) else Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        v = _eval_node(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and isinstance(node.op, _BINOPS):
        a, b = _eval_node(node.left), _eval_node(node.right)
        op = node.op
        if isinstance(op, ast.Add):
            r = a + b
        elif isinstance(op, ast.Sub):
            r = a - b
        elif isinstance(op, ast.Mult):
            r = a * b
        elif b == 0:
            raise _NotEvaluable("division by zero")
        elif isinstance(op, ast.Div):
            r = a / b
        elif isinstance(op, ast.FloorDiv):
            r = Fraction(a // b)
        elif isinstance(op, ast.Mod):
            r = a % b
        else:  # Pow, bounded so "9 ** 9 ** 9" cannot hang the machine
            if b.denominator == 1 and abs(b) <= 64:
                if a == 0 and b < 0:
                    raise _NotEvaluable("division by zero")
                r = a ** int(b)
            elif a >= 0 and abs(b) <= 64:
                r = Fraction(float(a) ** float(b))
            else:
                raise _NotEvaluable("power out of range")
        if r.numerator.bit_length() > _MAX_BITS or r.denominator.bit_length() > _MAX_BITS:
            raise _NotEvaluable("number too large")
        return r
    raise _NotEvaluable(f"not arithmetic: {type(node).__name__}")


def _strip_units(expr: str) -> str:
    """Drop unit words that directly follow a number ("12 apples", "8 action figures + 10
    cabinets"); any other word is an unknown ("some", "x") and makes the expression unevaluable."""
    out: list[str] = []
    pos = 0
    prev = ""  # kind of the previous kept token: "num", "unit", "op", "("/")"
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            if expr[pos:].strip() == "":
                break
            raise _NotEvaluable(f"unexpected character {expr[pos]!r}")
        pos = m.end()
        num, word, op = m.groups()
        if num is not None:
            if prev in ("num", "unit", ")"):
                raise _NotEvaluable("two numbers without an operator")
            out.append(num)
            prev = "num"
        elif word is not None:
            scale = _SCALES.get(word.lower())
            if scale is not None and prev == "num":  # "2 thousand" is 2000, not 2 of a unit
                out[-1] = f"({out[-1]} * {scale})"
                continue
            if prev in ("num", "unit"):
                prev = "unit"
                continue
            raise _NotEvaluable(f"unknown {word!r}")
        else:
            out.append(op)
            prev = ")" if op == ")" else op
    return " ".join(out)


def _prepare_math(text: str) -> str:
    s = text.strip()
    s = s.replace("×", "*").replace("÷", "/").replace("−", "-").replace("–", "-").replace("^", "**")
    s = re.sub(r"[$€£¥]", "", s)
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)  # thousands separators
    s = re.sub(r"%(?!\s*[\d(.])", "", s)  # a percent sign, not the modulo operator
    return s.strip()


def evaluate_math(text: str) -> Fraction:
    """Exact value of an answer such as "(10 * 45)", "$1,200", "12 apples" or "84 / 2 = 42".

    Uses Python's ``ast`` restricted to numbers and + - * / // % ** with parentheses, never
    ``eval``. Raises ValueError whose message starts with the failure reason.
    """
    s = _prepare_math(text)
    if not s:
        raise ValueError(REASON_EMPTY_ANSWER)
    if len(s) > _MAX_EXPR_CHARS:
        raise ValueError(f"{REASON_NOT_EVALUABLE}: too long")
    if re.search(r"\band\b|;|,", s):
        raise ValueError(REASON_MULTIPLE)
    if s.count("(") != s.count(")"):
        raise ValueError(REASON_TRUNCATED if s.count("(") > s.count(")") else REASON_NOT_EVALUABLE)
    values = []
    try:
        for part in _strip_units(s).split("="):
            part = re.sub(r"(?<![\d.])0+(?=\d)", "", part).strip()  # "07" is a SyntaxError in Python
            if not part:
                raise _NotEvaluable("empty side of '='")
            values.append(_eval_node(ast.parse(part, mode="eval")))
    except (_NotEvaluable, SyntaxError, ValueError, TypeError, OverflowError, RecursionError, MemoryError) as e:
        raise ValueError(f"{REASON_NOT_EVALUABLE}: {e}") from None
    if any(not _close(v, values[0], 1e-6) for v in values[1:]):
        raise ValueError(f"{REASON_NOT_EVALUABLE}: the two sides of '=' differ")
    return values[-1]


def _close(a: Fraction | float, b: Fraction | float, rel_tol: float) -> bool:
    return math.isclose(float(a), float(b), rel_tol=rel_tol, abs_tol=1e-9)


def format_number(value: Fraction | float | int) -> str:
    """Canonical number string: "450", "2.5", "3.333333" (6 decimals at most, no "-0", no ".0")."""
    if isinstance(value, Fraction) and value.denominator == 1:
        return str(value.numerator)
    x = float(value)
    if not math.isfinite(x):
        return str(x)
    if x == int(x) and abs(x) < 1e15:
        return str(int(x))
    if x != 0 and abs(x) < 1e-3:
        return f"{x:.6g}"
    s = f"{round(x, 6):.6f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def parse_number(text: object) -> float | None:
    """The value of a numeric answer ("42", "$1,200", "2.5 hours", "(84 / 2)"), or None."""
    if text is None:
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    try:
        return float(evaluate_math(_strip_answer(str(text))))
    except (ValueError, OverflowError):
        return None


def numbers_match(a: object, b: object, rel_tol: float = 1e-4) -> bool:
    """Whether two answers are the same number, within ``rel_tol`` so "3.333333" equals 10/3."""
    x, y = parse_number(a), parse_number(b)
    if x is None or y is None:
        return False
    return math.isclose(x, y, rel_tol=rel_tol, abs_tol=1e-9)


# --------------------------------------------------------------------------------------------
# Label normalisation per task
# --------------------------------------------------------------------------------------------

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
    s = s.lower().replace("_", " ")
    s = re.sub(r"\s+", " ", s).strip().strip(_QUOTES).strip(" .!?,;:")
    return re.sub(r"^(?:the|a|an) ", "", s)


def _match_label(candidate: str, labels: Sequence[str]) -> str | None:
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
    hit = _match_label(ans, labels)
    if hit is not None:
        return hit, ""
    # "yes, because ..." / "neutral (the premise says nothing about ...)": a label, then an aside.
    m = re.match(r"^(.+?)\s*(?:[,;:(\u2014]|\s-\s|\s(?:because|since|as)\b)", ans.strip())
    if m:
        hit = _match_label(m.group(1), labels)
        if hit is not None:
            return hit, ""
    return None, REASON_NOT_IN_LABELS


_LETTER_FORMS = (
    re.compile(r"^(?:(?:option|choice)\s*)?\(([a-z])\)\s*(.*)$", re.IGNORECASE | re.DOTALL),
    re.compile(r"^(?:(?:option|choice)\s*)?([a-z])\s*[).:]\s*(.*)$", re.IGNORECASE | re.DOTALL),
    re.compile(r"^(?:option|choice)\s+([a-z])\b\s*(.*)$", re.IGNORECASE | re.DOTALL),
    re.compile(r"^([a-z])()$", re.IGNORECASE),
)


def _normalise_choice(ans: str, choices: Sequence[str] | None) -> tuple[str | None, str]:
    """The canonical option text for a letter ("(d)", "D)"), letter plus text or option text alone;
    the lowercase letter when no ``choices`` are given."""
    normed = [_norm_text(c) for c in choices] if choices else []
    text = ans.strip()
    if choices and _norm_text(text) in normed:  # whole answer is an option (even a one-letter one)
        return choices[normed.index(_norm_text(text))], ""
    for form in _LETTER_FORMS:
        m = form.match(text)
        if not m:
            continue
        letter, rest = m.group(1).lower(), _norm_text(m.group(2) or "")
        if not choices:
            return letter, ""
        idx = ord(letter) - ord("a")
        if idx >= len(choices):
            return None, REASON_NOT_IN_LABELS
        if rest and rest != normed[idx] and rest in normed:
            return None, REASON_CHOICE_CONFLICT
        return choices[idx], ""
    return None, REASON_NOT_IN_LABELS


def normalize_answer(
    answer: str,
    task: str,
    choices: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
) -> tuple[str | None, str]:
    """Normalise one answer text for ``task``: (label, "") or (None, reason)."""
    _check_task(task, labels)
    ans = _strip_answer(answer)
    if not ans:
        return None, REASON_EMPTY_ANSWER
    if task == "math":
        try:
            return format_number(evaluate_math(ans)), ""
        except ValueError as e:
            return None, str(e).split(":")[0]
    if task == "choice":
        return _normalise_choice(ans, choices)
    if task in ("nli", "classify"):
        return _normalise_label(ans, labels or NLI_LABELS)
    return ans, ""  # extract: the span itself


def _check_task(task: str, labels: Sequence[str] | None) -> None:
    if task not in TASKS:
        raise MentorError(f"unknown task {task!r}; expected one of: {', '.join(TASKS)}")
    if task == "classify" and not labels:
        raise MentorError("task 'classify' needs its label set: pass labels=[...]")


# --------------------------------------------------------------------------------------------
# Completions
# --------------------------------------------------------------------------------------------

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
    if task in ("nli", "classify") and _match_label(text, labels or NLI_LABELS) is None:
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
    _check_task(task, labels)
    if not text or not text.strip():
        return Parsed("", None, "", False, REASON_EMPTY)
    head = cut_runon(text)
    m, end, balanced = _find_answer(head, spans=task == "extract")
    if m is None:
        label, raw = _bare_answer(head, task, choices, labels)
        if label is not None:
            return Parsed("", label, raw, True)
        return Parsed(_clean_rationale(head), None, "", False, REASON_NO_ANSWER)
    rationale = _clean_rationale(head[: m.start()])
    raw = head[m.end() : end].strip()
    if not balanced:
        return Parsed(rationale, None, raw, False, REASON_TRUNCATED)
    label, reason = normalize_answer(raw, task, choices, labels)
    return Parsed(rationale, label, raw, label is not None, reason)


# --------------------------------------------------------------------------------------------
# Batch summary
# --------------------------------------------------------------------------------------------


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
            source = " ".join(source.split())
            bucket.append({"index": i, "raw_answer": p.raw_answer, "excerpt": source[-excerpt_chars:]})
    ok = sum(1 for p in results if p.ok)
    return ParseSummary(total=len(results), ok=ok, failed=dict(failed), examples=examples)
