"""Completion parsing: unit cases per answer form and task, then all 1,000 real PaLM completions."""

from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mentor.errors import MentorError
from mentor.tasks.answers import parse_completion, summarize_parses
from mentor.tasks.arithmetic import (
    evaluate_math,
    format_number,
    numbers_match,
    parse_number,
)
from mentor.tasks.labels import normalize_answer
from mentor.tasks.reasons import (
    REASON_CHOICE_CONFLICT,
    REASON_CONFLICTING,
    REASON_EMPTY,
    REASON_EMPTY_ANSWER,
    REASON_MULTIPLE,
    REASON_NO_ANSWER,
    REASON_NOT_EVALUABLE,
    REASON_NOT_IN_LABELS,
    REASON_TRUNCATED,
)
from mentor.tasks.runon import cut_runon

# ----------------------------------------------------------------------------------------------
# Answer forms
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, label, raw, rationale",
    [
        ("5 + 6 = 11. So the answer is 11.", "11", "11", "5 + 6 = 11."),
        ("84 / 2 = 42. The answer is (84 / 2).", "42", "(84 / 2)", "84 / 2 = 42."),
        ("There are 45 beds. The answer is (10 * 45).\n\nQ: more? A: 3", "450", "(10 * 45)", "There are 45 beds."),
        ("half of 5 is 2.5. the answer is 2.5", "2.5", "2.5", "half of 5 is 2.5."),
        ("She saved money. Therefore, the answer is $1,200.", "1200", "$1,200", "She saved money."),
        ("She picks 12 apples. Thus the answer is 12 apples.", "12", "12 apples", "She picks 12 apples."),
        ("Natalia sold 72 clips.\n#### 72", "72", "72", "Natalia sold 72 clips."),
        ("It took 3 hours.\nAnswer: 3", "3", "3", "It took 3 hours."),
        ("So, the final answer is: 7.", "7", "7", ""),
        ("The answer is **42**.", "42", "**42**", ""),
        ("The answer is 84 / 2 = 42.", "42", "84 / 2 = 42", ""),
        ("The answer is (16 * 17) * 4.\n\nQ: next", "1088", "(16 * 17) * 4", ""),
        ("The answer is (10 - (3 + 6)).", "1", "(10 - (3 + 6))", ""),
        ("The answer is (-7 - 12).", "-19", "(-7 - 12)", ""),
        ("The answer is 2 thousand dollars.", "2000", "2 thousand dollars", ""),
        ("The answer is 50%.", "50", "50%", ""),
        ("The answer is 0.1 + 0.2.", "0.3", "0.1 + 0.2", ""),  # exact arithmetic, no 0.30000000000000004
        ("The answer is (8 action figures + 10 cabinets) * 4 shelves.", "72", None, ""),
        ("42", "42", "42", ""),  # a bare answer is an answer, not a guess
        ("A: 6 * 7 = 42. The answer is 42.", "42", "42", "6 * 7 = 42."),
        ("The answer is twelve.", "12", "twelve", ""),  # number words, where the answer has no digit
        ("The answer (words) is sixty-two dollars.", "62", "sixty-two dollars", ""),
        ("So the answer is one hundred and five.", "105", None, ""),
    ],
)
def test_math_answer_forms(text, label, raw, rationale):
    p = parse_completion(text, "math")
    assert p.ok, p
    assert p.label == label
    if raw is not None:
        assert p.raw_answer == raw
    assert p.rationale == rationale


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", REASON_EMPTY),
        ("   \n ", REASON_EMPTY),
        ("So Jake has 16 - 7 = 9 peaches.", REASON_NO_ANSWER),  # working, but no stated answer
        ("5 + 6 = 11.\n\nQ: What is 2 + 2?\nA: The answer is 4.", REASON_NO_ANSWER),  # answer only in run-on
        ("The answer is (2 * x).", REASON_NOT_EVALUABLE),
        ("The answer is (some - 8).", REASON_NOT_EVALUABLE),
        ("The answer is 7x = 14.", REASON_NOT_EVALUABLE),
        ("The answer is 1 / 0.", REASON_NOT_EVALUABLE),
        ("The answer is 9 ** 9 ** 9.", REASON_NOT_EVALUABLE),
        ('The answer is __import__("os").system("true").', REASON_NOT_EVALUABLE),
        ("The answer is (lambda: 1)().", REASON_NOT_EVALUABLE),
        ("The answer is 7 because 3 + 4.", REASON_NOT_EVALUABLE),
        ("The answer is none.", REASON_NOT_EVALUABLE),
        ("The answer is two thirds.", REASON_NOT_EVALUABLE),  # number words that are not one amount
        ("The answer is one half.", REASON_NOT_EVALUABLE),
        ("The answer is three quarters.", REASON_NOT_EVALUABLE),
        ("The answer is the twenty-first.", REASON_NOT_EVALUABLE),
        ("The answer is one more.", REASON_NOT_EVALUABLE),
        ("One of them.", REASON_NO_ANSWER),
        # words after a number that change the amount are not its unit
        ("The answer is 2 thirds.", REASON_NOT_EVALUABLE),
        ("The answer is 3 times the number of pages.", REASON_NOT_EVALUABLE),
        ("The answer is 42 - 3 of which are red.", REASON_NOT_EVALUABLE),
        ("The answer is 3 more than Tom has.", REASON_NOT_EVALUABLE),
        ("The answer is 2 degrees lower than at noon.", REASON_NOT_EVALUABLE),
        ("The answer is $5M.", REASON_NOT_EVALUABLE),  # million, or metres: never guessed
        ("The answer is $2.5B.", REASON_NOT_EVALUABLE),
        # ranges and dates are not subtractions
        ("The answer is 5-7 days.", REASON_NOT_EVALUABLE),
        ("The answer is 5–7.", REASON_NOT_EVALUABLE),
        ("The answer is 2023-10-05.", REASON_NOT_EVALUABLE),
        ("The answer is (175, 5).", REASON_MULTIPLE),
        ("The answer is (8 / 4) and (6 / 4).", REASON_MULTIPLE),
        ("The answer is ((491 - 21", REASON_TRUNCATED),
        ("The answer is .", REASON_EMPTY_ANSWER),
    ],
)
def test_math_unparseable(text, reason):
    p = parse_completion(text, "math")
    assert not p.ok and p.label is None
    assert p.reason == reason


