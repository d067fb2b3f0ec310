"""Safe evaluation of math answers.

Teachers answer math word problems with an arithmetic expression ("(10 * 45)", "84 / 2 = 42"),
money ("$1,200"), a number with its unit ("12 apples", "45 km/h") or LaTeX ("\\frac{3}{4}"). The
exact value is computed with Python's ``ast`` restricted to numbers and + - * / // % **, never
``eval``, and bounded so a hostile or runaway expression ("9 ** 9 ** 9") cannot hang the machine.
"""

from __future__ import annotations

import ast
import math
import re
from fractions import Fraction

from mentor.tasks.answer_text import strip_answer
from mentor.tasks.reasons import (
    REASON_EMPTY_ANSWER,
    REASON_MULTIPLE,
    REASON_NOT_EVALUABLE,
    REASON_TRUNCATED,
)

_MAX_EXPR_CHARS = 400
_MAX_BITS = 4096
_BINOPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow)
# Numbers include hex ("0x3b300") and exponents ("1.2e-5"), which would otherwise read as a number and a unit.
_TOKEN = re.compile(
    r"\s*(?:(0[xX][0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)|([A-Za-z][A-Za-z'\-]*)|(\*\*|//|[-+*/%()=]))"
)
# Units a number can be "per" ("$12/hour"); after a unit word any word is ("45 km/hr").
_PER_UNITS = {"h", "hr", "hrs", "hour", "day", "week", "month", "year", "min", "minute", "s", "sec", "second",
              "kg", "lb", "item", "person", "each", "unit", "piece"}
