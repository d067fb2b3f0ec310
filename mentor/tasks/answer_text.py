"""Answer text as written, before any task reads it.

Teachers wrap answers in quotes or markdown emphasis and end them with sentence punctuation
('**"Paris".**'); arithmetic, label matching and completion parsing all strip that the same way.
"""

from __future__ import annotations

import re

QUOTES = "\"'“”‘’`*"


def strip_answer(raw: str) -> str:
    """Answer text without wrapping quotes/markdown emphasis and trailing sentence punctuation."""
    s = raw.strip()
    for _ in range(3):  # e.g. '**"Paris".**'
        s = s.strip().rstrip(";:,!").strip()
        if s.endswith(".") and not re.search(r"\b(?:[A-Za-z]\.){2,}$", s):  # keep "D.C."
            s = s[:-1].rstrip()
        if len(s) >= 2 and s[0] in QUOTES and s[-1] in QUOTES:
            s = s[1:-1]
    return s.strip()
