"""Log-prob teachers (`mentor.teachers.logprobs`): the teacher's top-k log-probs of given tokens, in
process and from servers — mentor's own (`mentor serve`, started here on loopback), a fake vLLM
answering `prompt_logprobs`, and `transformers serve` where it scores given tokens — and offline
logit distillation from a served teacher."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from safetensors.torch import load_file

from conftest import shift_task, write_jsonl
from mentor.errors import MentorError
from mentor.teachers import TeacherError, build_logprob_teacher
from mentor.teachers.logprobs import FILL_LOGPROB, TokenMap

TEXTS = [("Ann has 3 apples", " and buys 4 more."), ("abc", " def ghi"), ("x", "yz")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}: {log.read_text()[-800:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"the server did not start: {log.read_text()[-800:]}")


@pytest.fixture(scope="module")
def mentor_server(tmp_path_factory):
    """`mentor serve tiny:llama` on loopback: its /v1 URL."""
    tmp = tmp_path_factory.mktemp("logprob-teacher")
    port, log = _free_port(), tmp / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mentor.cli", "serve", "tiny:llama", "--port", str(port),
                                 "--insecure-no-auth", "--data-dir", str(tmp / "d")], stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        _wait(f"http://127.0.0.1:{port}/v1/models", proc, log)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def local():
    return build_logprob_teacher("hf:tiny:llama", use_cache=False)


def test_mentor_served_teacher_gives_the_in_process_log_probs(mentor_server, local):
    served = build_logprob_teacher(f"openai:tiny:llama@{mentor_server}", tokenizer="tiny:llama", use_cache=False)
    prompts, continuations = zip(*TEXTS)
    got = served.score_texts(prompts, continuations, top_k=8)
    want = local.score_texts(prompts, continuations, top_k=8)
    assert served.protocol == "prompt_logprobs"  # mentor answers vLLM's extension: ids, no token texts to map
    for g, w, cont in zip(got, want, continuations):
        assert g.ids.shape == (len(local.tokenizer(cont, add_special_tokens=False)["input_ids"]), 8)
        assert (g.ids == w.ids).all()
        np.testing.assert_allclose(g.logprobs, w.logprobs, atol=1e-5)
        np.testing.assert_allclose(g.token_logprobs, w.token_logprobs, atol=1e-5)
        # the scored token's log-prob is the model's: where it is in the top k, the two agree
        for row in range(len(g.ids)):
            assert g.logprobs[row, 0] >= g.token_logprobs[row] - 1e-6
    # OpenAI's legacy echo/logprobs: token texts mapped back to ids; a text several ids decode to
    # (a lone byte past 0x7f decodes to U+FFFD) is left out, the rest equals the in-process top k
    echo = build_logprob_teacher(f"openai:tiny:llama@{mentor_server}", tokenizer="tiny:llama", use_cache=False,
                                 protocol="echo")
    got = echo.score_texts(prompts, continuations, top_k=8)
    tokens = TokenMap(local.tokenizer)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.token_logprobs, w.token_logprobs, atol=1e-5)
        for row in range(len(w.ids)):
            expected = {int(i): float(v) for i, v in zip(w.ids[row], w.logprobs[row])
                        if tokens.id_of(local.tokenizer.decode([int(i)])) is not None}
            kept = {int(i): float(v) for i, v in zip(g.ids[row], g.logprobs[row]) if v > FILL_LOGPROB}
            assert kept.keys() == expected.keys()
            assert all(abs(kept[i] - expected[i]) < 1e-5 for i in kept)


def test_the_openai_client_scores_a_prompt_through_mentors_completions(mentor_server, local):
    c = openai.OpenAI(base_url=mentor_server, api_key="none", max_retries=0)
    r = c.completions.create(model="tiny:llama", prompt="abc def", echo=True, logprobs=5, max_tokens=0,
                             extra_body={"prompt_logprobs": 3})
    choice = r.choices[0]
    assert choice.text == "abc def" and r.usage.completion_tokens == 0
    lp = choice.logprobs
    assert "".join(lp.tokens) == "abc def" and lp.text_offset[:3] == [0, 1, 2]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(len(top) <= 5 for top in lp.top_logprobs[1:])
    [want] = local.score_texts(["a"], ["bc def"], top_k=5)
    np.testing.assert_allclose(lp.token_logprobs[1:], want.token_logprobs, atol=1e-5)
    first = max(lp.top_logprobs[1].values())
    assert first == pytest.approx(float(want.logprobs[0, 0]), abs=1e-5)
    # vLLM's prompt_logprobs beside it: by token id, the top 3 and the token itself with its rank
    pl = choice.model_extra["prompt_logprobs"]
    assert pl[0] is None and len(pl) == len(lp.tokens)
    second = pl[1]
    assert [e["rank"] for e in second.values()][:3] == [1, 2, 3]
    assert str(local.tokenizer("b", add_special_tokens=False)["input_ids"][0]) in second
    # token ids as the prompt, scored exactly as given
    ids = local.tokenizer("abc", add_special_tokens=False)["input_ids"]
    by_ids = c.completions.create(model="tiny:llama", prompt=ids, echo=True, logprobs=2, max_tokens=0)
    assert by_ids.choices[0].logprobs.tokens == ["a", "b", "c"]
    # what it does not implement is refused, naming the field
    for asked, param in (({"echo": True, "logprobs": 2, "max_tokens": 3}, "max_tokens"),
                         ({"logprobs": 2, "max_tokens": 3}, "logprobs"),
                         ({"prompt": ids, "max_tokens": 3}, "prompt"),
                         ({"echo": True, "logprobs": 2, "max_tokens": 0, "stream": True}, "stream"),
                         ({"prompt": [1, 10**6], "echo": True, "logprobs": 2, "max_tokens": 0}, "prompt"),
                         ({"prompt": "", "echo": True, "logprobs": 2, "max_tokens": 0}, "prompt")):
        with pytest.raises(openai.BadRequestError) as err:
            c.completions.create(**{"model": "tiny:llama", "prompt": "abc", **asked})
        assert err.value.body["param"] == param, err.value.body


def test_echo_offsets_index_the_echoed_text_when_the_tokenizer_adds_a_bos(tmp_path):
    """With a BOS, tokens[0] is the BOS's text and the echoed text has none: every text_offset was
    shifted by its length. A special token takes no room, and each token's offset is where the
    cumulative decoding puts it (a character of two byte tokens belongs to the first)."""
    from starlette.testclient import TestClient
    from tokenizers import processors
    from transformers import AutoTokenizer

    from mentor.models.tiny import build_tiny
    from mentor.server.app import create_app
    from mentor.server.settings import ServerSettings

    folder = tmp_path / "bos-model"
    build_tiny("llama", folder)
    tok = AutoTokenizer.from_pretrained(folder)
    tok._tokenizer.post_processor = processors.TemplateProcessing(  # a BOS before every text, as Llama 2's
        single=f"{tok.bos_token} $A", special_tokens=[(tok.bos_token, tok.bos_token_id)])
    tok.save_pretrained(folder)
    assert tok("ab").input_ids[0] == tok.bos_token_id
    app = create_app(ServerSettings(data_dir=tmp_path / "d", insecure_no_auth=True), serve=[str(folder)])
    with TestClient(app) as http:
        c = openai.OpenAI(base_url="http://testserver/v1", api_key="none", http_client=http, max_retries=0)
        text = "abc d\u00e9f"
        for prompt in (text, tok(text).input_ids):  # a text, and token ids with the BOS in them
            choice = c.completions.create(model=str(folder), prompt=prompt, echo=True, logprobs=1,
                                          max_tokens=0).choices[0]
            lp = choice.logprobs
            assert choice.text == text and lp.tokens[0] == tok.bos_token and lp.text_offset[:2] == [0, 0]
            ends = [*lp.text_offset[1:], len(text)]
            pieces = [text[a:b] for a, b in zip(lp.text_offset, ends)]
            assert "".join(pieces) == text and pieces[0] == ""
            for token, piece in zip(lp.tokens[1:], pieces[1:]):
                assert piece == token or "\ufffd" in token, (token, piece)  # \u00e9's two bytes: "\u00e9", ""
            assert pieces[-3:] == ["\u00e9", "", "f"]


# -- vLLM's prompt_logprobs, against a fake vLLM server ---------------------------------------------
VOCAB = 261
MAX_LOGPROBS = 20  # vLLM's default --max-logprobs


def _fake_logprob(prev: int, rank: int) -> float:
    return -0.5 - 0.25 * rank - prev / 1000


def _fake_top(prev: int, k: int) -> list[int]:
    return [(prev * 7 + 11 * r) % VOCAB for r in range(k)]


class FakeVLLM:
    """A vLLM-shaped /v1/completions: `prompt_logprobs` per position {id: {logprob, rank,
    decoded_token}} with the actual token added past the top k, echo's logprobs object for the
    tokenizer check, a 400 past --max-logprobs, and 400 for the fields vLLM does not know."""

    def __init__(self, tokenizer, tokens_differ: bool = False):
        self.tokenizer, self.tokens_differ = tokenizer, tokens_differ
        self.bodies: list[dict] = []
        app = FastAPI()
        app.post("/v1/completions")(self.completions)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._server = uvicorn.Server(uvicorn.Config(app, port=self.port, log_level="warning", lifespan="off"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self):
        self._thread.start()
        while not self._server.started:
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self._server.should_exit = True
        self._thread.join(10)

    def expected(self, tokens: list[int], j: int, k: int) -> tuple[list[int], list[float], float]:
        top = _fake_top(tokens[j - 1], k)
        actual = _fake_logprob(tokens[j - 1], top.index(tokens[j])) if tokens[j] in top else -9.0 - j / 100
        return top, [_fake_logprob(tokens[j - 1], r) for r in range(k)], actual

    async def completions(self, request: Request):
        body = await request.json()
        self.bodies.append(body)
        k = body.get("prompt_logprobs")
        if k is not None and k > MAX_LOGPROBS:
            return JSONResponse({"object": "error", "message": f"Requested prompt logprobs of {k}, which is greater "
                                 f"than max allowed: {MAX_LOGPROBS}", "type": "BadRequestError", "code": 400}, 400)
        prompt = body["prompt"]
        from mentor.serving.scoring import encode_text

        tokens = prompt if isinstance(prompt, list) else encode_text(self.tokenizer, prompt)
        entries: list = [None]
        for j in range(1, len(tokens)):
            top, values, actual = self.expected(tokens, j, k or 1)
            entry = {str(i): {"logprob": v, "rank": r + 1, "decoded_token": self.tokenizer.decode([i])}
                     for r, (i, v) in enumerate(zip(top, values))}
            entry.setdefault(str(tokens[j]), {"logprob": actual, "rank": 150, "decoded_token": "?"})
            entries.append(entry)
        texts = [self.tokenizer.decode([t]) for t in tokens]
        if self.tokens_differ:
            texts = texts[:-1]
        choice = {"index": 0, "text": self.tokenizer.decode(tokens), "finish_reason": "length",
                  "logprobs": {"tokens": texts, "token_logprobs": [None] * len(texts),
                               "top_logprobs": [None] * len(texts), "text_offset": [0] * len(texts)}
                  if body.get("logprobs") else None,
                  "prompt_logprobs": entries if k is not None else None}
        return {"id": "cmpl-1", "object": "text_completion", "created": 0, "model": body["model"], "choices": [choice],
                "usage": {"prompt_tokens": len(tokens), "completion_tokens": 0, "total_tokens": len(tokens)}}


def test_vllm_prompt_logprobs_are_read_by_token_id_and_cached(local, tmp_path):
    tok = local.tokenizer
    sequences = [tok("Ann has 3 apples and 4 pears", add_special_tokens=False)["input_ids"],
                 tok("abc def", add_special_tokens=False)["input_ids"]]
    starts = [5, 2]
    cache = tmp_path / "cache.sqlite"
    with FakeVLLM(tok) as server:
        teacher = build_logprob_teacher(f"openai:some/teacher@{server.url}", tokenizer="tiny:llama", cache_path=cache)
        got = teacher.score(sequences, starts, top_k=4)
        assert teacher.protocol == "prompt_logprobs"
        asked = [b for b in server.bodies if isinstance(b["prompt"], list)]
        assert len(asked) == 2
        for body in asked:  # the tokens as ids, the prompt scored and nothing generated
            assert body["max_tokens"] == 0 and body["echo"] is True and body["prompt_logprobs"] == 4
            assert "logprobs" not in body and body["model"] == "some/teacher"
        for g, seq, start in zip(got, sequences, starts):
            assert g.ids.shape == (len(seq) - start, 4)
            for row, j in enumerate(range(start, len(seq))):
                top, values, actual = server.expected(seq, j, 4)
                assert g.ids[row].tolist() == top  # most likely first; the actual token past the top k left out
                np.testing.assert_allclose(g.logprobs[row], values, rtol=1e-6)
                assert g.token_logprobs[row] == pytest.approx(actual, rel=1e-6)
        teacher.close()

        # the cache: a second run asks nothing, not even the tokenizer check
        seen = len(server.bodies)
        again = build_logprob_teacher(f"openai:some/teacher@{server.url}", tokenizer="tiny:llama", cache_path=cache)
        repeated = again.score(sequences, starts, top_k=4)
        assert len(server.bodies) == seen and again.stats.calls == 0 and again.stats.cache_hits == 2
        assert all((a.ids == b.ids).all() and (a.logprobs == b.logprobs).all() for a, b in zip(got, repeated))
        # more than the server's --max-logprobs: each request fails with the server's words
        with pytest.raises(TeacherError, match="greater than max allowed: 20"):
            again.score(sequences, starts, top_k=32)
        again.close()

    with FakeVLLM(tok, tokens_differ=True) as server:
        other = build_logprob_teacher(f"openai:some/teacher@{server.url}", tokenizer="tiny:llama", use_cache=False)
        with pytest.raises(MentorError, match="tokenizes differently from the student's tokenizer"):
            other.score(sequences, starts, top_k=4)


def test_transformers_serve_scores_given_tokens_or_is_refused_in_one_line(tmp_path, local):
    transformers_cli = Path(sys.executable).with_name("transformers")
    if not transformers_cli.exists():
        pytest.skip(f"no `transformers` command beside {sys.executable}")
    from mentor.models.tiny import build_tiny

    folder = tmp_path / "tiny-llama"
    build_tiny("llama", folder)
    port, log = _free_port(), tmp_path / "server.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with log.open("w") as out:
        proc = subprocess.Popen([str(transformers_cli), "serve", str(folder), "--host", "127.0.0.1", "--port",
                                 str(port)], stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        try:
            _wait(f"http://127.0.0.1:{port}/health", proc, log, timeout=60)
        except RuntimeError as err:
            pytest.skip(f"`transformers serve` did not start: {err}")
        teacher = build_logprob_teacher(f"openai:{folder}@http://127.0.0.1:{port}/v1", tokenizer=str(folder),
                                        use_cache=False, timeout=120)
        try:
            teacher.check()
        except MentorError as err:
            assert "does not return log-probabilities of given tokens" in str(err)
            import transformers

            pytest.skip(f"transformers serve {transformers.__version__} does not score given tokens (it ignores "
                        f"echo and logprobs on /v1/completions): {str(err)[:300]}")
        prompts, continuations = zip(*TEXTS)
        for g, w in zip(teacher.score_texts(prompts, continuations, top_k=5),
                        local.score_texts(prompts, continuations, top_k=5)):
            np.testing.assert_allclose(g.token_logprobs, w.token_logprobs, atol=1e-4)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# -- offline sparse logit distillation from a served teacher -------------------------------------------
def test_offline_logit_distillation_from_a_served_teacher(mentor_server, tmp_path):
    import mentor

    train = write_jsonl(tmp_path / "train.jsonl", shift_task(12, 1))
    evaluation = write_jsonl(tmp_path / "eval.jsonl", shift_task(4, 2))
    common = dict(student="tiny:llama-small", data=str(train), evaluation_data=str(evaluation), offline_logits=True,
                  top_k=16, shard_examples=8, train_steps=2, batch_size=4, evaluation_interval=2,
                  early_stopping=False, checkpoint_selection=False, bf16="off", seed=0)
    served = mentor.run("logit", teacher=f"openai:tiny:llama@{mentor_server}", output=str(tmp_path / "served"),
                        **common)
    assert served.steps_run == 2
    assert (tmp_path / "served" / "teacher_logits" / "teacher_cache.sqlite").exists()
    in_process = mentor.run("logit", teacher="tiny:llama", output=str(tmp_path / "local"), **common)
    for split in ("train", "eval"):
        index = json.loads((tmp_path / "served" / "teacher_logits" / split / "index.json").read_text())
        assert index["complete"] and index["key"]["teacher"].startswith("openai:tiny:llama@")
        for shard in sorted((tmp_path / "served" / "teacher_logits" / split).glob("shard-*.safetensors")):
            got, want = load_file(shard), load_file(tmp_path / "local" / "teacher_logits" / split / shard.name)
            assert torch.equal(got["offsets"], want["offsets"]) and torch.equal(got["indices"], want["indices"])
            torch.testing.assert_close(got["logprobs"], want["logprobs"], atol=1e-5, rtol=0)
    assert in_process.steps_run == 2

    # a temperature other than 1, or a method that needs the teacher's weights: refused in one line
    with pytest.raises(Exception, match="temperature 1"):
        mentor.run("logit", teacher=f"openai:tiny:llama@{mentor_server}", temperature=2.0,
                   output=str(tmp_path / "hot"), **common)
    with pytest.raises(Exception, match="gives top-k log-probs only"):
        mentor.run("feature", teacher=f"openai:tiny:llama@{mentor_server}", student="tiny:llama-small",
                   data=str(train), output=str(tmp_path / "feature"), train_steps=1)


def test_the_whitebox_config_knows_the_served_teacher_specs():
    # the config reads specs without importing the teachers (they pull in torch): one list, kept equal
    from mentor.teachers.openai_compat import ROUTES
    from mentor.whitebox.config import SERVED_TEACHERS

    assert set(SERVED_TEACHERS) == set(ROUTES)
