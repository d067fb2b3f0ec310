"""Why a completion or answer could not be read.

Batch reports group failed parses by these strings (see `mentor.tasks.answers.summarize_parses`),
so they are short and fixed; messages that add detail start with one of them.
"""

from __future__ import annotations

REASON_EMPTY = "empty completion"
REASON_NO_ANSWER = "no answer sentence"
REASON_EMPTY_ANSWER = "empty answer"
REASON_TRUNCATED = "answer truncated"
REASON_MULTIPLE = "multiple answers"
REASON_NOT_EVALUABLE = "expression not evaluable"
REASON_NOT_IN_LABELS = "label not in label set"
REASON_CHOICE_CONFLICT = "letter and option text disagree"
REASON_CONFLICTING = "conflicting answers"
