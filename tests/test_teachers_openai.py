"""The OpenAI-compatible teacher against a real HTTP server on loopback (tests/teacher_server.py):
retries of every transient fault, fail-fast on hopeless ones, caching that survives a killed run,
streamed answers, concurrency that adapts to a server answering one request at a time."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from teacher_server import TeacherServer  # noqa: E402

from conftest import sigkill_when  # noqa: E402
from mentor.errors import MentorError  # noqa: E402
from mentor.teachers import (  # noqa: E402
    GenerationParams,
    OpenAITeacher,
    RetryPolicy,
    TeacherCache,
    TeacherError,
    build_teacher,
)
from mentor.teachers.openai_compat import _retry_after, parse_spec  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FAST = RetryPolicy(max_attempts=6, backoff_base=0.01, backoff_max=0.05)
PROMPTS = [f"question {i}: what is {i} plus {i}?" for i in range(10)]
PARAMS = GenerationParams(max_new_tokens=32)


def expected(prompt: str) -> str:
    return f"answer to: {prompt}"


@pytest.fixture(scope="module")
def _server():
    with TeacherServer() as server:
        yield server


@pytest.fixture
def server(_server):
    _server.state.reset()
    yield _server
    _server.state.reset()  # also releases any request still hanging


@pytest.fixture
def make(server, tmp_path, monkeypatch):
    """A fresh teacher (as a new run would build) on this test's cache file."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)

    def make(model: str = "echo", kind: str = "openai", **kwargs) -> OpenAITeacher:
        kwargs.setdefault("cache_path", tmp_path / "teacher_cache.sqlite")
        kwargs.setdefault("retry", FAST)
        kwargs.setdefault("timeout", 10)
        kwargs.setdefault("progress", False)
        return build_teacher(f"{kind}:{model}@{server.base_url}", **kwargs)

    return make


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("kind", ["openai", "openai-completions"])
def test_routes_answer_and_record_usage(make, server, kind, stream):
    teacher = make(kind=kind, stream=stream)
    out = teacher.complete(PROMPTS[:3], PARAMS)
    assert [c.text for c in out] == [expected(p) for p in PROMPTS[:3]]
    assert all(not c.cached for c in out)
    assert out[0].tokens_in == len(PROMPTS[0].split()) and out[0].tokens_out == len(expected(PROMPTS[0]).split())
    s = teacher.stats
    assert (s.calls, s.cache_hits, s.failures) == (3, 0, 0)
    assert s.tokens_out == sum(len(expected(p).split()) for p in PROMPTS[:3])
    assert "3 calls" in s.summary() and "0 cache hits" in s.summary()
    assert teacher.identity == f"{kind}:echo@{server.base_url}"
    assert server.state.streamed == (3 if stream else 0)


def test_second_run_makes_zero_calls(make, server):
    first = make().complete(PROMPTS, PARAMS)
    assert server.state.total_requests == len(PROMPTS)
    again = make()
    second = again.complete(PROMPTS, PARAMS)
    assert server.state.total_requests == len(PROMPTS)
    assert (again.stats.calls, again.stats.cache_hits) == (0, len(PROMPTS))
    assert [c.text for c in second] == [c.text for c in first]
    assert all(c.cached for c in second)


@pytest.mark.parametrize("stream", [True, False])
def test_an_answer_cut_off_by_the_token_limit_says_so_and_is_never_read_as_whole(make, server, tmp_path, stream):
    """The server's finish reason ("length") is kept with the answer, in the cache too, so the cut
    answer is refused as truncated on every run, never read as if whole."""
    from mentor.distill.label import label_rows
    from mentor.tasks.prompts import PromptTemplate

    params = GenerationParams(max_new_tokens=4)
    out = make(stream=stream).complete(PROMPTS[:2], params)
    assert [c.text for c in out] == [" ".join(expected(p).split()[:4]) for p in PROMPTS[:2]]
    assert [c.finish_reason for c in out] == ["length", "length"] and all(c.cut_off for c in out)
    again = make(stream=stream).complete(PROMPTS[:2], params)
    assert all(c.cached and c.finish_reason == "length" for c in again)
    assert make(stream=stream).complete(PROMPTS[:1], PARAMS)[0].finish_reason == "stop"

    # the "sums" teacher's worked answer ends "... = 7. The answer is 7."; cut one word short it
    # ends "The answer is": refused, while the whole answer reads 7
    server.state.backend = "sums"
    rows = [{"input_text": "what is 3 + 4?"}]
    template = PromptTemplate.for_task("math")
    whole_length = len("We start with 3 and add 4. 3 + 4 = 7. The answer is 7.".split())
    for tokens, label, reason in [(whole_length, "7", ""), (whole_length - 1, None, "answer truncated")]:
        labeled, _ = label_rows(make("sums", stream=stream), rows, template, "math", max_new_tokens=tokens)
        assert (labeled[0].parsed.label, labeled[0].parsed.reason) == (label, reason)