def test_runon_cut_variants():
    assert cut_runon("a. b.\n\nQ: c\nA: d") == "a. b.\n\n"
    assert cut_runon("a. b. Question: c") == "a. b."
    assert cut_runon("a.\nProblem: c") == "a.\n"
    assert cut_runon("Q: echoed question\nA: answer") == "Q: echoed question\nA: answer"
    # The teacher echoed the question, then answered after "A:": the rationale is the answer turn.
    p = parse_completion("Tom has 3 pens.\nHow many?\nA: He has 3. The answer is (3).\n\nQ: x", "math")
    assert (p.rationale, p.label) == ("He has 3.", "3")


def test_echoed_input_fields_are_not_a_runon():
    text = 'Context: Oslo is the capital.\nQuestion: What is the capital?\nA: It says Oslo. So the answer is "Oslo".\n\nQuestion: x'
    p = parse_completion(text, "extract")
    assert (p.label, p.rationale) == ("Oslo", "It says Oslo.")
    # After real rationale text, a "Question:" is an invented follow-up, whatever follows it.
    assert not parse_completion("It is 5.\nQuestion: what now?\nA: The answer is 6.", "math").ok


def test_degenerate_long_completions_stay_fast():
    import time

    for text in ["so " * 20000 + "x", "So, therefore " * 5000, "(1." * 20000, "The answer is " + "(" * 3000 + "1" + ")" * 3000]:
        start = time.perf_counter()
        assert not parse_completion(text, "math").ok
        assert time.perf_counter() - start < 1.0


def test_rationale_drops_dangling_connectors():
    assert parse_completion("It is 4. Therefore\nAnswer: 4", "math").rationale == "It is 4."
    assert parse_completion("It is 4. Hence, the answer is 4.", "math").rationale == "It is 4."


# ----------------------------------------------------------------------------------------------
# Normalisation per task
# ----------------------------------------------------------------------------------------------

CHOICES = ["mexico", "usa", "france", "canada", "peru"]


@pytest.mark.parametrize(
    "text, label",
    [
        ("Maple leaves. So the answer is (d) canada.", "canada"),
        ("So the answer is (d).", "canada"),
        ("So the answer is D).", "canada"),
        ("So the answer is d.", "canada"),
        ("So the answer is option (b).", "usa"),
        ("So the answer is Canada.", "canada"),
        ("(d) canada", "canada"),
        ("Answer: (e) peru", "peru"),
    ],
)
def test_choice(text, label):
    p = parse_completion(text, "choice", choices=CHOICES)
    assert p.ok and p.label == label


def test_choice_failures_and_no_choices():
    assert parse_completion("So the answer is (d) mexico.", "choice", CHOICES).reason == REASON_CHOICE_CONFLICT
    assert parse_completion("So the answer is (f).", "choice", CHOICES).reason == REASON_NOT_IN_LABELS
    assert parse_completion("So the answer is germany.", "choice", CHOICES).reason == REASON_NOT_IN_LABELS
    # Without choices only the letter can be trusted.
    assert parse_completion("So the answer is (C) paris.", "choice").label == "c"
    assert not parse_completion("So the answer is paris.", "choice").ok


