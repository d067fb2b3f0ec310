"""Teacher plumbing without a model or a server: params, cache, recorded teachers, the factory."""

from __future__ import annotations

import json
import os
import threading

import pytest

from mentor.serving.stop import apply_stop

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mentor.errors import DataValidationError, MentorError
from mentor.teachers import (
    CACHE_FILENAME,
    Completion,
    GenerationParams,
    RecordedTeacher,
    TeacherCache,
    build_teacher,
    cache_key,
    default_cache_path,
)


def test_params_defaults_and_validation():
    p = GenerationParams()
    assert (p.max_new_tokens, p.temperature, p.top_p, p.stop, p.n) == (256, 0.0, 1.0, None, 1)
    with pytest.raises(ValueError):
        GenerationParams(n=0)
    with pytest.raises(ValueError):
        GenerationParams(temperature=-1)
    with pytest.raises(ValueError):
        GenerationParams(max_tokens=5)  # a typo must not silently fall back to a default
    assert len({GenerationParams(stop=["a"]), GenerationParams(stop=["a"]), p}) == 2


def test_cache_key_covers_teacher_prompt_and_every_param():
    base = cache_key("openai:m@http://h/v1", "p", GenerationParams())
    assert base == cache_key("openai:m@http://h/v1", "p", GenerationParams(stop=[]))
    assert cache_key("t", "p", GenerationParams(stop=["a", "b"])) == cache_key("t", "p", GenerationParams(stop=["b", "a"]))
    others = [
        cache_key("openai:m@http://other/v1", "p", GenerationParams()),
        cache_key("openai-completions:m@http://h/v1", "p", GenerationParams()),
        cache_key("openai:m@http://h/v1", "p ", GenerationParams()),
        cache_key("openai:m@http://h/v1", "p", GenerationParams(max_new_tokens=255)),
        cache_key("openai:m@http://h/v1", "p", GenerationParams(temperature=0.5)),
        cache_key("openai:m@http://h/v1", "p", GenerationParams(top_p=0.9)),
        cache_key("openai:m@http://h/v1", "p", GenerationParams(stop=["\n"])),
        cache_key("openai:m@http://h/v1", "p", GenerationParams(n=2)),
    ]
    assert len({base, *others}) == len(others) + 1


def test_cache_persists_and_is_wal(tmp_path):
    path = tmp_path / "sub" / "cache.sqlite"
    params = GenerationParams()
    with TeacherCache(path) as cache:
        cache.put("t", "p1", params, [Completion("a", 3, 1)])
        assert cache._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with TeacherCache(path) as cache:
        assert cache.get("t", "p1", params) == [Completion("a", 3, 1, cached=True)]
        assert cache.get("t", "p2", params) is None
        assert cache.get("other", "p1", params) is None
        many = cache.get_many("t", [f"p{i}" for i in range(1200)], params)  # more keys than one query binds
        assert list(many) == ["p1"]


def test_cache_concurrent_writers(tmp_path):
    """Threads sharing one cache object and a second connection to the same file all land."""
    path = tmp_path / "cache.sqlite"
    params = GenerationParams()
    shared, other = TeacherCache(path), TeacherCache(path)

    def write(cache, worker):
        for i in range(40):
            cache.put("t", f"w{worker}-{i}", params, [Completion(f"text {worker} {i}")])

    threads = [threading.Thread(target=write, args=(shared if w % 2 else other, w)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(shared) == 240
    got = shared.get_many("t", [f"w{w}-{i}" for w in range(6) for i in range(40)], params)
    assert got["w3-7"][0].text == "text 3 7" and len(got) == 240
    shared.close()
    other.close()


def test_apply_stop():
    assert apply_stop("a. b\nc", ["\n", ". "]) == "a"
    assert apply_stop("abc", ["x"]) == "abc"
    assert apply_stop("abc", None) == "abc"
    assert apply_stop("abc", [""]) == "abc"


def _write(path, lines):
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines))
    return path


def test_recorded_file_both_line_shapes(tmp_path):
    path = _write(
        tmp_path / "rec.jsonl",
        [
            {"input_text": "q1", "teacher_completion": "a1"},
            {"prompt": "q2", "completion": "a2"},
            "",
            {"input": "q3", "completion": "a3"},
            {"input": "q3", "completion": "a3 again"},
        ],
    )
    teacher = build_teacher(f"recorded:{path}")
    out = teacher.complete(["q2", "q1", "q3", "q1"])
    assert [c.text for c in out] == ["a2", "a1", "a3", "a1"]
    assert teacher.stats.calls == 3 and teacher.cache is None
    assert teacher.identity == f"recorded:{path.resolve()}"
    assert [c.text for c in teacher.complete(["q3"], GenerationParams(n=2))] == ["a3", "a3 again"]