def test_duplicate_prompts_are_asked_once(make, server):
    out = make().complete([PROMPTS[0], PROMPTS[1], PROMPTS[0]], PARAMS)
    assert [c.text for c in out] == [expected(PROMPTS[0]), expected(PROMPTS[1]), expected(PROMPTS[0])]
    assert server.state.requests[PROMPTS[0]] == 1


@pytest.mark.parametrize(
    "fault, faulty, extra",
    [
        ("fail_first", 3, {}),  # 500s
        ("malformed_first", 3, {}),  # truncated JSON, wrong shape, HTML
        ("slow_first", 1, {"slow_seconds": 1.0}),  # longer than the client timeout
    ],
)
def test_transient_faults_are_retried(make, server, fault, faulty, extra):
    setattr(server.state, fault, faulty)
    for name, value in extra.items():
        setattr(server.state, name, value)
    teacher = make(timeout=0.3)
    out = teacher.complete(PROMPTS[:4], PARAMS)
    assert [c.text for c in out] == [expected(p) for p in PROMPTS[:4]]
    assert all(server.state.requests[p] == faulty + 1 for p in PROMPTS[:4])
    assert teacher.stats.retries == 4 * faulty and teacher.stats.calls == 4 * (faulty + 1)
    assert teacher.stats.failures == 0
    assert teacher.stats.timeouts == (4 if fault == "slow_first" else 0)


def test_a_slow_answer_that_progresses_is_not_given_up(make, server):
    """Streamed, the timeout bounds the server's silence, not the answer's length: 1.2 s answers
    with a 0.4 s timeout arrive at the first try."""
    server.state.word_delay = 0.2
    teacher = make(timeout=0.4)
    out = teacher.complete(PROMPTS[:2], PARAMS)
    assert [c.text for c in out] == [expected(p) for p in PROMPTS[:2]]
    assert all(server.state.requests[p] == 1 for p in PROMPTS[:2])
    assert (teacher.stats.timeouts, teacher.stats.retries, server.state.abandoned) == (0, 0, 0)


def test_a_timed_out_request_is_closed_before_its_retry(make, server):
    """The server hears the client leave and stops; the retry never runs beside the attempt it replaces."""
    server.state.slow_first, server.state.slow_seconds = 1, 2.0
    teacher = make(timeout=0.3)
    out = teacher.complete(PROMPTS[:3], PARAMS)
    assert [c.text for c in out] == [expected(p) for p in PROMPTS[:3]]
    assert teacher.stats.timeouts == 3 and all(server.state.requests[p] == 2 for p in PROMPTS[:3])
    assert server.state.abandoned == 3  # the three silent attempts, each ended when the client left
    assert server.state.max_prompt_in_flight == 1
    assert server.state.in_flight == 0


def test_an_unstreamed_answer_that_timed_out_is_allowed_longer(make, server):
    """Unstreamed, the timeout bounds the whole answer: one that took too long would take too long
    again, each attempt paid for. Its retry waits twice as long (up to 4 times the timeout)."""
    server.state.delay = 0.5
    teacher = make(timeout=0.3, stream=False)
    out = teacher.complete(PROMPTS[:2], PARAMS)
    assert [c.text for c in out] == [expected(p) for p in PROMPTS[:2]]
    assert teacher.stats.timeouts == 2 and all(server.state.requests[p] == 2 for p in PROMPTS[:2])