# Letters that name an unknown, not a unit: "4x" is four times x, not 4.
_VARIABLES = {"x", "y", "z", "n"}
# Words that scale the number before them ("2 thousand" is 2000, "$50k" 50000) rather than name its unit.
_SCALES = {"dozen": 12, "hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9, "trillion": 10**12}
# Scales written as a letter count only attached to the number ("$50k", "50K"); "300 K" could be kelvins.
_ATTACHED_SCALES = {"k": 1000, "bn": 10**9}
# "$5M", "2.5B": million and billion in finance, metres and bytes elsewhere; never guessed.
_AMBIGUOUS_SCALES = {"M", "B"}  # (a lowercase "100m" is metres or minutes, a unit)
# Words that make the number before them a part, not an amount: "2 thirds", "5 eighths".
_FRACTION_WORDS = re.compile(r"(?:halfs?|halves|thirds?|fourths?|fifths?|sixths?|sevenths?|eighths?|ninths?|tenths?|"
                             r"hundredths?|thousandths?|millionths?|dozens)", re.IGNORECASE)
# Words that do so only when more words follow: "3 times the pages", "42 - 3 of which are red", "3
# quarters of the cake" (as the last word they are the unit counted: "6 times", "12 quarters").
_PART_WORDS = re.compile(r"(?:of|times|quarters?)", re.IGNORECASE)


class _NotEvaluable(Exception):
    """Why an expression was refused; `evaluate_math` turns it into a ValueError with a reason."""


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
    kinds: list[str] = []  # what came before each operator, to tell "km/h" from "10 / x"
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            if expr[pos:].strip() == "":
                break
            raise _NotEvaluable(f"unexpected character {expr[pos]!r}")
        attached = not m.group(0)[:1].isspace()
        pos = m.end()
        num, word, op = m.groups()
        if num is not None:
            if prev in ("num", "unit", ")"):
                raise _NotEvaluable("two numbers without an operator")
            out.append(num)
            prev = "num"
        elif word is not None:
            if prev == "/" and (kinds[-1] == "unit" or (kinds[-1] == "num" and word.lower() in _PER_UNITS)):
                out.pop()  # "20 km/h", "$12/hour": a rate's unit, not a division
                prev = "unit"
                continue
            scale = _SCALES.get(word.lower()) or (_ATTACHED_SCALES.get(word.lower()) if attached else None)
            if scale is not None and prev == "num":  # "2 thousand" is 2000, not 2 of a unit
                out[-1] = f"({out[-1]} * {scale})"
                continue
            if prev == "num" and word in _AMBIGUOUS_SCALES and attached:
                raise _NotEvaluable(f"{word!r} after a number: a scale or a unit")
            if prev in ("num", "unit", ")") and word not in _VARIABLES:  # "12 apples", "(1 + 1 / 2) cups"
                # "3 more than Tom", "2 degrees lower than at noon": an amount relative to another
                more_words = re.search(r"[A-Za-z]", expr[pos:]) is not None
                if word.lower() == "than" or (prev == "num" and (_FRACTION_WORDS.fullmatch(word)
                                                                 or (_PART_WORDS.fullmatch(word) and more_words))):
                    raise _NotEvaluable(f"{word!r} after a number: not a unit")
                prev = "unit"
                continue
            raise _NotEvaluable(f"unknown {word!r}")
        else:
            kinds.append(prev)
            out.append(op)
            prev = ")" if op == ")" else op
    return " ".join(out)


# LaTeX a math answer may be written in ("\\frac{3}{4}", "\\$1{,}200", "12\\text{ cm}"), as plain arithmetic.
_LATEX_SUBS = (
    (re.compile(r"\\(?:text|textrm|textbf|mathrm|mathbf|operatorname)\s*\{([^{}]*)\}"), r" \1 "),
    (re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}"), r"((\1) / (\2))"),
    (re.compile(r"\\[dt]?frac\s*(\d)\s*(\d)"), r"((\1) / (\2))"),  # "\frac14", TeX shorthand
    (re.compile(r"\\(?:cdot|times)(?![A-Za-z])"), "*"),
    (re.compile(r"\\div(?![A-Za-z])"), "/"),
    (re.compile(r"\\(?:left|right)(?![A-Za-z])|\\[,!;: ]|\\q?quad(?![A-Za-z])"), ""),
    (re.compile(r"\{,\}"), ","),
    (re.compile(r"\\([$%])"), r"\1"),
)


def _latex_to_plain(s: str) -> str:
    if "\\" not in s and "{" not in s:
        return s
    for _ in range(4):  # nested \frac{\frac{..}{..}}{..} from the inside out
        for pattern, repl in _LATEX_SUBS:
            s = pattern.sub(repl, s)
    return s.replace("{", "(").replace("}", ")")  # grouping braces: "2^{10}"


def plain_math(text: str) -> str:
    """``text`` as plain arithmetic, the way `evaluate_math` reads it (LaTeX, currency and
    thousands separators gone)."""
    return _prepare_math(text)


def _prepare_math(text: str) -> str:
    """Plain ASCII arithmetic: math signs as Python operators, no currency, thousands separators,
    percent or degree signs, unit exponents ("m^2", "cm³") or LaTeX; number words as digits when
    the answer has no digit (a number written both ways is read from its digits)."""
    s = _latex_to_plain(text.strip())
    s = s.replace("×", "*").replace("·", "*").replace("÷", "/").replace("−", "-").replace("–", "-")
    s = re.sub(r"(?<=[A-Za-z])\s*(?:\^|\*\*)\s*[23]\b|(?<=[A-Za-z])[²³]", "", s)  # "12 m^2" is 12
    s = s.replace("^", "**")
    s = re.sub(r"\s*°(?:\s*[CF]\b)?|\*\*\s*\\circ", " ", s)  # degrees, "90^\circ"
    s = re.sub(r"[$€£¥]", "", s)
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)  # thousands separators
    s = re.sub(r"%(?!\s*[\d(.])", "", s)  # a percent sign, not the modulo operator
    s = re.sub(r"(?<![\d.])(\d+)\s+(\d+)\s*/\s*(\d+)(?![\d.])", r"(\1 + \2 / \3)", s)  # "1 1/2 cups"
    if not re.search(r"\d", s):  # an answer in words alone: "sixty-two dollars", "one hundred and five"
        s = _number_words(s)
    return s.strip()