@pytest.mark.parametrize(
    "answer, labels, label",
    [
        ("entailment", None, "entailment"),
        ("Entailment", None, "entailment"),
        ("yes", None, "entailment"),
        ("true", None, "entailment"),
        ("no", None, "contradiction"),
        ("False", None, "contradiction"),
        ("maybe", None, "neutral"),
        ("it is not possible to tell", None, "neutral"),
        ("neutral (the premise says nothing about it)", None, "neutral"),
        ("yes, because he sings", None, "entailment"),
        ("no. The premise says they sleep", None, "contradiction"),
        ("B. Because it is", ["A", "B"], "B"),
        ("entailment", ["yes", "no", "it is not possible to tell"], "yes"),
        ("neutral", ["yes", "no", "it is not possible to tell"], "it is not possible to tell"),
        ("contradiction", ["Entailment", "Not_Entailment", "Contradiction"], "Contradiction"),
        ("not entailment", ["entailment", "not_entailment"], "not_entailment"),
    ],
)
def test_nli_labels(answer, labels, label):
    p = parse_completion(f"The premise is clear. So the answer is {answer}.", "nli", labels=labels)
    assert p.ok, p
    assert p.label == label


def test_nli_and_classify_failures():
    assert parse_completion("So the answer is probably.", "nli").reason == REASON_NOT_IN_LABELS
    assert parse_completion("So the answer is no entailment.", "nli").reason == REASON_NOT_IN_LABELS
    assert parse_completion("So the answer is great.", "classify", labels=["positive", "negative"]).reason == REASON_NOT_IN_LABELS
    with pytest.raises(MentorError, match="labels"):
        parse_completion("So the answer is positive.", "classify")
    with pytest.raises(MentorError, match="unknown task"):
        parse_completion("So the answer is 1.", "maths")


def test_classify():
    labels = ["Positive", "Negative", "Neutral"]
    p = parse_completion("The battery died fast. So the answer is negative.", "classify", labels=labels)
    assert (p.ok, p.label, p.rationale) == (True, "Negative", "The battery died fast.")
    assert parse_completion("Positive", "classify", labels=labels).label == "Positive"


@pytest.mark.parametrize(
    "text, span",
    [
        ('The passage names her. So the answer is "Marie Curie".', "Marie Curie"),
        ("So the answer is 'Denver Broncos'.\n\nQ: next", "Denver Broncos"),
        ("So the answer is “the Nile”.", "the Nile"),
        ("So the answer is St. Louis. It is in Missouri.", "St. Louis"),
        ("So the answer is Washington D.C.", "Washington D.C."),
        ("Answer: 1889", "1889"),
    ],
)
def test_extract(text, span):
    p = parse_completion(text, "extract")
    assert p.ok and p.label == span


def test_extract_needs_an_answer_sentence():
    assert parse_completion("Marie Curie", "extract").reason == REASON_NO_ANSWER


