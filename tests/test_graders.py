"""Graders: every type against known inputs, the template renderer and the formula parser under
hypothesis, the python sandbox against what it must refuse, an LLM judge on a loopback server, bad
graders refused naming their field, the graders endpoints through the official openai client, and
`mentor grade` / `mentor eval --grader`."""

from __future__ import annotations

import json
import math
import socket
import time
from pathlib import Path

import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from server_fixtures import Server
from teacher_server import TeacherServer

from mentor.cli import main
from mentor.errors import MentorError
from mentor.graders import GraderSettings, build_grader, parse_grader
from mentor.graders.formula import Formula, FormulaError
from mentor.graders.judge import parse_score
from mentor.graders.similarity import has_wordnet
from mentor.graders.templates import TemplateError, render

OUT = "{{sample.output_text}}"
REF = "{{item.answer}}"


def check(operation: str, **extra) -> dict:
    return {"type": "string_check", "name": "check", "input": OUT, "reference": REF, "operation": operation, **extra}


def similar(metric: str) -> dict:
    return {"type": "text_similarity", "name": "sim", "input": OUT, "reference": REF, "evaluation_metric": metric}


def grade(grader: dict, output: str, item: dict, grader_settings: GraderSettings | None = None):
    with build_grader(parse_grader(grader), grader_settings) as g:
        return g.grade({"output_text": output}, item)


# -- string_check, text_similarity, task metrics ---------------------------------------------------


@pytest.mark.parametrize("operation, output, reference, reward", [
    ("eq", "Paris", "Paris", 1.0), ("eq", "paris", "Paris", 0.0), ("ne", "Rome", "Paris", 1.0),
    ("ne", "Paris", "Paris", 0.0), ("like", "It is Paris.", "Paris", 1.0), ("like", "It is PARIS.", "Paris", 0.0),
    ("ilike", "It is PARIS.", "paris", 1.0), ("ilike", "It is Rome.", "paris", 0.0),
])
def test_string_check(operation, output, reference, reward):
    result = grade(check(operation), output, {"answer": reference})
    assert result.reward == reward and not result.errors


def test_text_similarity_known_values():
    item = {"answer": "the cat sat on the mat"}
    assert grade(similar("fuzzy_match"), "the cat sat on the mat", item).reward == 1.0
    # rapidfuzz's ratio: 1 - Indel distance / total length; "abcd" vs "abce": 6 of 8 characters kept
    assert grade(similar("fuzzy_match"), "abce", {"answer": "abcd"}).reward == pytest.approx(0.75)
    assert grade(similar("bleu"), "the cat sat on the mat", item).reward == pytest.approx(1.0)
    assert grade(similar("gleu"), "the cat sat on the mat", item).reward == pytest.approx(1.0)
    # unigrams: 5 of 6 shared each way ("a" for "the") -> F1 5/6; bigrams: 3 of 5
    assert grade(similar("rouge_1"), "the cat sat on a mat", item).reward == pytest.approx(5 / 6)
    assert grade(similar("rouge_2"), "the cat sat on a mat", item).reward == pytest.approx(3 / 5)
    assert grade(similar("rouge_l"), "the cat sat on a mat", item).reward == pytest.approx(5 / 6)
    assert grade(similar("rouge_5"), "completely different words here now", item).reward == 0.0
    assert 0 < grade(similar("bleu"), "the cat sat on a mat", item).reward < 1


def test_text_similarity_refuses_what_it_cannot_compute():
    with pytest.raises(MentorError, match="grader.json: field 'evaluation_metric': cosine compares embeddings"):
        parse_grader(similar("cosine"), where="grader.json")
    if not has_wordnet():
        with pytest.raises(MentorError, match="field 'evaluation_metric': meteor needs NLTK's WordNet"):
            parse_grader(similar("meteor"), where="grader.json")
    with pytest.raises(MentorError, match="field 'evaluation_metric': Input should be"):
        parse_grader(similar("bleurt"), where="grader.json")


def test_pass_threshold_marks_passes():
    result = grade({**similar("fuzzy_match"), "pass_threshold": 0.7}, "abce", {"answer": "abcd"})
    assert result.passed is True and result.reward == pytest.approx(0.75)