@pytest.mark.parametrize("fault", ["cut", "no_done"])
def test_streams_end_whole_or_are_retried(make, server, fault):
    """A stream that stops mid-answer is retried; one without `[DONE]` but with every choice
    finished (as transformers serve sends) is whole."""
    if fault == "cut":
        server.state.cut_first = 1
    else:
        server.state.send_done = False
    teacher = make()
    params = GenerationParams(max_new_tokens=32, n=2, temperature=0.7)
    out = teacher.complete(PROMPTS[:3], params)
    assert [c.text for c in out] == [f"sample {i} answer to: {p}" for p in PROMPTS[:3] for i in range(2)]
    assert teacher.stats.retries == (3 if fault == "cut" else 0)
    with TeacherCache(teacher.cache.path) as cache:  # only whole answers were kept
        assert [c.text for c in cache.get_many(teacher.identity, PROMPTS[:3], params)[PROMPTS[0]]] == [
            f"sample {i} answer to: {PROMPTS[0]}" for i in range(2)
        ]


def test_a_server_that_answers_one_at_a_time_is_not_flooded(make, server):
    """Against a server that takes one request at a time, the limit stays at 2 or 3 (of 8 allowed)
    and nothing times out; a fixed limit keeps all 8 waiting on it."""
    server.state.serial_seconds = 0.15
    teacher = make(concurrency=8)
    out = teacher.complete(PROMPTS, PARAMS)
    assert [c.text for c in out] == [expected(p) for p in PROMPTS]
    assert 2 <= server.state.max_in_flight <= 3 and teacher.limiter.limit in (2, 3)
    assert (teacher.stats.calls, teacher.stats.timeouts, server.state.abandoned) == (10, 0, 0)

    server.state.reset()
    server.state.serial_seconds = 0.15
    fixed = make(concurrency=8, adaptive=False, cache_path=teacher.cache.path.with_name("fixed.sqlite"))
    fixed.complete(PROMPTS, PARAMS)
    assert server.state.max_in_flight == 8


def test_retry_after_is_honoured(make, server):
    server.state.rate_limit_first = 1
    server.state.retry_after = "1"
    start = time.monotonic()
    teacher = make()
    out = teacher.complete(PROMPTS[:3], PARAMS)
    elapsed = time.monotonic() - start
    assert elapsed >= 1.0  # the backoff alone would be ~0.01 s
    assert [c.text for c in out] == [expected(p) for p in PROMPTS[:3]]
    assert all(server.state.requests[p] == 2 for p in PROMPTS[:3])
    assert teacher.limiter.round >= 1  # the limiter heard the 429s as overload


def test_retry_after_parses_both_forms():
    from email.utils import formatdate

    import httpx

    assert _retry_after(httpx.Response(429, headers={"Retry-After": "7"})) == 7
    in_5s = _retry_after(httpx.Response(429, headers={"Retry-After": formatdate(time.time() + 5, usegmt=True)}))
    assert 3 <= in_5s <= 5
    assert _retry_after(httpx.Response(429)) is None
    assert RetryPolicy(max_retry_after=10).delay(1, 99) == 10


def test_gives_up_after_max_attempts_with_clear_error(tmp_path):
    with socket_closed_port() as port:
        teacher = build_teacher(
            f"openai:echo@http://127.0.0.1:{port}/v1",
            cache_path=tmp_path / "c.sqlite",
            retry=RetryPolicy(max_attempts=3, backoff_base=0.01),
            progress=False,
        )
        with pytest.raises(TeacherError) as err:
            teacher.complete(PROMPTS[:2], PARAMS)
    message = str(err.value)
    assert "2 of 2 prompt(s) failed" in message and "gave up after 3 attempts" in message
    assert f"http://127.0.0.1:{port}/v1/chat/completions" in message and "ConnectError" in message
    assert teacher.stats.calls == 6 and teacher.stats.failures == 2


class socket_closed_port:
    """A loopback port with nothing listening: connections are refused."""

    def __enter__(self) -> int:
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        return port

    def __exit__(self, *exc):
        pass


