"""Which rows are held out as evaluation data (mentor.data.rows.hold_out): each row once, the same
split every time, refused where it cannot be made."""

import json

import hypothesis
import pytest
from hypothesis import strategies as st

from mentor.data.rows import MAX_HELD_OUT, hold_out
from mentor.errors import MentorError


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(n=st.integers(2, 3000), share=st.floats(0.01, 0.49))
def test_hold_out_splits_rows_once_and_the_same_way_every_time(n, share):
    rows = [{"input_text": f"q{i}", "i": i} for i in range(n)]
    kept, held = hold_out(rows, share)
    assert sorted(r["i"] for r in kept + held) == list(range(n))  # every row exactly once
    assert 1 <= len(held) <= MAX_HELD_OUT and kept
    assert abs(len(held) - min(MAX_HELD_OUT, share * n)) <= 1 or len(held) == 1 or len(kept) == 1
    assert hold_out(rows, share) == (kept, held)  # no seed involved: variants share the split


def test_hold_out_refuses_what_cannot_be_split(tmp_path):
    with pytest.raises(MentorError, match="too few"):
        hold_out([{"input_text": "a"}], 0.1)
    with pytest.raises(MentorError, match="between 0 and 1"):
        hold_out([{"input_text": "a"}, {"input_text": "b"}], 0)
    kept, held = hold_out([{"input_text": str(i), "_line": i} for i in range(10)], 0.2, tmp_path / "v.jsonl")
    assert len(held) == 2 and [json.loads(l) for l in (tmp_path / "v.jsonl").read_text().splitlines()] == \
        [{"input_text": r["input_text"]} for r in held]