@pytest.mark.parametrize("grader, output, item, reward", [
    ({"task": "math"}, "3 apples and 4 more make 7. The answer is 7.", {"answer": "7"}, 1.0),
    ({"task": "math"}, "(3 * 4) / 2", {"answer": "6.0"}, 1.0),
    ({"task": "math"}, "The answer is 8.", {"answer": "7"}, 0.0),
    ({"task": "math"}, "I do not know.", {"answer": "7"}, 0.0),
    ({"task": "choice", "choices": "{{item.choices}}"}, "So the answer is (b).",
     {"answer": "blue", "choices": ["red", "blue"]}, 1.0),
    ({"task": "choice", "choices": "{{item.choices}}"}, "red", {"answer": "(b)", "choices": ["red", "blue"]}, 0.0),
    ({"task": "nli"}, "The premise says so. The answer is yes.", {"answer": "entailment"}, 1.0),
    ({"task": "classify", "labels": ["positive", "negative"]}, "negative", {"answer": "positive"}, 0.0),
    ({"task": "extract"}, "the Eiffel tower", {"answer": "Eiffel tower in Paris"}, 2 * (2 / 2 * 2 / 4) / (1 + 0.5)),
])
def test_task_metrics_as_graders(grader, output, item, reward):
    spec = {"type": "task_metric", "name": "metric", "reference": REF, **grader}
    result = grade(spec, output, item)
    assert result.reward == pytest.approx(reward) and not result.errors


def test_task_metric_refuses_unknown_task_and_missing_labels():
    with pytest.raises(MentorError, match="field 'task'"):
        parse_grader({"type": "task_metric", "name": "m", "task": "maths", "reference": REF})
    with pytest.raises(MentorError, match="classify"):
        parse_grader({"type": "task_metric", "name": "m", "task": "classify", "reference": REF})


# -- templates ---------------------------------------------------------------------------------

keys = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,11}", fullmatch=True)
values = st.one_of(st.text(max_size=30), st.integers(-10**6, 10**6), st.booleans(), st.lists(st.integers(), max_size=4))


@settings(max_examples=150, deadline=None)
@given(item=st.dictionaries(keys, values, min_size=1, max_size=6), prefix=st.text(max_size=10), data=st.data())
def test_template_renders_each_field_as_written(item, prefix, data):
    key = data.draw(st.sampled_from(sorted(item)))
    prefix = prefix.replace("{", "(").replace("}", ")")
    value = item[key]
    expected = value if isinstance(value, str) else json.dumps(value)
    assert render(f"{prefix}{{{{ item.{key} }}}}|{{{{sample.output_text}}}}", {"item": item, "sample": {
        "output_text": "out"}}) == f"{prefix}{expected}|out"


@settings(max_examples=100, deadline=None)
@given(item=st.dictionaries(keys, st.text(max_size=5), max_size=5), missing=keys)
def test_template_names_the_missing_field(item, missing):
    if missing in item:
        return
    with pytest.raises(TemplateError, match=f"item.{missing} is missing"):
        render(f"{{{{item.{missing}}}}}", {"item": item, "sample": {"output_text": ""}})


def test_template_nested_paths_and_sample_json():
    context = {"item": {"a": {"b": [10, {"c": "deep"}]}}, "sample": {"output_text": "{}", "output_json": {"x": 1}}}
    assert render("{{item.a.b[1].c}} {{ item.a.b[0] }} {{sample.output_json.x}}", context) == "deep 10 1"
    with pytest.raises(TemplateError, match=r"item.a.b has no item \[5\]"):
        render("{{item.a.b[5]}}", context)
    with pytest.raises(TemplateError) as err:
        render("{{sample.output_json.x}}", {"item": {}, "sample": {"output_text": "not json"}})
    assert err.value.kind == "sample_parse_error"
    # output_json is read from the sample's text when it is JSON, as OpenAI fills it
    result = grade({**check("eq"), "input": "{{sample.output_json.city}}"}, '{"city": "Paris"}', {"answer": "Paris"})
    assert result.reward == 1.0


def test_template_errors_at_creation_and_when_grading():
    with pytest.raises(MentorError, match=r"g.json: field 'reference': template '\{\{item.answer\}\}': the item has "
                                          r"no field 'answer'"):
        parse_grader(check("eq"), where="g.json", item={"gold": "x"})
    with pytest.raises(MentorError, match="field 'input': template .*namespaces are item and sample"):
        parse_grader({**check("eq"), "input": "{{ answer }}"}, where="g.json")
    with pytest.raises(MentorError, match="field 'input': .*not 'output'"):
        parse_grader({**check("eq"), "input": "{{sample.output}}"}, where="g.json")
    result = grade(check("eq"), "x", {"gold": "x"})
    assert result.reward == 0.0 and "item.answer is missing" in result.errors[0]
    assert result.error_kinds == {"invalid_variable_error"}


# -- formulas and multi graders ----------------------------------------------------------------

NAMES = ("a", "b", "c")