def test_numbers():
    assert evaluate_math("(10 * 45)") == 450
    assert evaluate_math("2 ** 10 // 3 % 5") == (2**10 // 3) % 5
    assert evaluate_math("1 / 3") == Fraction(1, 3)
    assert format_number(Fraction(9, 2)) == "4.5"
    assert format_number(Fraction(10, 3)) == "3.333333"
    assert format_number(450.0) == "450"
    assert format_number(-0.0) == "0"
    assert format_number(Fraction(1, 10**6 * 3)) == "3.33333e-07"
    assert parse_number("$1,200.50") == 1200.5
    assert parse_number("twelve") == 12 and parse_number("many") is None and parse_number(None) is None
    assert numbers_match("3.333333", "10/3")
    assert numbers_match("450", "450.00") and numbers_match(2.5, "2.5 hours")
    assert not numbers_match("450", "451") and not numbers_match("x", "x")
    assert numbers_match("1000", "1000.09", rel_tol=1e-4) and not numbers_match("1000", "1001", rel_tol=1e-4)
    assert normalize_answer("(84 / 2)", "math") == ("42", "")


def test_summary():
    texts = ["The answer is 3.", "no answer here", "nothing either", "The answer is (x)."]
    s = summarize_parses([parse_completion(t, "math") for t in texts], texts, max_examples=1)
    assert (s.total, s.ok, s.rate) == (4, 1, 0.25)
    assert s.failed == {REASON_NO_ANSWER: 2, REASON_NOT_EVALUABLE: 1}
    assert [e["index"] for e in s.examples[REASON_NO_ANSWER]] == [1]
    assert s.examples[REASON_NOT_EVALUABLE][0]["raw_answer"] == "(x)"
    assert "parsed 1/4" in str(s) and s.to_dict()["failed"][REASON_NO_ANSWER] == 2


# ----------------------------------------------------------------------------------------------
# Real data: all 1,000 PaLM 540B completions on SVAMP
# ----------------------------------------------------------------------------------------------


def _svamp_dir() -> Path:
    root = os.environ.get("MENTOR_SHARED_DATA")
    base = Path(root) if root else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return base / "svamp-palm"


SVAMP = _svamp_dir()
needs_svamp = pytest.mark.skipif(
    not (SVAMP / "train.jsonl").is_file() or not (SVAMP / "test.jsonl").is_file(),
    reason=f"shared SVAMP data not found at {SVAMP} (set MENTOR_SHARED_DATA to the folder holding svamp-palm/)",
)


@pytest.fixture(scope="module")
def svamp():
    rows = {}
    for split in ("train", "test"):
        with open(SVAMP / f"{split}.jsonl", encoding="utf-8") as f:
            rows[split] = [json.loads(line) for line in f if line.strip()]
    parsed = {k: [parse_completion(r["teacher_completion"], "math") for r in v] for k, v in rows.items()}
    return rows, parsed


@needs_svamp
def test_svamp_all_completions(svamp):
    rows, parsed = svamp
    all_rows = rows["train"] + rows["test"]
    all_parsed = parsed["train"] + parsed["test"]
    assert len(all_parsed) == 1000
    for p in all_parsed:
        assert p.ok == (p.label is not None)
        assert p.ok or p.reason, p
        assert "Q:" not in p.rationale and "\nA:" not in p.rationale
        assert not p.rationale.endswith(("So", "Therefore"))
    summary = summarize_parses(all_parsed, [r["teacher_completion"] for r in all_rows])
    print("\n" + str(summary))
    # Every failure was read by hand: 13 completions loop or stop before any answer sentence,
    # 16 answer with unknowns ("(2 * x)", "(some - 8)"), 7 give two numbers ("(175, 5)",
    # "(8 / 4) and (6 / 4)"), 3 are cut off inside the expression. None can be parsed without
    # guessing, so the parse rate is 96.1%, not the 99% hoped for.
    assert summary.failed == {
        REASON_NOT_EVALUABLE: 16,
        REASON_NO_ANSWER: 13,
        REASON_MULTIPLE: 7,
        REASON_TRUNCATED: 3,
    }
    assert summary.rate >= 0.96


@needs_svamp
def test_svamp_teacher_accuracy(svamp):
    rows, parsed = svamp
    pairs = list(zip(rows["train"] + rows["test"], parsed["train"] + parsed["test"]))
    correct = sum(p.ok and numbers_match(p.label, r["output_text"]) for r, p in pairs)
    acc = correct / len(pairs)
    acc_parsed = correct / sum(p.ok for _, p in pairs)
    print(f"\nteacher accuracy: {acc:.3f} of all, {acc_parsed:.3f} of parsed")
    assert 0.70 <= acc <= 0.80
    assert correct == 752


# (split, line index, label or None, failure reason, how the rationale ends), all read by hand.
HAND_CHECKED = [
    # clean; the run-on is itself cut off mid-expression "(120 /"
    ("train", 0, "42", "", "rounds. 84 / 2 = 42."),
    # the teacher computes the wrong thing (7 * 36 pencils, not crayons): label 252, gold 210
    ("train", 1, "252", "", "7 * 30 crayons. 7 * 36 is 252."),
    # wrong reasoning (22 + 8 caps and wrappers): label 2, gold 6
    ("train", 3, "2", "", "So he had 30 - 28 = 2 bottle caps at first."),
    # expression continues after the closing parenthesis: "(16 * 17) * 4"
    ("train", 5, "1088", "", "So there are 272 * 4 = 1088 pieces of junk mail."),
    # two answers joined by "and"
    ("train", 6, None, REASON_MULTIPLE, "28 - 15 = 13 cakes."),
    # nested parentheses and a negative result: "(75 - (82 + 19))" = -26, gold 56
    ("train", 41, "-26", "", "So 82 + 19 = 101 were hiding. 75 - 101 = -26."),
    # unknown in the answer
    ("train", 54, None, REASON_NOT_EVALUABLE, "There are 12 chairs in total. So 2 * x = 12."),
    # the rationale floors (2 + 5 = 7) but the expression says ((10 / 4) + (20 / 4)) = 7.5
    ("train", 139, "7.5", "", "20 / 4 = 5 groups of marbles. 2 + 5 = 7."),
    # "some bags" is an unknown, not a unit
    ("train", 122, None, REASON_NOT_EVALUABLE, "So some bags + 4 bags = 8 bags."),
    # truncated inside the answer expression
    ("train", 174, None, REASON_TRUNCATED, "So he has 1181 * 275 = 322,775 dollars left."),
    # unary minus inside parentheses: "(17 + (-18))"
    ("train", 245, "-1", "", "So she cut 17 + (-18) = 17 - 18 = -1 roses."),
    # truncated with nested parentheses: "((415 - 309) - (41"
    ("train", 319, None, REASON_TRUNCATED, "415 - 356 = 59 Ace cards. 106 - 59 = 47."),
    # degenerate loop, never answers, cut off mid-sentence
    ("train", 459, None, REASON_NO_ANSWER, "32 sacks were not harvested. 3"),
    # leading negative number: "(-7 - 12)"
    ("train", 473, "-19", "", "So Jake has -7 - 12 = -19 peaches."),
    # two numbers separated by a comma
    ("train", 538, None, REASON_MULTIPLE, "He still has 175 tomatoes."),
    # repeating decimal: 2 / 3, rounded to 6 places
    ("train", 573, "0.666667", "", "So he could buy 2 / 3 = 2 / 3 candy bars."),
    # thousands separator inside the expression: (95 * 118) + (11,210 / 84)
    ("train", 636, "11343.452381", "", "So each classroom has 11,210 / 84 = 133.5 students."),
    # unit words inside the expression: ((8 action figures + 10 cabinets) * 4 shelves)
    ("train", 746, "72", "", "= 32 action figures and 40 cabinets."),
    # "So 11 / 3 = 3.3333..." runs on in 3s until cut off, with no answer sentence
    ("train", 748, None, REASON_NO_ANSWER, "= 3." + "3" * 100),
    # the teacher echoed the question, then answered after "A:"
    ("train", 787, "13", "", "Now there are 20. So she cut 20 - 7 = 13 roses."),
    # right working but no answer sentence before the run-on "Q:"
    ("train", 796, None, REASON_NO_ANSWER, "So Jake has 16 - 7 = 9 peaches."),
    ("test", 0, "450", "", "So they planted 10 * 45 seeds. 10 * 45 is 450."),
    ("test", 1, "1", "", "then he received 10 - (3 + 6) = 1 emails in the evening."),
    ("test", 4, "3", "", "She needs 7 cups of salt."),
    ("test", 24, None, REASON_MULTIPLE, "8 / 4 = 2 eggs and 6 / 4 = 1.5 marbles."),
    # the rationale says 2.08; the expression 439 / 211 is 2.080569 (gold 2)
    ("test", 128, "2.080569", "", "So the amount made per day was 439 / 211 = 2.08 dollars."),
    # exact arithmetic: (193 / 15) * 660 is exactly 8492, though the rationale says 8368
    ("test", 143, "8492", "", "12.8 pages per day for 660 days is 12.8 * 660 = 8368 pages."),
    ("test", 145, None, REASON_NO_ANSWER, "So Ed lost more than 19 marbles."),
    ("test", 187, "-94", "", "19 - 70 is -51. 131 - 88 is 43."),
]


@needs_svamp
@pytest.mark.parametrize("split, index, label, reason, rationale_end", HAND_CHECKED)
def test_svamp_hand_checked(svamp, split, index, label, reason, rationale_end):
    p = svamp[1][split][index]
    assert p.label == label, p
    assert p.ok == (label is not None)
    assert p.reason == reason
    assert p.rationale.endswith(rationale_end), p.rationale[-120:]
    assert "Q:" not in p.rationale


def test_the_closing_answer_statement_wins_over_a_restated_question():
    """Chain-of-thought in the CoT paper's exemplar style opens by restating what is asked."""
    text = ("The answer must be the place where beavers get their supplies. Of the above choices, only wooded "
            "areas have the trees beavers need. So the answer is (c) wooded area.")
    parsed = parse_completion(text, "choice", choices=["river", "zoo", "wooded area", "desert"])
    assert parsed.ok and parsed.label == "wooded area" and parsed.raw_answer == "(c) wooded area"
    assert parsed.rationale.startswith("The answer must be the place")
    repeated = parse_completion("So the answer is (d) canada. Therefore, the answer is (d).", "choice",
                                choices=["a", "b", "c", "canada"])
    assert repeated.ok and repeated.label == "canada" and repeated.rationale == ""


def test_a_completion_naming_two_different_answers_is_refused():
    parsed = parse_completion("The answer is 5. Then again, 2 + 2 = 4, so the answer is 4.", "math")
    assert not parsed.ok and parsed.reason.startswith("conflicting answers")
    assert parse_completion("The answer is 4. Check: 2 + 2 = 4. So the answer is 4.0.", "math").ok


def test_failure_excerpts_show_the_start_and_the_end():
    from mentor.tasks.answers import summarize_parses

    text = "The answer must be the place where beavers live. " + "filler words " * 30 + "The end"
    summary = summarize_parses([parse_completion(text, "choice", choices=["x", "y"])], [text], excerpt_chars=80)
    excerpt = next(iter(summary.examples.values()))[0]["excerpt"]
    assert excerpt.startswith("The answer must be") and excerpt.endswith("The end") and " ... " in excerpt


# ----------------------------------------------------------------------------------------------
# Common chain-of-thought styles beyond "The answer is X." (the corpus in tests/data/cot_corpus
# measures them on real texts; these pin each rule)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, label",
    [
        # zero-shot CoT (Kojima et al. 2022): the answer prompt names the answer's form
        ("9 * 2 = 18.\nTherefore, the answer (arabic numerals) is 18.", "18"),
        # the answer on the line after the marker
        ("56 in total.\nTherefore, the answer (arabic numerals) is: \n\n56", "56"),
        ("Answer:\n2,000", "2000"),
        # MATH, Minerva, boxed
        ("The difference between 36 and 26 is $\\boxed{10}$.", "10"),
        ("So $\\frac{a}{b}=\\boxed{-\\frac{2}{3}}.$\nFinal Answer: The final answer is $-\\frac{2}{3}$. I hope it is correct.", "-0.666667"),
        ("**Final Answer**\n\\[\n\\boxed{18}\n\\]", "18"),
        ("Final Answer: The final answer is $\\$1,\\!250$. I hope it is correct.", "1250"),
        # markdown answer lines and tags
        ("**Answer:** 72 km/h", "72"),
        ("### Final Answer: 238", "238"),
        ("<think>\n16 - 7 = 9, so the answer is 8? No: 9 * 2 = 18.\n</think>\n<answer>18</answer>", "18"),
        ("<think>84 / 2 = 42</think>\n\n42", "42"),
        # numbers: rates, exponents, hex, mixed numbers, named values, one value written two ways
        ("The answer is 20 km/h.", "20"),
        ("The answer is $12/hour.", "12"),
        ("The answer is 4.5e-5 m.", "4.5e-05"),
        ("The answer is 0x3b300.", "242432"),
        ("The answer is 1 1/2 cups.", "1.5"),
        ("The answer is 90°.", "90"),
        ("The answer is x = 24.", "24"),
        ("The answer is 3/8 or 0.375.", "0.375"),
        ("The answer is $50k.", "50000"),
    ],
)
def test_common_cot_styles(text, label):
    p = parse_completion(text, "math")
    assert p.ok, p
    assert p.label == label


