"""Cutting run-on completions: big teachers keep writing after their answer, inventing follow-up
"Q: ... A: ..." exchanges or repeating few-shot blocks. Everything from the first invented question
on is dropped before the answer is looked for, so an invented answer is never taken for the real one.
"""

from __future__ import annotations

import re

# A new invented question: at a line start, or inline right after a sentence end.
_RUNON = re.compile(
    r"(?:^|(?<=[.!?)\]])[ \t]+)[ \t]*(?:Q|Question|Problem)[ \t]*[:：]",
    re.MULTILINE,
)

# Field labels of the prompt inputs (see mentor.tasks.prompts); lines made only of these before a
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