@st.composite
def expressions(draw, depth=0):
    """(OpenAI formula, the same in Python) pairs."""
    if depth > 3 or draw(st.integers(0, 2)) == 0:
        leaf = draw(st.one_of(st.sampled_from(NAMES), st.integers(0, 9).map(str),
                              st.floats(0, 5, allow_nan=False).map(lambda x: f"{x:.3f}")))
        return leaf, leaf
    kind = draw(st.sampled_from(["+", "-", "*", "/", "^", "min", "max", "abs", "neg", "floor", "sqrt"]))
    left, pleft = draw(expressions(depth + 1))
    if kind in ("+", "-", "*", "/"):
        right, pright = draw(expressions(depth + 1))
        return f"({left} {kind} {right})", f"({pleft} {kind} {pright})"
    if kind == "^":
        power = draw(st.integers(0, 3))
        return f"({left}) ^ {power}", f"({pleft}) ** {power}"
    if kind in ("min", "max"):
        right, pright = draw(expressions(depth + 1))
        return f"{kind}({left}, {right})", f"{kind}({pleft}, {pright})"
    if kind == "neg":
        return f"-({left})", f"-({pleft})"
    return f"{kind}({left})", f"{'math.' if kind in ('floor', 'sqrt') else ''}{kind}({pleft})"


@settings(max_examples=300, deadline=None)
@given(expr=expressions(), scores=st.fixed_dictionaries({n: st.floats(0, 1) for n in NAMES}))
def test_formula_agrees_with_python(expr, scores):
    formula, python = expr
    try:
        expected = float(eval(python, {"math": math, "min": min, "max": max, "abs": abs}, dict(scores)))  # noqa: S307
    except (ZeroDivisionError, ValueError, OverflowError):
        with pytest.raises(FormulaError):
            Formula(formula).evaluate(scores)
        return
    if isinstance(expected, complex) or not math.isfinite(expected):
        return
    assert Formula(formula).evaluate(scores) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert Formula(formula).names <= set(NAMES)


@pytest.mark.parametrize("text, message", [
    ("__import__('os')", "calls '__import__'"), ("__import__('os').system('true')", "uses Call"),
    ("a.real", "uses Attribute"),
    ("a ** 2", r"not \*\*"), ("lambda: 1", "uses Lambda"), ("a[0]", "uses Subscript"), ("a +", "does not parse"),
    ("'text'", "only numbers"), ("a if b else c", "uses IfExp"), ("max", "without calling it"),
    ("sqrt(a, b)", "with 2 argument"), ("a % 2", "uses Mod"),
])
def test_formula_refuses_what_openai_does_not_allow(text, message):
    with pytest.raises(MentorError, match=message):
        Formula(text)


def test_formula_errors_at_evaluation():
    for text, scores in (("a / b", {"a": 1, "b": 0}), ("log(a)", {"a": 0}), ("sqrt(a)", {"a": -1}),
                         ("exp(a)", {"a": 1000}), ("a ^ 5000", {"a": 2})):
        with pytest.raises(FormulaError):
            Formula(text).evaluate(scores)
    assert Formula("floor(a * 10) / 10 + ceil(b) + log(exp(1)) + abs(-c)").evaluate(
        {"a": 0.37, "b": 0.2, "c": 2}) == pytest.approx(0.3 + 1 + 1 + 2)


def test_multi_grader_combines_named_graders():
    spec = {"type": "multi", "name": "both", "calculate_output": "0.5 * exact + 0.5 * fuzzy ^ 2",
            "graders": {"exact": {**check("eq"), "name": "exact"}, "fuzzy": {**similar("fuzzy_match"), "name": "f"}}}
    result = grade(spec, "abce", {"answer": "abcd"})
    assert result.sub_rewards == {"exact": 0.0, "fuzzy": pytest.approx(0.75)}
    assert result.reward == pytest.approx(0.5 * 0.75**2) and not result.errors
    # the openai package types `graders` as one grader: it stands under its own name
    one = parse_grader({"type": "multi", "name": "m", "calculate_output": "2 * exact",
                        "graders": {**check("eq"), "name": "exact"}})
    assert list(one.graders) == ["exact"]
    # a sub-grader that cannot grade counts 0 and is named; division by zero is a formula error
    failing = {**spec, "calculate_output": "exact / fuzzy", "graders": {
        "exact": {**check("eq"), "reference": "{{item.nope}}"}, "fuzzy": similar("fuzzy_match")}}
    result = grade(failing, "x", {"answer": "y"})
    assert result.reward == 0.0 and result.error_kinds == {"invalid_variable_error", "formula_parse_error"}
    assert result.errors[0].startswith("exact: template")


def test_multi_grader_refusals():
    base = {"type": "multi", "name": "m", "graders": {"a": check("eq")}}
    with pytest.raises(MentorError, match=r"g.json: field 'calculate_output': 'b' is no grader's name"):
        parse_grader({**base, "calculate_output": "a + b"}, where="g.json")
    with pytest.raises(MentorError, match=r"g.json: field 'graders.a.operation'"):
        parse_grader({**base, "graders": {"a": check("equal")}, "calculate_output": "a"}, where="g.json")
    with pytest.raises(MentorError, match=r"field 'graders.a': Input tag 'multi'"):
        parse_grader({**base, "graders": {"a": {**base, "calculate_output": "a"}}, "calculate_output": "a"},
                     where="g.json")