@pytest.mark.parametrize(
    "text, reason",
    [
        ("The answer is 4x.", REASON_NOT_EVALUABLE),  # four times x, not 4 of a unit
        ("The answer is 4/5 or 80%.", REASON_MULTIPLE),  # two values
        ("Computing. $\\boxed{12", REASON_TRUNCATED),
        ("<think>It is 12.</think><answer>12</answer> Actually, the correct answer is 15.", "conflicting answers: '12' and '15'"),
    ],
)
def test_common_cot_styles_refused(text, reason):
    p = parse_completion(text, "math")
    assert not p.ok and p.reason == reason


@pytest.mark.parametrize(
    "text, label",
    [
        ("Therefore, among A through E, the answer is B, melted.", "melted"),
        ("So the answer is melted (B).", "melted"),
        ("The correct option is (C).", "ice cream"),
        ("The best answer is C) ice cream.", "ice cream"),
        ("Answer: B", "melted"),
        ("So the answer is $\\boxed{\\text{(E)}}$.", "sculptured"),
    ],
)
def test_choice_styles(text, label):
    p = parse_completion(text, "choice", choices=["carved", "melted", "ice cream", "antarctica", "sculptured"])
    assert p.ok and p.label == label, p


@pytest.mark.parametrize("answer", ["A, B, D, or E", "(A) or (B)", "(A), (B), (C), or (D)", "B, carved", "probably (A)"])
def test_choice_naming_several_options_is_refused(answer):
    p = parse_completion(f"Hard to say. So the answer is {answer}.", "choice", choices=["carved", "melted", "ice cream", "antarctica", "sculptured"])
    assert not p.ok, p