def test_recorded_missing_input_names_file_and_input(tmp_path):
    path = _write(tmp_path / "rec.jsonl", [{"prompt": "q1", "completion": "a1"}])
    teacher = RecordedTeacher.from_file(path)
    long_input = "x" * 200
    with pytest.raises(MentorError) as err:
        teacher.complete(["q1", long_input])
    message = str(err.value)
    assert str(path) in message and repr("x" * 80) in message and "x" * 81 not in message
    with pytest.raises(MentorError, match="2 needed per input"):
        teacher.complete(["q1"], GenerationParams(n=2))


def test_recorded_bad_lines_name_file_line_and_field(tmp_path):
    path = _write(
        tmp_path / "bad.jsonl",
        [
            {"prompt": "q1", "completion": "a1"},
            '{"prompt": "q2", "completion": ',
            {"prompt": "q3"},
            {"completion": "a4"},
            {"prompt": "q5", "completion": 5},
            "[1, 2]",
        ],
    )
    with pytest.raises(DataValidationError) as err:
        RecordedTeacher.from_file(path)
    message = str(err.value)
    assert "5 problem(s)" in message
    assert f"{path}:2: field '(line)': invalid JSON" in message
    assert f"{path}:3: field 'teacher_completion or completion': missing" in message
    assert f"{path}:4: field 'input_text or prompt or input': missing" in message
    assert f"{path}:5: field 'completion': must be a string, got int" in message
    assert f"{path}:6: field '(line)': must be a JSON object, got list" in message
    with pytest.raises(MentorError, match="recorded teacher file not found"):
        build_teacher(f"recorded:{tmp_path / 'nope.jsonl'}")
    (tmp_path / "latin1.jsonl").write_bytes(b'{"prompt": "caf\xe9", "completion": "a"}\n')
    with pytest.raises(MentorError, match=r"latin1.jsonl:1: field '\(line\)': not UTF-8"):
        RecordedTeacher.from_file(tmp_path / "latin1.jsonl")


def test_recorded_from_rows_field():
    rows = [
        {"input_text": "q1", "teacher_completion": "a1", "label": "x"},
        {"input_text": "q2", "teacher_completion": "a2", "label": "y"},
    ]
    teacher = build_teacher("recorded:field=teacher_completion", rows=rows)
    assert teacher.identity == "recorded:field=teacher_completion"
    assert [c.text for c in teacher.complete(["q2", "q1"])] == ["a2", "a1"]
    by_label = RecordedTeacher.from_rows(rows, "label", input_field="input_text")
    assert by_label.complete(["q1"])[0].text == "x"
    with pytest.raises(MentorError, match="field 'teacher_completion'.*'q3'"):
        teacher.complete(["q3"])
    with pytest.raises(DataValidationError, match="the dataset:2: field 'rationale': missing"):
        RecordedTeacher.from_rows([{"input": "a", "rationale": "r"}, {"input": "b"}], "rationale")
    with pytest.raises(MentorError, match="no rows"):
        build_teacher("recorded:field=teacher_completion")
    # rows read from files are named by their own file and line, not their place in a joined list;
    # one input recorded with two different completions is an error, not the first one silently
    rows = [{"input_text": "q1", "teacher_completion": "a1", "_file": "train.jsonl", "_line": 1},
            {"input_text": "q2", "_file": "test.jsonl", "_line": 2},
            {"input_text": "q1", "teacher_completion": "b1", "_file": "test.jsonl", "_line": 5}]
    with pytest.raises(DataValidationError) as info:
        RecordedTeacher.from_rows(rows, "teacher_completion")
    assert "test.jsonl:2: field 'teacher_completion': missing" in str(info.value)
    assert ("test.jsonl:5: field 'teacher_completion': the same input at train.jsonl:1 has a different recorded "
            "completion") in str(info.value)


def test_factory_errors_and_default_cache(tmp_path, monkeypatch):
    for spec, words in [
        ("gpt-4o", "has no kind"),
        ("vllm:foo@http://h/v1", "unknown teacher kind 'vllm'"),
        ("openai:", "names no model"),
        ("hf:", "names no model"),
    ]:
        with pytest.raises(MentorError, match=words) as err:
            build_teacher(spec, cache_path=tmp_path / "c.sqlite")
        assert "openai:MODEL@BASE_URL" in str(err.value)
    assert default_cache_path(tmp_path / "run") == tmp_path / "run" / CACHE_FILENAME
    monkeypatch.setenv("MENTOR_HOME", str(tmp_path / "home"))
    assert default_cache_path() == tmp_path / "home" / CACHE_FILENAME
    teacher = build_teacher("openai:m@http://127.0.0.1:9/v1", output_dir=tmp_path / "run")
    assert teacher.cache.path == tmp_path / "run" / CACHE_FILENAME and teacher.cache.path.exists()
    teacher.close()
    assert build_teacher("openai:m@http://127.0.0.1:9/v1", use_cache=False).cache is None