def test_unknown_type_and_fields_refused():
    with pytest.raises(MentorError, match="field 'type': 'regex' is no grader type"):
        parse_grader({"type": "regex", "name": "x"}, where="g.json")
    with pytest.raises(MentorError, match="field 'opration': no such field"):
        parse_grader({**check("eq"), "opration": "eq"}, where="g.json")
    with pytest.raises(MentorError, match="g.json: not JSON"):
        parse_grader("{nope", where="g.json")
    with pytest.raises(MentorError, match="label_model graders are not supported"):
        parse_grader({"type": "label_model", "name": "x"})


# -- the python sandbox ------------------------------------------------------------------------

HOSTILE = '''
import time

def grade(sample, item):
    kind = item.get("kind")
    if kind == "network":
        import socket
        socket.create_connection(("127.0.0.1", item["port"]), timeout=2)
    elif kind == "raw_socket":
        import _socket
        _socket.socket().connect(("127.0.0.1", item["port"]))
    elif kind == "read":
        return float(len(open("/etc/hostname").read()) > 0)
    elif kind == "cpu":
        while True:
            pass
    elif kind == "memory":
        hoard = []
        while True:
            hoard.append(bytearray(10 ** 7))
    elif kind == "output":
        print("x" * 10 ** 6)
    elif kind == "sleep":
        time.sleep(30)
    elif kind == "process":
        import os
        os.system("true")
    elif kind == "raises":
        raise ValueError("no answer in " + sample["output_text"])
    elif kind == "own_folder":
        with open("scratch.txt", "w") as f:
            f.write("kept")
        return float(open("scratch.txt").read() == "kept")
    elif kind == "text":
        return "1.0"
    return 1.0 if sample["output_text"] == item["answer"] else 0.0
'''


def python_grader(source: str = HOSTILE) -> dict:
    return {"type": "python", "name": "py", "source": source}


SANDBOX = GraderSettings(python_cpu_seconds=1, python_wall_seconds=4, python_memory_mb=128,
                         python_output_bytes=10_000)


def test_python_grader_sandbox_refuses_and_recovers():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    cases = [({"answer": "a"}, None), ({"kind": "network", "port": port}, "may not import socket"),
             ({"kind": "raw_socket", "port": port}, "may not import _socket"),
             ({"kind": "read"}, "may not open '/etc/hostname'"), ({"kind": "cpu"}, "CPU time limit"),
             ({"kind": "memory"}, "MemoryError: used more than 128 MB"),
             ({"kind": "output"}, "output limit: printed more than 10000 bytes"),
             ({"kind": "sleep"}, "timeout: the grader took longer than 4 s"),
             ({"kind": "process"}, "may not do os.system"), ({"kind": "raises"}, "ValueError: no answer in a"),
             ({"kind": "text"}, "returned str, not a number"), ({"kind": "own_folder"}, None), ({"answer": "a"}, None)]
    with build_grader(parse_grader(python_grader()), SANDBOX) as grader:
        start = time.monotonic()
        results = grader.grade_many([{"output_text": "a"}] * len(cases), [item for item, _ in cases])
        took = time.monotonic() - start
        for (item, error), result in zip(cases, results):
            if error is None:
                assert result.reward == 1.0 and not result.errors, (item, result)
            else:
                assert result.reward == 0.0 and error in result.errors[0], (item, result)
                assert result.error_kinds == {"python_grader_runtime_error"}
        # after all that, the grader still grades (a fresh worker where the last one was killed)
        assert grader.grade({"output_text": "b"}, {"answer": "b"}).reward == 1.0
        assert grader.worker.restarts == 2  # after cpu and sleep (killed); the others end in the worker
    with pytest.raises(socket.timeout):
        listener.accept()  # nothing got through to the listener
    listener.close()
    assert took < 15


def test_python_grader_grades_a_batch_in_one_worker():
    source = "def grade(sample, item):\n    return float(sample['output_text'] == item['answer'])\n"
    with build_grader(parse_grader(python_grader(source))) as grader:
        start = time.monotonic()
        results = grader.grade_many([{"output_text": str(i % 3)} for i in range(500)],
                                    [{"answer": "0"}] * 500)
        assert time.monotonic() - start < 5
        assert [r.reward for r in results] == [float(i % 3 == 0) for i in range(500)]
        assert grader.worker.restarts == 0


def test_python_grader_refused_at_creation():
    with pytest.raises(MentorError, match=r"g.json: field 'source': line 2: .*does not compile"):
        parse_grader(python_grader("def grade(sample, item):\n    return (1 +\n"), where="g.json")
    with pytest.raises(MentorError, match="field 'source': the source defines no function grade"):
        parse_grader(python_grader("def score(sample, item):\n    return 1\n"), where="g.json")
    # a module body that fails when it runs fails every sample, saying so
    with build_grader(parse_grader(python_grader("import nope_no_such_module\ndef grade(s, i):\n    return 1\n"))) as g:
        result = g.grade({"output_text": ""}, {})
    assert result.reward == 0.0 and "ModuleNotFoundError" in result.errors[0]