def test_boxed_rationale_ends_before_the_boxed_sentence():
    p = parse_completion("Half of 84 is 42. So each round is worth $\\boxed{42}$ points.", "math")
    assert (p.label, p.rationale) == ("42", "Half of 84 is 42.")
    p = parse_completion("Half of 84 is 42.\n\n**Final Answer**\n\\[\n\\boxed{42}\n\\]", "math")
    assert (p.label, p.rationale) == ("42", "Half of 84 is 42.")


def test_one_span_written_two_ways_is_not_a_conflict():
    p = parse_completion('So the final answer would be "s-a-n-n". Therefore, the answer is "sann".', "extract")
    assert p.ok and p.label == "sann"
    assert not parse_completion('So the answer is "y z e e". Therefore, the answer is "yzeet".', "extract").ok


def test_degenerate_markers_stay_fast():
    import time

    for text in ["the answer is " * 20000, "\\boxed{" * 20000, "<answer>" * 20000, "Final Answer: The final answer is " * 5000,
                 "</think>" * 20000, "1 or " * 20000, "\\frac{" * 10000]:
        start = time.perf_counter()
        parse_completion(text, "math")
        assert time.perf_counter() - start < 2.0, text[:30]


@pytest.mark.parametrize(
    "text, label",
    [
        ("The answer is 13 bags of wheat.", "13"),  # "of" after a unit is part of it
        ("The answer is 8 more cups of flour.", "8"),
        ("The answer is 1 1/2 bottles of mustard.", "1.5"),
        ("The answer is $50k.", "50000"),
        ("The answer is 300 K.", "300"),  # a detached K is a unit (kelvins), not a thousand
        ("The answer is 20-4.", "16"),
        ("The answer is 20 – 4 = 16.", "16"),
        ("The answer is 6 times.", "6"),  # the unit counted, as the last word
        ("So the answer is 12 quarters.", "12"),
        ("The answer is 100m.", "100"),  # metres: only a capital M or B is refused as a scale
        ("If we add 5 and 7, the answer is 12.", "12"),  # a condition earlier in the sentence is no hedge
        ("Assuming a 30-day month, the answer is 300.", "300"),
    ],
)
def test_math_amounts_with_words_after_them(text, label):
    p = parse_completion(text, "math")
    assert (p.ok, p.label) == (True, label), p