def test_401_fails_fast_naming_url_model_and_key(make, server, monkeypatch):
    server.state.api_key = "sesame"
    teacher = make(concurrency=2, retry=RetryPolicy(max_attempts=6, backoff_base=1.0))
    start = time.monotonic()
    with pytest.raises(MentorError) as err:
        teacher.complete(PROMPTS, PARAMS)
    assert time.monotonic() - start < 1.0  # no backoff sleeps: nothing a retry could fix
    message = str(err.value)
    assert f"{server.base_url}/chat/completions" in message and "'echo'" in message and "401" in message
    assert "$OPENAI_API_KEY (currently unset)" in message
    assert server.state.rejected <= 2  # the in-flight ones; no new request after the first 401

    monkeypatch.setenv("MY_TEACHER_KEY", "sesame")
    out = make(api_key_env="MY_TEACHER_KEY").complete(PROMPTS[:2], PARAMS)
    assert [c.text for c in out] == [expected(p) for p in PROMPTS[:2]]


def test_404_unknown_model_fails_fast(make, server):
    teacher = make(model="no-such-model", retry=RetryPolicy(max_attempts=6, backoff_base=1.0))
    start = time.monotonic()
    with pytest.raises(MentorError) as err:
        teacher.complete(PROMPTS[:3], PARAMS)
    assert time.monotonic() - start < 1.0
    message = str(err.value)
    assert f"{server.base_url}/chat/completions" in message and "'no-such-model'" in message and "404" in message
    assert "does not exist" in message  # the server's own words


def test_failed_prompts_keep_the_answered_ones(make, server, tmp_path):
    broken = set(PROMPTS[:3])
    server.state.fail_always = set(broken)
    teacher = make(retry=RetryPolicy(max_attempts=3, backoff_base=0.01))
    with pytest.raises(TeacherError) as err:
        teacher.complete(PROMPTS, PARAMS)
    assert "3 of 10 prompt(s) failed" in str(err.value) and "rerun" in str(err.value)
    assert set(err.value.partial) == set(PROMPTS[3:])
    assert teacher.stats.failures == 3
    with TeacherCache(tmp_path / "teacher_cache.sqlite") as cache:
        assert len(cache) == 7

    server.state.fail_always.clear()
    before = server.state.requests.copy()
    rerun = make()
    out = rerun.complete(PROMPTS, PARAMS)
    assert [c.text for c in out] == [expected(p) for p in PROMPTS]
    asked = server.state.requests - before
    assert set(asked) == broken and all(v == 1 for v in asked.values())
    assert (rerun.stats.calls, rerun.stats.cache_hits) == (3, 7)