ESCAPES = r"""
import os, sys

def grade(sample, item):
    kind = item["kind"]
    if kind == "frame_walk":  # the audit hook's state, from the caller's frame
        sys._getframe(1).f_locals["readable"].add("/")
    elif kind == "traceback_frame":
        try:
            raise ValueError
        except ValueError as err:
            err.__traceback__.tb_frame.f_back
    elif kind == "rewrite":  # the worker's module globals, then a file outside
        main = sys.modules["__main__"]
        main.REFUSED_PREFIXES, main.REFUSED_IMPORTS, main.PATH_EVENTS, main.FRAME_EVENTS = (), set(), {}, set()
        os.path.realpath = lambda path: "/tmp/inside"
        return float(len(open("/etc/passwd").read()) > 0)
    elif kind == "write_outside":
        with open(item["path"], "w") as f:
            f.write("escaped")
    elif kind == "read":
        return float(len(open(item["path"], "rb").read()) > 0)
    elif kind == "listdir":
        return float(len(os.listdir(item["path"])) >= 0)
    elif kind == "ctypes":
        import ctypes
        ctypes.CDLL(None).getpid()
    elif kind in ("so_import", "so_loader"):
        dynload = [p for p in sys.path if p.endswith("lib-dynload")][0]
        name = [n for n in os.listdir(dynload) if n.startswith("_lsprof.")][0]
        with open(name, "wb") as f:
            f.write(open(os.path.join(dynload, name), "rb").read())
        if kind == "so_import":
            sys.path.insert(0, ".")
            import _lsprof
        else:
            import importlib.machinery, importlib.util
            loader = importlib.machinery.ExtensionFileLoader("_lsprof", os.path.abspath(name))
            importlib.util.module_from_spec(importlib.util.spec_from_loader("_lsprof", loader))
    elif kind == "fork":
        while True:
            os.fork()
    elif kind == "network":
        import socket
        socket.create_connection(("127.0.0.1", item["port"]), timeout=2)
    return 1.0
"""


def test_python_grader_sandbox_escapes_fail(tmp_path):
    """The probes that got out of the audit-hook-only sandbox: each scores 0 naming what refused it."""
    import mentor

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    outside = tmp_path / "escaped_by_grader.txt"  # under /tmp, which in the sandbox is its own tmpfs
    in_repo = Path(mentor.__file__).parent / "escaped_by_grader.txt"
    cases = [({"kind": "frame_walk"}, "may not do sys._getframe"), ({"kind": "traceback_frame"}, "may not read tb_frame"),
             ({"kind": "rewrite"}, "may not open '/etc/passwd'"),
             ({"kind": "write_outside", "path": str(outside)}, "No such file or directory"),
             ({"kind": "write_outside", "path": str(in_repo)}, "may not open"),
             ({"kind": "write_outside", "path": "/usr/escaped_by_grader.txt"}, "may not open"),
             ({"kind": "read", "path": "/etc/passwd"}, "may not open '/etc/passwd'"),
             ({"kind": "read", "path": mentor.__file__}, "may not open"),
             ({"kind": "read", "path": "/proc/1/environ"}, "may not open '/proc/1/environ'"),
             ({"kind": "listdir", "path": "/root"}, "may not touch '/root'"),
             ({"kind": "ctypes"}, "may not do ctypes.dlopen"),
             ({"kind": "so_import"}, "may not import from '.'"), ({"kind": "so_loader"}, "ImportError"),
             ({"kind": "fork"}, "may not do os.fork"),
             ({"kind": "network", "port": listener.getsockname()[1]}, "may not import socket")]
    with build_grader(parse_grader(python_grader(ESCAPES)), SANDBOX) as grader:
        results = grader.grade_many([{"output_text": ""}] * len(cases), [item for item, _ in cases])
        for (item, error), result in zip(cases, results):
            assert result.reward == 0.0 and error in result.errors[0], (item, result)
        assert grader.worker.restarts == 0
    assert not outside.exists() and not in_repo.exists()
    with pytest.raises(socket.timeout):
        listener.accept()
    listener.close()


