"""Answer text as written, before any task reads it.

Teachers wrap answers in quotes or markdown emphasis and end them with sentence punctuation
('**"Paris".**'), or in LaTeX ("$\\boxed{\\text{(C)}}$"); arithmetic, label matching and
completion parsing all strip that the same way.
"""

from __future__ import annotations

import re

QUOTES = "\"'“”‘’`*"
_DOUBLE_QUOTES = frozenset('"“”')

# LaTeX that wraps a whole answer: math delimiters and boxing/text commands.
_MATH_DELIMITERS = (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$"))
_WRAPPER = re.compile(r"^\\(?:boxed|fbox|text|textbf|textrm|mathrm|mathbf)\s*\{")


def _unwrap_latex(s: str) -> str:
    """``s`` without LaTeX wrapped around all of it: "$42$", "\\(x\\)", "\\boxed{42}", "\\text{(C)}"."""
    for left, right in _MATH_DELIMITERS:
        inner = s[len(left) : -len(right)] if len(s) > len(left) + len(right) else ""
        if s.startswith(left) and s.endswith(right) and inner.strip() and left not in inner:
            return inner.strip()
    m = _WRAPPER.match(s)
    if m and s.endswith("}") and _closing_brace(s, m.end()) == len(s) - 1:
        return s[m.end() : -1].strip()
    return s


def _closing_brace(s: str, start: int) -> int:
    """Index of the "}" closing the brace opened just before ``start``, or -1."""
    depth = 1
    for i in range(start, len(s)):
        depth += {"{": 1, "}": -1}.get(s[i], 0)
        if depth == 0:
            return i
    return -1


def strip_answer(raw: str) -> str:
    """Answer text without wrapping quotes/markdown emphasis/LaTeX and trailing sentence punctuation."""
    s = raw.strip()
    for _ in range(4):  # e.g. '**"Paris".**', "$\\boxed{42}$."
        s = s.strip().rstrip(";:,!").strip()
        if s.endswith(".") and not re.search(r"\b(?:[A-Za-z]\.){2,}$", s):  # keep "D.C."
            s = s[:-1].rstrip()
        if len(s) >= 2 and s[0] in QUOTES and s[-1] in QUOTES and not (
            s[0] in _DOUBLE_QUOTES and _DOUBLE_QUOTES.intersection(s[1:-1])
        ):
            s = s[1:-1]  # '"Paris"', not '"Paris" or "Lyon"' (two answers, kept whole to be refused)
        s = _unwrap_latex(s.strip())
        s = re.sub(r"^\*+\s*|\s*\*+$", "", s)  # bold left open by the marker: "**Answer:** 42**"
    return s.strip()