def test_killed_run_resumes_with_only_the_missing_prompts(server, tmp_path):
    """A run SIGKILLed mid-way keeps every answer it got; the rerun asks only for the rest."""
    cache_path = tmp_path / "teacher_cache.sqlite"
    server.state.hang = set(PROMPTS[5:])  # these stay unanswered until the kill
    script = textwrap.dedent(
        f"""
        from mentor.teachers import build_teacher
        teacher = build_teacher({f"openai:echo@{server.base_url}"!r}, cache_path={str(cache_path)!r},
                                concurrency=2, progress=False)
        teacher.complete({PROMPTS!r})
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("OPENAI_API_KEY", None)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=env)
    sigkill_when(proc, lambda: _cached_prompts(cache_path) == set(PROMPTS[:5]) and server.state.in_flight >= 2, 30,
                 "the first run's first answers")

    assert _cached_prompts(cache_path) == set(PROMPTS[:5])
    server.state.hang.clear()
    before = server.state.requests.copy()
    rerun = build_teacher(f"openai:echo@{server.base_url}", cache_path=cache_path, retry=FAST, progress=False)
    out = rerun.complete(PROMPTS)
    assert [c.text for c in out] == [expected(p) for p in PROMPTS]
    asked = server.state.requests - before
    assert set(asked) == set(PROMPTS[5:]) and all(v == 1 for v in asked.values())
    assert (rerun.stats.calls, rerun.stats.cache_hits) == (5, 5)


def _cached_prompts(path: Path) -> set[str]:
    if not path.exists():
        return set()
    db = sqlite3.connect(path, timeout=5)
    try:
        return {row[0] for row in db.execute("SELECT prompt FROM completions")}
    except sqlite3.OperationalError:  # the table is not there yet
        return set()
    finally:
        db.close()


def test_different_params_or_teacher_ask_again(make, server):
    make().complete(PROMPTS[:2], PARAMS)
    make().complete(PROMPTS[:2], GenerationParams(max_new_tokens=32, temperature=0.7))
    make(kind="openai-completions").complete(PROMPTS[:2], PARAMS)
    assert all(server.state.requests[p] == 3 for p in PROMPTS[:2])
    # equal params written differently share answers
    t = make()
    t.complete(PROMPTS[:2], GenerationParams(max_new_tokens=32, stop=[]))
    assert t.stats.calls == 0 and t.stats.cache_hits == 2


@pytest.mark.parametrize("adaptive", [True, False])
def test_concurrency_is_bounded(make, server, adaptive):
    """A server that works on every request at once: the adaptive limit grows to the maximum, never past it."""
    server.state.delay = 0.15
    teacher = make(concurrency=3, adaptive=adaptive)
    teacher.complete(PROMPTS, PARAMS)
    assert server.state.max_in_flight == 3 and teacher.limiter.limit == 3


def test_n_completions_and_stop_strings(make, server):
    params = GenerationParams(max_new_tokens=32, n=2, temperature=0.8, stop=[" plus"])
    out = make().complete(PROMPTS[:2], params)
    assert [c.text for c in out] == [
        f"sample {i} answer to: {p.split(' plus')[0]}" for p in PROMPTS[:2] for i in range(2)
    ]
    total = len(f"sample 0 answer to: {PROMPTS[0]}".split()) * 2
    assert out[0].tokens_out + out[1].tokens_out == total
    again = make()
    assert [c.text for c in again.complete(PROMPTS[:2], params)] == [c.text for c in out]
    assert again.stats.calls == 0


def test_progress_bar_shows_calls_cache_hits_rate_and_limit(make, server, capsys):
    make().complete(PROMPTS[:2], PARAMS)
    make(progress=True).complete(PROMPTS[:5], PARAMS)
    err = capsys.readouterr().err
    assert f"teacher openai:echo@{server.base_url}" in err and "5/5" in err and "cached=2" in err
    final = err.strip().splitlines()[-1].split("\r")[-1]
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d, +[\d.]+(prompt/s|s/prompt), cached=2, limit=\d\]", final), final


def test_spec_parsing():
    assert parse_spec("openai:llama3@http://localhost:8000/v1/") == ("chat", "llama3", "http://localhost:8000/v1")
    assert parse_spec("openai-completions:org/m@x@https://h/v1") == ("completions", "org/m@x", "https://h/v1")
    with pytest.raises(MentorError, match="openai:MODEL@"):
        parse_spec("openai:")


def test_spec_never_falls_back_to_a_remote_endpoint(monkeypatch):
    """A malformed URL is an error; no default remote server unless the user names one."""
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(MentorError, match="'notaurl' is not an http"):
        parse_spec("openai:model@notaurl")
    with pytest.raises(MentorError, match="names no server"):
        parse_spec("openai:gpt-4o-mini")
    with pytest.raises(MentorError, match="names no model"):
        parse_spec("openai:@http://localhost:1/v1")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    assert parse_spec("openai:gpt-4o-mini") == ("chat", "gpt-4o-mini", "http://127.0.0.1:9/v1")


def test_a_cache_that_cannot_be_written_stops_the_run_with_one_line(make, server):
    teacher = make()
    teacher.complete(PROMPTS[:1], PARAMS)
    teacher.cache._db.execute("PRAGMA query_only=ON")  # what a read-only or full disk makes of every write
    with pytest.raises(MentorError, match=r"cannot write the teacher cache .*teacher_cache.sqlite: attempt to write"):
        teacher.complete(PROMPTS[1:4], PARAMS)
    assert make().complete(PROMPTS[:1], PARAMS)[0].cached  # what was saved before is kept