# After the number, unit words only: "one of them", "two thirds", "three quarters", "one more" are not amounts.
_AMOUNT_IN_WORDS = re.compile(r"-?\d+(?:\.\d+)?(?:\s+[A-Za-z]+){0,3}\s*\.?")
_NOT_UNITS = re.compile(r"\b(?:of|more|less|fewer|than|times|and|or|halfs?|halves|thirds?|quarters?|fourths?|fifths?|"
                        r"sixths?|sevenths?|eighths?|ninths?|tenths?|hundredths?|thousandths?|dozens?|millionths?)\b",
                        re.IGNORECASE)


def _number_words(text: str) -> str:
    """A number written in words as digits ("sixty-two dollars" -> "62 dollars", with text2num),
    where the words say one amount; anything else (ordinals, fractions, "one of them") is left as
    words, which the evaluator refuses."""
    from text_to_num import alpha2digit

    digits = alpha2digit(text, "en", threshold=0)
    if _AMOUNT_IN_WORDS.fullmatch(digits.strip()) and not _NOT_UNITS.search(digits) \
            and not re.search(r"\d(?:st|nd|rd|th)\b", digits):
        return digits
    return text


# "5–7", "5-7 days", "2023-10-05": a range or a date, which reads as a subtraction ("12 - 5" stays one).
_RANGE = re.compile(r"\d\s*–\s*\d|\b\d{4}-\d{1,2}-\d{1,2}\b|(?<![\d.])\d+(?:\.\d+)?-\d+(?:\.\d+)?\s*[A-Za-z]")
# "x = 24", "Allen's age = 143": a name for the value before it (not "7x = 14", which is an equation).
_NAMED_VALUE = re.compile(r"^[A-Za-z][A-Za-z' ]{0,40}?\s*=(?!=)\s*")
# "3/8 or 0.375": one value written two ways (different values are two answers).
_ALTERNATIVES = re.compile(r"\s*,?\s+or,?\s+", re.IGNORECASE)


def evaluate_math(text: str) -> Fraction:
    """Exact value of an answer such as "(10 * 45)", "$1,200", "12 apples" or "84 / 2 = 42".

    Uses Python's ``ast`` restricted to numbers and + - * / // % ** with parentheses, never
    ``eval``. Raises ValueError whose message starts with the failure reason.
    """
    if "=" not in text and _RANGE.search(text):
        raise ValueError(f"{REASON_NOT_EVALUABLE}: a range or a date, not one number")
    s = _prepare_math(text)
    if not s:
        raise ValueError(REASON_EMPTY_ANSWER)
    if len(s) > _MAX_EXPR_CHARS:
        raise ValueError(f"{REASON_NOT_EVALUABLE}: too long")
    alternatives = _ALTERNATIVES.split(s)
    if len(alternatives) > 1:
        values = [_evaluate_prepared(a) for a in alternatives]
        if any(not _close(v, values[0], 1e-6) for v in values[1:]):
            raise ValueError(REASON_MULTIPLE)
        return values[0]
    return _evaluate_prepared(s)


def _evaluate_prepared(s: str) -> Fraction:
    """`evaluate_math` on text `_prepare_math` has already cleaned."""
    s = _NAMED_VALUE.sub("", s, count=1)
    if not s:
        raise ValueError(REASON_EMPTY_ANSWER)
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


def format_number(value: Fraction | float) -> str:
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
        return float(evaluate_math(strip_answer(str(text))))
    except (ValueError, OverflowError):
        return None


def numbers_match(a: object, b: object, rel_tol: float = 1e-4) -> bool:
    """Whether two answers are the same number, within ``rel_tol`` so "3.333333" equals 10/3."""
    x, y = parse_number(a), parse_number(b)
    if x is None or y is None:
        return False
    return math.isclose(x, y, rel_tol=rel_tol, abs_tol=1e-9)