def test_python_sandbox_confines_without_the_audit_hook(tmp_path, monkeypatch):
    """The layers under the audit hook, on their own (as after a grader got past it): bubblewrap's
    view of the machine and the worker's seccomp filter."""
    import subprocess

    import mentor
    from mentor.graders import sandbox

    assert sandbox.check_available() == "bwrap", "CI installs bubblewrap (scripts/setup)"
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    outside = tmp_path / "escaped_by_grader.txt"
    probe = f"""
import json, os, sys
def attempt(what, action):
    try:
        value = action()
        return what + ": done" + (" " + value if "sk-secret" in str(value) else "")
    except BaseException as err:
        return what + ": " + type(err).__name__
results = [attempt("passwd", lambda: open("/etc/passwd").read()),
           attempt("repo", lambda: open({mentor.__file__!r}).read()),
           attempt("environ", lambda: open("/proc/1/environ").read() + open("/proc/self/environ").read()),
           attempt("write", lambda: open({str(outside)!r}, "w").write("x")),
           attempt("write_usr", lambda: open("/usr/escaped", "w").write("x")),
           attempt("connect", lambda: __import__("socket").create_connection(("127.0.0.1", {listener.getsockname()[1]}), 2))]
results.append("root: " + " ".join(os.listdir("/root")))  # the base interpreter's folder alone, where it is there
results.append("processes: " + " ".join(sorted(p for p in os.listdir("/proc") if p.isdigit())))
sys.path.insert(0, "/opt/mentor")
import shutil, sandbox_child
shutil.copy([p for p in sys.path if p.endswith("lib-dynload")][0] + "/_lsprof.cpython-311-x86_64-linux-gnu.so", "/tmp/evil.so")
sandbox_child._lock_down()
import importlib.machinery, importlib.util
loader = importlib.machinery.ExtensionFileLoader("_lsprof", "/tmp/evil.so")
results += [attempt("so", lambda: importlib.util.module_from_spec(importlib.util.spec_from_loader("_lsprof", loader))),
            attempt("fork", os.fork), attempt("exec", lambda: os.execv("/usr/bin/true", ["true"])),
            attempt("own_folder", lambda: open("/tmp/kept", "w").write("x"))]
print(json.dumps(results))
"""
    exe, _ = sandbox._interpreter()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")  # the server's environment: bubblewrap gets ENV alone
    done = subprocess.run(sandbox.bwrap_command([exe, "-I", "-S", "-c", probe]), capture_output=True, text=True,
                          timeout=60, env=sandbox.ENV)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert results[:5] == ["passwd: FileNotFoundError", "repo: FileNotFoundError", "environ: done",
                           "write: FileNotFoundError", "write_usr: OSError"]
    assert results[5] in ("connect: ConnectionRefusedError", "connect: OSError")  # its own loopback, or none
    assert results[6] in ("root: ", "root: .pyenv") and results[7] == "processes: 1 2"
    assert results[8:] == ["so: ImportError", "fork: PermissionError", "exec: PermissionError", "own_folder: done"]
    assert "sk-secret" not in done.stdout
    assert not outside.exists()
    with pytest.raises(socket.timeout):
        listener.accept()
    listener.close()


def test_python_grader_whose_module_body_hangs_fails_at_once():
    for body, error in [("while True:\n    pass\n", "CPU time limit"),
                        ("import time\ntime.sleep(60)\n", "timeout: the grader took longer than 4 s")]:
        with build_grader(parse_grader(python_grader(body + "def grade(s, i):\n    return 1\n")), SANDBOX) as grader:
            start = time.monotonic()
            results = grader.grade_many([{"output_text": ""}] * 3, [{}] * 3)
            assert all(r.reward == 0.0 and "did not start" in r.errors[0] and error in r.errors[0] for r in results)
            assert grader.grade({"output_text": ""}, {}).errors == results[0].errors  # no second start
            assert time.monotonic() - start < 8


def test_python_grader_refused_where_no_sandbox_works(monkeypatch):
    from mentor.graders import sandbox

    monkeypatch.setattr(sandbox, "bwrap_problem", lambda: "bubblewrap is not installed")
    with pytest.raises(MentorError, match=r"bubblewrap is not installed: install it \(apt install bubblewrap\)"):
        build_grader(parse_grader(python_grader("def grade(s, i):\n    return 1\n")))
    monkeypatch.setenv("MENTOR_GRADERS_PYTHON_SANDBOX", "weak")  # the operator's opt-out
    with build_grader(parse_grader(python_grader(ESCAPES)), SANDBOX) as grader:
        assert grader.worker.mode == "weak"
        results = grader.grade_many([{"output_text": ""}] * 3, [{"kind": "ok"}, {"kind": "frame_walk"}, {"kind": "fork"}])
        assert [r.reward for r in results] == [1.0, 0.0, 0.0]


# -- score_model: an LLM judge on a loopback server --------------------------------------------


@pytest.fixture(scope="module")
def judge():
    with TeacherServer() as server, pytest.MonkeyPatch.context() as env:  # "echo": its answer repeats the
        # last message, so the sample is the score; a loopback judge is allowed only when listed
        env.setenv("MENTOR_GRADERS_ALLOWED_JUDGE_URLS", json.dumps([server.base_url]))
        yield server


