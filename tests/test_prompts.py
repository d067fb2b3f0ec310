"""Few-shot CoT prompts: built-in templates, user shot files, zero-shot fallback, parser pairing."""

from __future__ import annotations

import json

import pytest

from mentor.errors import DataValidationError, MentorError
from mentor.tasks.prompts import (
    BUILTIN_SHOTS,
    ZERO_SHOT_TRIGGER,
    PromptTemplate,
    Shot,
    answer_sentence,
    build_prompt,
    format_choices,
    load_shots,
)

INPUTS = {
    "math": "Sam has 3 bags with 5 apples each. How many apples does he have?",
    "choice": {"question": "What do you drink from?", "choices": ["a cup", "a fork", "a shoe"]},
    "nli": {"premise": "A cat sleeps on a sofa.", "hypothesis": "An animal is resting."},
    "classify": "Terrible food and rude staff.",
    "extract": {"context": "Oslo is the capital of Norway.", "question": "What is the capital of Norway?"},
}


@pytest.mark.parametrize("task", sorted(BUILTIN_SHOTS))
def test_builtin_template_has_shots_and_input(task):
    prompt = build_prompt(INPUTS[task], task=task)
    shots = BUILTIN_SHOTS[task]
    assert len(shots) == 4
    for shot in shots:
        assert f"Q: {shot.input}\nA: {shot.rationale}" in prompt
        assert answer_sentence(task, shot.label) in prompt
    assert prompt.count("Q: ") == 5
    assert prompt.endswith("\nA:")
    assert ZERO_SHOT_TRIGGER not in prompt
    last_q = prompt.rsplit("Q: ", 1)[1]
    for value in INPUTS[task].values() if isinstance(INPUTS[task], dict) else [INPUTS[task]]:
        for part in value if isinstance(value, list) else [value]:
            assert part in last_q


def test_math_uses_the_svamp_answer_style():
    prompt = build_prompt(INPUTS["math"], task="math")
    assert "The answer is (84 / 2)." in prompt
    assert "The answer is ((6 * 8) - 10)." in prompt  # wrapped once, not "(6 * 8) - 10" bare
    assert answer_sentence("math", "(6 * 8)") == "The answer is (6 * 8)."


@pytest.mark.parametrize("task", sorted(BUILTIN_SHOTS))
def test_builtin_shots_parse_back(task):
    """What the teacher imitates must be what the parser reads: each exemplar answer round-trips."""
    template = PromptTemplate.for_task(task)
    for shot in template.shots:
        completion = f" {shot.rationale} {answer_sentence(task, shot.label)}\n\nQ: an invented follow-up\nA: ..."
        choices = None
        if task == "choice":
            options = shot.input.split("Answer Choices: ")[1]
            choices = [o.strip() for o in options.split("(")[1:]]
            choices = [c.split(") ", 1)[1] for c in choices]
        parsed = template.parse(completion, choices=choices)
        assert parsed.ok, (shot, parsed)
        assert parsed.rationale == shot.rationale
        if task == "math":
            assert parsed.label is not None
        elif task == "choice":
            assert parsed.label == shot.label.split(") ", 1)[1]
        else:
            assert parsed.label == shot.label


def test_template_is_reusable_and_parses_teacher_output():
    template = PromptTemplate.for_task("math")
    a, b = template.render("What is 2 + 3?"), template("What is 7 * 6?")
    assert a.rsplit("Q: ", 1)[0] == b.rsplit("Q: ", 1)[0]
    assert a.endswith("Q: What is 2 + 3?\nA:")
    parsed = template.parse(" 7 * 6 = 42. The answer is (7 * 6).\n\nQ: What is 1 + 1?\nA: 2.")
    assert (parsed.ok, parsed.label, parsed.rationale) == (True, "42", "7 * 6 = 42.")


def test_zero_shot_fallback():
    prompt = build_prompt("What is 2 + 3?", task="math", shots=[])
    assert prompt.endswith(f"Q: What is 2 + 3?\nA: {ZERO_SHOT_TRIGGER}")
    assert prompt.count("Q: ") == 1
    assert "The answer is (" in prompt  # the instruction still says how to answer
    assert PromptTemplate.for_task("nli", shots=[]).zero_shot


