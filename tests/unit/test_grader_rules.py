"""What a grader definition may say, decided before anything is graded: how deep a multi grader's
formula may nest."""

from __future__ import annotations

import pytest

from mentor.errors import MentorError
from mentor.graders import parse_grader
from mentor.graders.formula import MAX_DEPTH, Formula


@pytest.mark.parametrize("formula", ["a" + "+a" * 999, "-" * 1990 + "a", "min(" * 70 + "a" + ")" * 70])
def test_a_formula_nested_too_deep_is_refused_naming_the_field_not_a_recursion_error(formula):
    grader = {"type": "multi", "name": "m", "calculate_output": formula,
              "graders": {"a": {"type": "string_check", "name": "a", "input": "x", "reference": "x", "operation": "eq"}}}
    with pytest.raises(MentorError, match=f"field 'calculate_output': the formula is nested deeper than {MAX_DEPTH}"):
        parse_grader(grader, where="grader")


def test_a_formula_within_the_limits_still_computes():
    assert Formula("a" + "+a" * (MAX_DEPTH - 2)).evaluate({"a": 0.5}) == pytest.approx(0.5 * (MAX_DEPTH - 1))
    assert Formula("-" * 10 + "a").evaluate({"a": 2}) == 2.0
    assert Formula("(" * 100 + "a" + ")" * 100).evaluate({"a": 3}) == 3.0  # parentheses make no nodes
