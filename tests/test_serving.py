"""Serving tuned models through `mentor server` with the official `openai` client: chat, completions
and streaming against a base model and two LoRA adapters of it, many adapters batched on one base,
eviction under a memory budget, and the same greedy answers as `mentor predict`."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from server_fixtures import TOKEN, Server

import mentor
from conftest import shift_task, write_jsonl

PROMPTS = ["abc", "hgfe", "bad", "cafe"]


def reverse_task(n: int, seed: int) -> list[dict]:
    return [{"input_text": r["input_text"], "output_text": r["input_text"][::-1]} for r in shift_task(n, seed)]


def _tune(server, rows, tmp_path, name: str) -> str:
    c = server.client()
    data = write_jsonl(tmp_path / f"{name}.jsonl", rows)
    file_id = c.files.create(file=open(data, "rb"), purpose="fine-tune").id
    job = c.fine_tuning.jobs.create(model="tiny:llama", training_file=file_id, suffix=name,
                                    hyperparameters={"batch_size": 8, "train_steps": 60, "learning_rate_multiplier": 8,
                                                     "evaluation_interval": 30})
    job = server.wait(job.id, timeout=300)
    assert job.status == "succeeded", job.error
    return job.fine_tuned_model


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serving")
    # a budget that holds the base (0.35 MB) and one adapter (0.07 MB), not two: alternating adapters evict
    server = Server(tmp / "data", "--serving-memory-mb", "0.45").start()
    first = _tune(server, shift_task(64, 0), tmp, "shift")
    yield {"server": server, "tmp": tmp, "shift": first}
    server.stop()


def chat(c, model: str, text: str, **kw) -> str:
    r = c.chat.completions.create(model=model, messages=[{"role": "user", "content": text}], max_tokens=8,
                                  temperature=0, **kw)
    return r.choices[0].message.content


def state(server) -> dict:
    return httpx.get(server.url + "/v1/mentor/serving", headers={"Authorization": f"Bearer {TOKEN}"}).json()


def test_chat_completions_and_streaming_for_base_and_adapters(served):
    server = served["server"]
    c = server.client()
    # an adapter registered while the server runs is servable at once
    second = _tune(server, reverse_task(64, 1), served["tmp"], "reverse")
    models = [m.id for m in c.models.list().data]
    assert served["shift"] in models and second in models
    for model in ("tiny:llama", served["shift"], second):
        r = c.chat.completions.create(model=model, messages=[{"role": "user", "content": "abc"}], max_tokens=6,
                                      temperature=0)
        assert r.object == "chat.completion" and r.choices[0].finish_reason in ("stop", "length")
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens and r.usage.prompt_tokens > 0
        chunks = list(c.chat.completions.create(model=model, messages=[{"role": "user", "content": "abc"}], max_tokens=6,
                                                temperature=0, stream=True, stream_options={"include_usage": True}))
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert text == r.choices[0].message.content
        assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
        assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == r.choices[0].finish_reason
        done = c.completions.create(model=model, prompt=["abc", "bcd"], max_tokens=4, temperature=0)
        assert len(done.choices) == 2 and done.usage.completion_tokens > 0
    # the adapters answer differently from each other and from the base
    answers = {m: chat(c, m, "abcd") for m in ("tiny:llama", served["shift"], second)}
    assert len(set(answers.values())) == 3, answers
    served["reverse"] = second


def test_concurrent_requests_for_different_adapters_batch_on_one_base(served):
    server, c = served["server"], served["server"].client()
    second = served.get("reverse") or pytest.skip("needs the second adapter")
    models = [served["shift"], second, "tiny:llama"]
    alone = {(m, p): chat(c, m, p) for m in models for p in PROMPTS}
    before = state(server)
    with ThreadPoolExecutor(12) as pool:
        together = dict(zip(alone, pool.map(lambda key: chat(c, *key), list(alone))))
    after = state(server)
    assert together == alone
    assert after["batches"] - before["batches"] < after["requests"] - before["requests"]  # some were batched


def test_eviction_under_a_memory_budget_keeps_answers_right(served):
    server, c = served["server"], served["server"].client()
    second = served.get("reverse") or pytest.skip("needs the second adapter")
    expected = {m: [mentor.get_tuned_model(m, data_dir=server.data_dir).predict(p, max_new_tokens=8) for p in PROMPTS]
                for m in (served["shift"], second)}  # `mentor predict`'s answers: the same code path
    before = state(server)["evictions"]
    for _ in range(2):
        for m, answers in expected.items():
            assert [chat(c, m, p).strip() for p in PROMPTS] == answers
    s = state(server)
    assert s["evictions"] > before and s["used_bytes"] <= s["budget_bytes"]


def test_errors_name_the_model_and_the_overflow(served):
    c = served["server"].client()
    # a prompt of any length (at most 64 prompts per request); a temperature this near 0 is greedy
    long = "abc " * 40
    r = c.completions.create(model="tiny:llama", prompt=long, max_tokens=4, temperature=1e-40)
    assert r.choices[0].text == c.completions.create(model="tiny:llama", prompt=long, max_tokens=4,
                                                     temperature=0).choices[0].text
    with pytest.raises(openai.BadRequestError) as err:
        chat(c, "tiny:llama", "x", stop=["a", "b", "c", "d", "e"])
    assert err.value.body["param"] == "stop"
    # what this server does not implement is refused, never ignored; its "off" values are accepted
    for asked in ({"logprobs": True}, {"response_format": {"type": "json_object"}}, {"frequency_penalty": 0.5}):
        with pytest.raises(openai.BadRequestError, match=f"'{next(iter(asked))}' is not supported"):
            chat(c, "tiny:llama", "x", **asked)
    assert chat(c, "tiny:llama", "x", logprobs=False, frequency_penalty=0) == chat(c, "tiny:llama", "x")
    # echo is implemented: the prompt before the completion (scoring with logprobs: test_teachers_logprobs)
    echoed = c.completions.create(model="tiny:llama", prompt="x", echo=True, max_tokens=2, temperature=0)
    assert echoed.choices[0].text == "x" + c.completions.create(model="tiny:llama", prompt="x", max_tokens=2,
                                                                temperature=0).choices[0].text
    with pytest.raises(openai.NotFoundError, match="ft:tiny:llama:nope:1"):
        chat(c, "ft:tiny:llama:nope:1", "x")
    with pytest.raises(openai.BadRequestError, match="more than the model's context of 2048 tokens"):
        chat(c, "tiny:llama", "x " * 3000)
    # without max_tokens, the answer may take the room the prompt leaves (here 4 tokens), as with OpenAI
    around = c.completions.create(model="tiny:llama", prompt="x", max_tokens=1).usage.prompt_tokens - 1  # the template's
    near_full = c.completions.create(model="tiny:llama", prompt="x" * (2044 - around), temperature=0)
    assert near_full.usage.prompt_tokens == 2044 and near_full.usage.completion_tokens == 4
    with pytest.raises(openai.BadRequestError, match="no rationale task"):
        chat(c, served["shift"], "abc", extra_body={"task": "rationale"})


def test_a_step_by_step_student_answers_its_label_task_or_its_rationale(served, tmp_path):
    server, c = served["server"], served["server"].client()
    rows = [{"input_text": f"What is {a} + {b}?", "output_text": str(a + b),
             "teacher_completion": f"{a} plus {b} makes {a + b}. The answer is ({a} + {b})."}
            for a in range(1, 9) for b in range(1, 5)]
    data = write_jsonl(tmp_path / "sbs.jsonl", rows)
    file_id = c.files.create(file=open(data, "rb"), purpose="fine-tune").id
    job = c.fine_tuning.jobs.create(model="tiny:llama", training_file=file_id, method={"type": "distillation",
        "distillation": {"method": "step-by-step", "teacher": "recorded:field=teacher_completion", "task": "math",
                         "hyperparameters": {"train_steps": 4, "batch_size": 8}}})
    job = server.wait(job.id, timeout=300)
    assert job.status == "succeeded", job.error
    folder = job.model_extra["config"]["output"]
    meta = json.loads(open(f"{folder}/model/mentor_model.json").read())
    assert meta["task_prefix"] == "[label] " and meta["rationale_prefix"] == "[rationale] "
    # the server renders each task with its own prefix: its prompt-token counts are those of the
    # prompts `mentor predict` renders for the label task and for the rationale task
    from mentor.serving.predict import Predictor

    student = Predictor(folder)
    question = "What is 2 + 3?"
    counts = []
    for task, prefix in (("label", None), ("rationale", "[rationale] ")):
        r = c.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": question}],
                                      max_tokens=4, temperature=0, extra_body={"task": task})
        rendered = student.render(question, prefix)
        counts.append(len(student.tokenizer(rendered, add_special_tokens=False).input_ids))
        assert r.usage.prompt_tokens == counts[-1], task
        assert r.choices[0].message.content.strip() == student.generate([rendered], max_new_tokens=4)[0], task
    assert counts[0] != counts[1]  # the two tasks' prompts are told apart


def _batch_lines(model: str, prompts: list[str]) -> list[dict]:
    return [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": model, "messages": [{"role": "user", "content": p}], "max_tokens": 6, "temperature": 0}}
            for i, p in enumerate(prompts)]


def _wait_batch(c, batch_id: str, timeout: float = 300, until=None):
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        b = c.batches.retrieve(batch_id)
        if b.status in ("completed", "failed", "cancelled") or (until and until(b)):
            return b
        time.sleep(0.3)
    raise AssertionError(f"batch {batch_id} still {b.status}")


def test_batch_api_answers_every_good_line_and_reports_the_bad_one(served, tmp_path):
    c = served["server"].client()
    lines = _batch_lines(served["shift"], PROMPTS * 3)
    lines.insert(3, {"custom_id": "bad", "method": "POST", "url": "/v1/chat/completions",
                     "body": {"model": served["shift"], "messages": []}})
    lines.insert(5, {"custom_id": "nomodel", "method": "POST", "url": "/v1/chat/completions",
                     "body": {"model": "ft:tiny:llama:none:0", "messages": [{"role": "user", "content": "x"}]}})
    from mentor.models import resolve

    lines.insert(6, {"custom_id": "path", "method": "POST", "url": "/v1/chat/completions",  # not the server's to give
                     "body": {"model": resolve("tiny:llama"), "messages": [{"role": "user", "content": "x"}]}})
    lines.append({"custom_id": "long", "method": "POST", "url": "/v1/chat/completions",  # past the context of 2048
                  "body": {"model": served["shift"], "messages": [{"role": "user", "content": "x " * 3000}]}})
    data = write_jsonl(tmp_path / "batch.jsonl", lines)
    file_id = c.files.create(file=open(data, "rb"), purpose="batch").id
    batch = c.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    assert batch.status in ("validating", "in_progress")
    batch = _wait_batch(c, batch.id)
    assert batch.status == "completed" and batch.request_counts.completed == 12 and batch.request_counts.failed == 4
    out = [json.loads(line) for line in c.files.content(batch.output_file_id).text.splitlines()]
    assert [o["custom_id"] for o in out] == [f"r{i}" for i in range(12)]
    for o, prompt in zip(out, PROMPTS * 3):
        assert o["response"]["body"]["choices"][0]["message"]["content"] == chat(c, served["shift"], prompt)
    errors = [json.loads(line) for line in c.files.content(batch.error_file_id).text.splitlines()]
    assert [e["custom_id"] for e in errors] == ["bad", "nomodel", "path", "long"]
    assert errors[3]["error"]["code"] == "context_length_exceeded" and "unknown model" in errors[2]["error"]["message"]
    assert "line 4" in errors[0]["error"]["message"] and "messages" in errors[0]["error"]["message"]


def test_a_killed_batch_resumes_with_only_the_missing_lines(served, tmp_path):
    import os
    import signal

    from mentor.jobs import read_events, read_state

    c = served["server"].client()
    prompts = [f"{a}{b}{d}{e}" for a in "abcdefgh" for b in "abcdefgh" for d in "abcdefgh" for e in "abc"][:1500]
    data = write_jsonl(tmp_path / "big.jsonl", _batch_lines("tiny:llama", prompts))
    file_id = c.files.create(file=open(data, "rb"), purpose="batch").id
    batch = c.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    folder = served["server"].data_dir / "jobs" / batch.id
    _wait_batch(c, batch.id, until=lambda b: (read_state(folder).get("step") or 0) >= 100)
    os.kill(read_state(folder)["pid"], signal.SIGKILL)
    batch = _wait_batch(c, batch.id)
    assert batch.status == "completed" and batch.request_counts.completed == 1500
    resumed = [e for e in read_events(folder) if e["type"] == "resumed"]
    assert resumed and resumed[0]["answered"] >= 100
    out = [json.loads(line)["custom_id"] for line in c.files.content(batch.output_file_id).text.splitlines()]
    assert out == [f"r{i}" for i in range(1500)]  # every line once, in input order


def test_mentor_serve_serves_the_models_it_is_given(served, tmp_path):
    import subprocess
    import sys
    import time

    from server_fixtures import free_port

    c = served["server"].client()
    folder = c.models.retrieve(served["shift"]).model_extra["path"]
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mentor.cli", "serve", "tiny:llama", folder, "--port", str(port),
                             "--insecure-no-auth", "--data-dir", str(tmp_path / "d")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        alone = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        assert sorted(m.id for m in alone.models.list().data) == sorted(["tiny:llama", folder])
        assert chat(alone, folder, "abc") == chat(c, served["shift"], "abc")
        with pytest.raises(openai.NotFoundError):
            chat(alone, served["shift"], "abc")  # a registry name: not one of the models it serves
        assert httpx.get(f"http://127.0.0.1:{port}/v1/fine_tuning/jobs").status_code == 404  # no jobs here
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_request_that_cannot_be_answered_fails_alone(served, tmp_path):
    """An adapter whose weights were cut short (a full disk) fails its own requests, not those
    batched with it; a stream for it fails before its first event, so the client gets a status."""
    import shutil

    from mentor.errors import MentorError
    from mentor.server.routes.inference import _started
    from mentor.serving.engine import Engine, Ticket
    from mentor.serving.generate import SamplingParams
    from mentor.serving.pool import ModelPool, Servable
    from mentor.serving.predict import Predictor

    folder = served["server"].client().models.retrieve(served["shift"]).model_extra["path"]
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    weights = broken / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    engine = Engine(ModelPool(), window_seconds=0.2)  # a long window: the four are one batch
    params = SamplingParams(max_new_tokens=6)
    good, bad = Servable.of(folder), Servable.of(str(broken))
    expected = mentor.get_tuned_model(served["shift"], data_dir=served["server"].data_dir).predict("abc", max_new_tokens=6)
    prompt = Predictor(good, pool=engine.pool).render("abc")  # as the server renders it: the chat template
    tickets = [engine.submit(Ticket(s, prompt, params, stream=s is bad)) for s in (good, bad, good, bad)]
    try:
        assert [tickets[i].result(timeout=120)[0].text.strip() for i in (0, 2)] == [expected, expected]
        for i in (1, 3):
            with pytest.raises(MentorError, match="cannot load the adapter"):
                _started(tickets[i])
    finally:
        engine.close()



def test_a_client_that_leaves_while_its_request_waits_is_dropped():
    """The request thread waits for the first event; a client that hangs up meanwhile (asked through
    Starlette's is_disconnected, from the thread as FastAPI runs it) marks the ticket gone, so the
    engine never generates it, and the thread is freed."""
    import anyio

    from mentor.server.errors import ApiError
    from mentor.server.routes.inference import _waited
    from mentor.serving.engine import Ticket
    from mentor.serving.generate import SamplingParams
    from mentor.serving.pool import Servable

    class HungUp:
        calls = 0

        async def is_disconnected(self) -> bool:
            HungUp.calls += 1
            return HungUp.calls >= 2  # still there at the first look, gone at the second

    ticket = Ticket(Servable("m", "tiny:llama", None), "hello", SamplingParams())  # queued, never answered

    async def main():
        with pytest.raises(ApiError, match="closed the request"):
            await anyio.to_thread.run_sync(_waited, ticket, HungUp())

    anyio.run(main)
    assert ticket.gone.is_set() and HungUp.calls == 2