def test_a_completion_cut_off_by_the_token_limit_is_read_only_to_its_last_whole_sentence():
    # "The answer is 12" may have been "The answer is 120"
    cut = parse_completion("3 boxes of 40 pencils. The answer is 12", "math", cut_off=True)
    assert not cut.ok and cut.reason == REASON_TRUNCATED
    assert parse_completion("3 boxes of 40 pencils. The answer is 12", "math").label == "12"  # a stop ended it
    assert parse_completion("We add. The answer is 12.", "math", cut_off=True).reason == REASON_TRUNCATED
    # the answer ended before the cut: in a later sentence, or before an invented follow-up
    assert parse_completion("We add. The answer is 12. Next we", "math", cut_off=True).label == "12"
    assert parse_completion("The answer is 12.\n\nQ: What is", "math", cut_off=True).label == "12"


def test_thinking_aloud():
    # thinking that never closed holds guesses, not an answer
    p = parse_completion("<think>Maybe the answer is 5. Hmm, but 2 + 4 is", "math")
    assert not p.ok and p.reason.startswith(REASON_TRUNCATED)
    # after the thinking, a bare answer counts, not the guesses inside it
    p = parse_completion("<think>Is the answer is 5? No: 2 + 4 = 6, so 6.</think>\n\n**6**", "math")
    assert (p.ok, p.label) == (True, "6")
    p = parse_completion("<think>So the answer is 5.</think>\nI am not sure what is asked.", "math")
    assert not p.ok


@pytest.mark.parametrize(
    "text",
    [
        "If the answer is yes, the premise would have to mention a dog; it does not, so we cannot tell.",
        "Maybe the answer is entailment? The premise says nothing about it.",
    ],
)
def test_an_answer_weighed_is_not_an_answer_given(text):
    assert not parse_completion(text, "nli").ok


@pytest.mark.parametrize(
    "text, label",
    [
        ("So the answer is yes, it is not entailed.", None),
        ("So the answer is false; it is entailed.", None),
        ("So the answer is entailment - no, contradiction.", None),
        ("So the answer is unknown, probably entailment.", None),
        ("So the answer is no, there is no contradiction.", None),
        ("So the answer is no, the premise does not entail it.", "contradiction"),
        ("So the answer is yes, because the premise entails it.", "entailment"),
        ("So the answer is neutral (it could be true).", "neutral"),
        ("The answer is neutral, since the premise neither entails nor contradicts the hypothesis.", "neutral"),
        ("The answer is neutral: we can't say it is entailed.", "neutral"),
    ],
)
def test_a_label_whose_aside_takes_it_back_is_refused(text, label):
    p = parse_completion(text, "nli")
    assert p.label == label and (p.ok or p.reason == REASON_CONFLICTING)


def test_yes_no_asides_use_the_words_freely():
    p = parse_completion("Therefore, the answer (Yes or No) is: Yes, some patients have no illness.", "classify",
                         labels=["yes", "no"])
    assert p.label == "yes"


@pytest.mark.parametrize(
    "text, label, reason",
    [
        ('So the answer is "Paris".', "Paris", ""),
        ('So the answer is **"Paris".**', "Paris", ""),
        ('So the answer is the "Big Apple" nickname.', 'the "Big Apple" nickname', ""),
        ('So the answer is "Paris" or "Lyon".', None, REASON_MULTIPLE),
        ('So the answer is "Paris", not "Lyon".', None, REASON_MULTIPLE),
        ('So the answer is "Marie', None, REASON_TRUNCATED),
        ('So the answer is the 5" screen.', 'the 5" screen', ""),  # an inch mark is no open quote
    ],
)
def test_extracted_spans_in_quotes(text, label, reason):
    p = parse_completion(text, "extract")
    assert (p.label, p.reason) == (label, reason)


def test_a_letter_taken_back_is_refused():
    choices = ["red", "blue", "a frog", "green"]
    assert not parse_completion("B. No wait, it is C.", "choice", choices=choices).ok
    assert parse_completion("C. A frog", "choice", choices=choices).label == "a frog"
    assert parse_completion("D) green, which is A natural color", "choice", choices=choices).label == "green"
    assert parse_completion("So the answer is (B), since option A is a frog.", "choice", choices=choices).label == "blue"


# ------------------------------------------------------------------------------------------------
# Run-ons in the prompt's own format (issue 23): the teacher answers, then invents the next example
# ------------------------------------------------------------------------------------------------

ISSUE_23_RUNONS = [
    ("A man can hold a guitar without playing it. So the answer is neutral.\n\nPremise: Two dogs run along a beach.\n"
     "Hypothesis: Animals are outdoors.\nAnswer: Dogs are animals and a beach is outdoors. So the answer is entailment."
     "\n\nPremise: A", "neutral", "A man can hold a guitar without playing it."),
    ("The girl is reading, so she is not asleep.\nAnswer: contradiction\n\nPremise: A girl reads a book in a park.\n"
     "Hypothesis: A girl is reading.\nReasonings: Reading a book is reading.\nAnswer: entailment\n\nPre",
     "contradiction", "The girl is reading, so she is not asleep."),
]