def test_label_sets_map_or_fall_back_to_zero_shot():
    nli = PromptTemplate.for_task("nli", labels=["yes", "no", "it is not possible to tell"])
    assert [s.label for s in nli.shots] == ["yes", "no", "it is not possible to tell", "yes"]
    assert "using one of: yes, no, it is not possible to tell" in nli.instruction
    assert nli.parse("So the answer is entailment.").label == "yes"
    spam = PromptTemplate.for_task("classify", labels=["spam", "ham"])
    assert spam.zero_shot and "spam, ham" in spam.render("win money now")
    assert PromptTemplate.for_task("classify").labels == ("positive", "negative", "neutral")


def test_structured_inputs():
    assert format_choices("Pick one", ["x", "y"]) == "Pick one\nAnswer Choices: (a) x (b) y"
    with pytest.raises(MentorError, match="hypothesis"):
        build_prompt({"premise": "p"}, task="nli")
    with pytest.raises(MentorError, match="unknown task"):
        build_prompt("x", task="summarize")
    with pytest.raises(MentorError, match="empty input"):
        build_prompt("  ", task="math")


def _write(tmp_path, lines):
    p = tmp_path / "shots.jsonl"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def test_user_shots_file(tmp_path):
    p = _write(
        tmp_path,
        [
            json.dumps({"input": "What is 2 + 2?", "rationale": "Two plus two is 4.", "label": "2 + 2"}),
            "",
            json.dumps({"input_text": "What is 3 * 3?", "rationale": "Three threes make 9", "output_text": 9}),
        ],
    )
    shots = load_shots(p, task="math")
    assert shots == [Shot("What is 2 + 2?", "Two plus two is 4.", "2 + 2"), Shot("What is 3 * 3?", "Three threes make 9", "9")]
    prompt = build_prompt("What is 5 - 1?", task="math", shots=p)
    assert "A: Three threes make 9. The answer is (9).\n\nQ: What is 5 - 1?\nA:" in prompt
    assert "muffins" not in prompt  # user shots replace the built-ins


def test_user_shots_report_every_bad_line(tmp_path):
    p = _write(
        tmp_path,
        [
            json.dumps({"input": "ok", "rationale": "Fine.", "label": "1"}),  # 1: good
            "{not json",  # 2
            json.dumps(["a list"]),  # 3
            json.dumps({"rationale": "No input.", "label": "1"}),  # 4: input missing
            json.dumps({"input": "q", "rationale": "", "label": "1"}),  # 5: empty rationale
            json.dumps({"input": "q", "rationale": "r", "label": ["1"]}),  # 6: label not a string
            json.dumps({"input": "q", "input_text": "q", "rationale": "r", "label": "1"}),  # 7: both names
            json.dumps({"input": "q", "rationale": "It is 4. So the answer is 4.", "label": "4"}),  # 8
            json.dumps({"input": "q", "rationale": "It is x.", "label": "x + 1"}),  # 9: label unparseable
            json.dumps({"input": "q", "rationale": "Easy.\nQ: another one?", "label": "1"}),  # 10
        ],
    )
    with pytest.raises(DataValidationError) as err:
        load_shots(p, task="math")
    got = {(pr.line, pr.field) for pr in err.value.problems}
    assert got == {
        (2, "(line)"),
        (3, "(line)"),
        (4, "input"),
        (5, "rationale"),
        (6, "label"),
        (7, "input"),
        (8, "rationale"),
        (9, "label"),
        (10, "rationale"),
    }
    assert all(pr.file == str(p) for pr in err.value.problems)
    message = str(err.value)
    assert f"{p}:4: field 'input': missing" in message
    assert "9 problem(s)" in message


def test_user_shots_missing_or_empty_file(tmp_path):
    with pytest.raises(MentorError, match="not found"):
        load_shots(tmp_path / "nope.jsonl")
    with pytest.raises(DataValidationError, match="no shots"):
        load_shots(_write(tmp_path, [""]))


def test_user_shots_for_other_tasks(tmp_path):
    nli = _write(tmp_path, [json.dumps({"input": "P / H", "rationale": "It follows.", "label": "Entailed"})])
    assert load_shots(nli, task="nli")[0].label == "Entailed"
    choice = tmp_path / "choice.jsonl"
    choice.write_text(json.dumps({"input": "Q\nAnswer Choices: (a) x (b) y", "rationale": "Because.", "label": "(b) y"}) + "\n")
    assert load_shots(choice, task="choice")[0].label == "(b) y"
