"""What a grader definition may say, decided before anything is graded: the servers a score_model's
judge may be sent to (the rule teachers follow), how deep a multi grader's formula may nest, and
the shapes of a judge's messages OpenAI's graders take."""

from __future__ import annotations

import json

import pytest

from mentor.errors import MentorError
from mentor.graders import GraderSettings, parse_grader
from mentor.graders.formula import MAX_DEPTH, Formula
from mentor.server.executors import worker_env
from mentor.server.settings import ServerSettings, grader_settings
from mentor.teachers.allowed import is_allowed


def judge(model: str, content="Rate {{sample.output_text}}") -> dict:
    return {"type": "score_model", "name": "j", "model": model, "input": [{"role": "user", "content": content}]}


def test_a_judge_on_loopback_is_refused_unless_listed(monkeypatch):
    """Loopback was always allowed: any port on the machine (a database, an admin API) got the answers
    and $OPENAI_API_KEY, and the reply's first 200 characters came back in the errors."""
    monkeypatch.delenv("MENTOR_GRADERS_ALLOWED_JUDGE_URLS", raising=False)
    for url in ("http://127.0.0.1:6379/v1", "http://localhost:8000/v1", "http://[::1]:8000/v1"):
        with pytest.raises(MentorError, match=rf"field 'model': the judge server {url.replace('[', '.').replace(']', '.')}"
                                              " is not allowed"):
            parse_grader(judge(f"m@{url}"), where="g.json")
    listed = GraderSettings(allowed_judge_urls=["http://127.0.0.1:8001/v1/"])
    parse_grader(judge("m@http://127.0.0.1:8001/v1"), settings=listed)
    for other in ("http://127.0.0.1:8002/v1", "http://127.0.0.1:8001/v2", "http://127.0.0.1:8001/v1/../admin",
                  "http://u:p@127.0.0.1:8001/v1", "http://127.0.0.1:8001/v1?x=1"):
        with pytest.raises(MentorError, match="field 'model'"):
            parse_grader(judge(f"m@{other}"), settings=listed)
    # outside a server the list is MENTOR_GRADERS_ALLOWED_JUDGE_URLS; a multi grader's judges are held to it too
    monkeypatch.setenv("MENTOR_GRADERS_ALLOWED_JUDGE_URLS", json.dumps(["http://127.0.0.1:8001/v1"]))
    parse_grader(judge("m@http://127.0.0.1:8001/v1"))
    multi = {"type": "multi", "name": "m", "calculate_output": "a", "graders": {"a": judge("m@http://127.0.0.1:6379/v1")}}
    with pytest.raises(MentorError, match="field 'graders.a.model': the judge server"):
        parse_grader(multi)


def test_teachers_and_judges_follow_one_list_fed_from_the_servers_settings(monkeypatch):
    monkeypatch.setenv("MENTOR_GRADERS_ALLOWED_JUDGE_URLS", json.dumps(["http://127.0.0.1:6379/v1"]))
    server = ServerSettings(allowed_teacher_urls=["http://127.0.0.1:9/v1"])
    rules = grader_settings(server)  # the server's list, not the environment's
    assert rules.allowed_judge_urls == ["http://127.0.0.1:9/v1"]
    parse_grader(judge("m@http://127.0.0.1:9/v1"), settings=rules)
    with pytest.raises(MentorError, match="not allowed"):
        parse_grader(judge("m@http://127.0.0.1:6379/v1"), settings=rules)
    assert is_allowed("http://127.0.0.1:9/v1/", server.allowed_teacher_urls)
    assert is_allowed("HTTP://127.0.0.1:9/v1", server.allowed_teacher_urls)
    assert not is_allowed("http://127.0.0.1:6379/v1", server.allowed_teacher_urls)
    # a worker is told the server's list, even an empty one, so its own environment never widens it
    assert json.loads(worker_env(server)["MENTOR_GRADERS_ALLOWED_JUDGE_URLS"]) == ["http://127.0.0.1:9/v1"]
    assert json.loads(worker_env(ServerSettings())["MENTOR_GRADERS_ALLOWED_JUDGE_URLS"]) == []


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


def test_a_judge_message_may_be_one_text_part_as_openais_input_content_is():
    rules = GraderSettings(allowed_judge_urls=["http://judge.example/v1"])
    spec = parse_grader(judge("m@http://judge.example/v1", {"type": "input_text", "text": "Rate {{item.x}}"}),
                        settings=rules)
    assert spec.input[0].text() == "Rate {{item.x}}" and spec.templates() == [("input.0.content", "Rate {{item.x}}")]
    with pytest.raises(MentorError, match="field 'input.0.content': a 'input_image' part"):
        parse_grader(judge("m@http://judge.example/v1", {"type": "input_image", "image_url": "http://x/y.png"}),
                     settings=rules)
    for wrong in (5, [5]):
        with pytest.raises(MentorError, match=r"field 'input.0.content': write a text"):
            parse_grader(judge("m@http://judge.example/v1", wrong), settings=rules)