def judge_grader(judge, **extra) -> dict:
    return {"type": "score_model", "name": "judge", "model": f"echo@{judge.base_url}",
            "input": [{"role": "system", "content": "Grade the answer from 0 to 1."},
                      {"role": "user", "content": "Reference {{item.answer}}. Answer: " + OUT}], **extra}


def test_score_model_judges_through_the_teacher_plumbing(judge, tmp_path):
    judge.state.reset()
    config = GraderSettings(judge_cache=str(tmp_path / "judge.sqlite"))
    samples = [{"output_text": s} for s in ("0.75", "1", "3", "no idea")]
    items = [{"answer": "x"}] * 4
    with build_grader(parse_grader(judge_grader(judge)), config) as grader:
        results = grader.grade_many(samples, items)
    assert [r.reward for r in results] == [0.75, 1.0, 0.0, 0.0]
    assert "outside the range [0, 1]" in results[2].errors[0]
    assert "no score in the judge's reply" in results[3].errors[0]
    assert results[2].error_kinds == {"model_grader_parse_error"}
    assert results[0].token_usage["echo"] > 0
    sent = judge.state.total_requests
    assert sent == 4
    # cached: asking again costs nothing; a range of [0, 10] takes the 3
    with build_grader(parse_grader(judge_grader(judge, range=[0, 10])), config) as grader:
        results = grader.grade_many(samples, items)
    assert judge.state.total_requests == sent
    assert [r.reward for r in results] == [0.75, 1.0, 3.0, 0.0]


def test_score_model_retries_and_survives_a_dead_judge(judge, tmp_path):
    judge.state.reset()
    judge.state.fail_first = 1  # each prompt's first request gets a 500: retried
    config = GraderSettings(judge_cache="off", judge_attempts=3)
    assert grade(judge_grader(judge), "0.5", {"answer": "x"}, config).reward == 0.5
    judge.state.reset()
    judge.state.models = {"other"}  # an unknown model: 404, nothing retried, every sample 0 with the reason
    try:
        result = grade(judge_grader(judge), "0.5", {"answer": "x"}, config)
    finally:
        judge.state.models = {"echo", "tiny", "sums"}
    assert result.reward == 0.0 and result.error_kinds == {"model_grader_server_error"}
    assert "judge gave no answer" in result.errors[0]


def test_score_model_judge_url_must_be_allowed(judge):
    remote = {**judge_grader(judge), "model": "gpt-4o@https://judge.example.com/v1"}
    with pytest.raises(MentorError, match=r"g.json: field 'model': the judge server https://judge.example.com/v1 is "
                                          r"not allowed"):
        parse_grader(remote, where="g.json")
    parse_grader(remote, settings=GraderSettings(allowed_judge_urls=["https://judge.example.com/v1/"]))
    # loopback is no exception: the judge's own server is refused once it is not listed
    with pytest.raises(MentorError, match=f"the judge server {judge.base_url} is not allowed"):
        parse_grader(judge_grader(judge), settings=GraderSettings(allowed_judge_urls=[]))
    with pytest.raises(MentorError, match="field 'range': .*lowest score first"):
        parse_grader({**judge_grader(judge), "range": [1, 0]}, where="g.json")
    with pytest.raises(MentorError, match="field 'input.0.content'"):
        parse_grader({**judge_grader(judge), "input": [{"role": "user", "content": [
            {"type": "input_image", "image_url": "http://x/y.png"}]}]}, where="g.json")


@pytest.mark.parametrize("reply, score", [
    ("0.8", 0.8), ('{"steps": [], "result": 7}', 7.0), ("```json\n{\"score\": 0.25}\n```", 0.25),
    ("The answer is mostly right. Score: 4", 4.0), ("I'd give it 3 out of 5", None), ("no number", None),
    ("Rating = 9.5", 9.5), ("-1", -1.0),
])
def test_parse_score(reply, score):
    assert parse_score(reply) == score


# -- the graders endpoints, with the official openai client ------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("graders-srv") / "data").start()
    yield srv
    srv.stop()