@pytest.mark.parametrize("completion,label,rationale", ISSUE_23_RUNONS)
def test_a_runon_in_the_prompts_format_is_cut_at_its_first_field(completion, label, rationale):
    p = parse_completion(completion, "nli")
    assert (p.ok, p.label, p.rationale) == (True, label, rationale), p


def test_a_users_own_format_fields_start_the_runon():
    from mentor.tasks.prompts import PromptTemplate, Shot

    shots = [Shot("Review: Love it.\nStars: 5", "Loving a product is praise.", "positive"),
             Shot("Review: Broke at once.\nStars: 1", "Breaking at once is a defect.", "negative")]
    template = PromptTemplate.for_task("classify", shots=shots, labels=["positive", "negative"])
    assert template.input_fields == ("Review", "Stars")
    completion = "Fast and sturdy is praise. So the answer is positive.\n\nReview: Meh.\nStars: 1\nAnswer: negative"
    assert template.parse(completion).label == "positive"
    # Without the format's fields the invented example's answer conflicts with the real one.
    assert not parse_completion(completion, "classify", labels=["positive", "negative"]).ok


def test_fields_before_any_answer_are_an_echo_and_a_lone_letter_answer_is_kept():
    echoed = "Premise: A dog runs.\nHypothesis: A dog moves.\nRunning is moving. So the answer is entailment."
    p = parse_completion(echoed, "nli")
    assert (p.label, p.rationale) == ("entailment", "Premise: A dog runs.\nHypothesis: A dog moves.\nRunning is moving.")
    # A short last line is only dropped as a cut field name when it is one ("Pre"), never a letter answer.
    assert parse_completion("Cold keeps it frozen. So the answer is:\n\nC", "choice", choices=["a", "b", "c"]).label == "c"
    # Reasoning cut by a new paragraph of fields: the only answer is the invented example's, refused.
    assert not parse_completion("The premise is about a dog and\n\nPremise: A dog swims.\nHypothesis: It is wet.\n"
                                "Answer: entailment", "nli").ok


def _runon_cases():
    """(task, first shot, second shot) over every pair of built-in exemplars of every task."""
    from mentor.tasks.prompts import BUILTIN_SHOTS

    return [(task, a, b) for task, shots in BUILTIN_SHOTS.items() for a in shots for b in shots if a is not b]


@settings(max_examples=200, deadline=None)
@given(case=st.sampled_from(_runon_cases()), answer_line=st.booleans(), with_q=st.booleans(), blank=st.booleans(),
       cut=st.integers(min_value=0, max_value=400))
def test_any_invented_next_example_leaves_the_first_blocks_answer(case, answer_line, with_q, blank, cut):
    """A completion that answers one built-in exemplar, then runs on into another rendered in the
    prompt's format (fields alone or after "Q:", with its own answer, then a third example), cut
    off anywhere by the token limit, reads as the first block's answer and rationale."""
    from mentor.tasks.prompts import PromptTemplate, answer_sentence

    task, first, second = case

    def answer(shot) -> str:
        if answer_line:
            return f"{shot.rationale}\nAnswer: {shot.label}"
        return f"{shot.rationale.rstrip('.')}. {answer_sentence(task, shot.label)}"

    if with_q or task in ("math", "classify"):  # inputs without field labels run on as a new "Q:"
        invented = f"Q: {second.input}\nA: {answer(second)}"
        third = f"Q: {first.input}"
    else:
        invented = f"{second.input}\nAnswer: {second.label}"
        third = first.input
    sep = "\n\n" if blank else "\n"
    completion = answer(first) + sep + (invented + sep + third)[:cut]
    expected = {"math": lambda: format_number(evaluate_math(first.label)),
                "choice": lambda: first.label[1]}.get(task, lambda: first.label)()
    p = PromptTemplate.for_task(task).parse(completion)
    assert (p.ok, p.label, p.rationale.rstrip(".")) == (True, expected, first.rationale.rstrip(".")), (completion, p)


@pytest.mark.parametrize("completion, task, kw, label", [
    # the teacher quotes one field of its input after a paragraph break, then answers
    ("The man holds a guitar.\n\nHypothesis: he plays it. Holding is not playing.\nSo the answer is neutral.", "nli",
     {}, "neutral"),
    # chain-of-thought that opens by restating the question, then quotes the options, then answers
    ("The answer must be a place with supplies.\nOptions: (a) shop (b) lake. A shop sells supplies.\n"
     "So the answer is (a).", "choice", {"choices": ["shop", "lake"]}, "shop"),
    # a label that begins a field name ("Pro" of "Problem") on the last line is the answer, not a cut field
    ("Both sides are weighed; the benefits win.\nAnswer:\nPro", "classify", {"labels": ["Pro", "Con"]}, "Pro"),
])
def test_a_field_line_in_a_legitimate_completion_keeps_its_answer(completion, task, kw, label):
    """Completions that name an input field without running on (found by review of the run-on cut)."""
    p = parse_completion(completion, task, **kw)
    assert (p.ok, p.label) == (True, label), p