def test_graders_endpoints_with_the_openai_client(server):
    client = server.client()
    run = client.fine_tuning.alpha.graders.run(grader=check("ilike"), model_sample="It is PARIS",
                                               item={"answer": "paris"})
    assert run.reward == 1.0
    assert run.metadata.name == "check" and run.metadata.type == "string_check"
    assert not run.metadata.errors.invalid_variable_error and run.metadata.execution_time >= 0
    multi = {"type": "multi", "name": "m", "calculate_output": "py + 0.5 * sim",
             "graders": {"py": python_grader("def grade(sample, item):\n    return len(sample['output_text']) / 10\n"),
                         "sim": similar("fuzzy_match")}}
    run = client.fine_tuning.alpha.graders.run(grader=multi, model_sample="abce", item={"answer": "abcd"})
    assert run.reward == pytest.approx(0.4 + 0.5 * 0.75)
    assert run.sub_rewards == {"py": pytest.approx(0.4), "sim": pytest.approx(0.75)}
    # a sample the grader cannot grade: reward 0 and the flag, as OpenAI answers
    run = client.fine_tuning.alpha.graders.run(grader=check("eq"), model_sample="x", item={"gold": "x"})
    assert run.reward == 0.0 and run.metadata.errors.invalid_variable_error
    run = client.fine_tuning.alpha.graders.run(grader=python_grader("def grade(s, i):\n    raise KeyError('k')\n"),
                                               model_sample="x")
    assert run.metadata.errors.python_grader_runtime_error
    assert "KeyError" in run.metadata.errors.python_grader_runtime_error_details

    valid = client.fine_tuning.alpha.graders.validate(grader=similar("rouge_l"))
    assert valid.grader.type == "text_similarity" and valid.grader.evaluation_metric == "rouge_l"
    with pytest.raises(openai.BadRequestError, match=r"grader: field 'source': line 1: .*does not compile"):
        client.fine_tuning.alpha.graders.validate(grader=python_grader("def grade(:\n"))
    with pytest.raises(openai.BadRequestError, match="field 'model': the judge server"):
        client.fine_tuning.alpha.graders.validate(grader={
            "type": "score_model", "name": "j", "model": "gpt-4o@https://judge.example.com/v1",
            "input": [{"role": "user", "content": OUT}]})
    with pytest.raises(openai.BadRequestError, match="field 'operation'"):
        client.fine_tuning.alpha.graders.run(grader=check("like!"), model_sample="x", item={})


# -- mentor grade and mentor eval --grader -----------------------------------------------------


def test_mentor_grade_command(tmp_path, capsys):
    grader = tmp_path / "grader.json"
    grader.write_text(json.dumps({"type": "task_metric", "name": "math", "task": "math", "reference": REF}))
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [{"q": "1+1", "answer": "2", "prediction": "1 + 1 = 2. The answer is 2."},
                                                            {"q": "2+2", "answer": "4", "prediction": "5"}]))
    out = tmp_path / "graded.jsonl"
    assert main(["grade", "--grader", str(grader), "--data", str(data), "--output", str(out)]) == 0
    assert "2 graded: mean reward 0.5000, 0 with errors" in capsys.readouterr().out
    assert [json.loads(line)["reward"] for line in out.read_text().splitlines()] == [1.0, 0.0]
    # answers in their own file, paired by line as `mentor predict` writes them
    samples = tmp_path / "predictions.jsonl"
    samples.write_text(json.dumps({"line": 2, "prediction": "4"}) + "\n" + json.dumps({"line": 1, "prediction": "2"}))
    assert main(["grade", "--grader", str(grader), "--data", str(data), "--samples", str(samples)]) == 0
    assert "mean reward 1.0000" in capsys.readouterr().out
    # a grader naming a field the data lacks is refused before anything is graded
    grader.write_text(json.dumps({**check("eq"), "reference": "{{item.gold}}"}))
    assert main(["grade", "--grader", str(grader), "--data", str(data)]) == 2
    assert f"{grader}: field 'reference': template '{{{{item.gold}}}}'" in capsys.readouterr().err


def test_eval_with_a_grader(tmp_path, capsys):
    from mentor.evaluation.evaluate import EvalResult
    from mentor.evaluation.graded import add_grades
    from mentor.evaluation.report import write_report

    rows = [{"input_text": "1+1", "output_text": "2", "_file": "t", "_line": 1},
            {"input_text": "2+2", "output_text": "4", "_file": "t", "_line": 2}]
    result = EvalResult("student", {"accuracy": 0.5, "n": 2}, predictions=[
        {"input_text": "1+1", "prediction": "2", "gold": "2"}, {"input_text": "2+2", "prediction": "5", "gold": "4"}])
    spec = {"type": "python", "name": "py", "source": "def grade(sample, item):\n"
            "    assert '_line' not in item\n    return float(sample['output_text'] == item['output_text'])\n"}
    with build_grader(parse_grader(spec)) as grader:
        add_grades(result, rows, grader)
    assert result.metrics["reward_mean"] == 0.5 and result.main_metric == ("reward_mean", 0.5)
    assert [p["reward"] for p in result.predictions] == [1.0, 0.0]
    report = write_report([result], tmp_path / "report", "graded")
    assert "reward_mean" in report.read_text()
    # mentor eval refuses a bad grader before any model loads
    data = tmp_path / "test.jsonl"
    data.write_text(json.dumps({"input_text": "1+1", "output_text": "2"}) + "\n")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**check("eq"), "reference": "{{item.answer}}"}))
    assert main(["eval", "no-such-model", "--data", str(data), "--grader", str(bad)]) == 2
    assert "field 'reference'" in capsys.readouterr().err
