"""The local teacher on tiny models: same text as a direct `model.generate`, cached, stop strings,
sampling, seq2seq; and the OpenAI teacher against the test server running the same tiny model."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from teacher_server import TeacherServer

from mentor.models import load_model
from mentor.teachers import GenerationParams, HFTeacher, RetryPolicy, build_teacher

PROMPTS = ["hello", "hi there, how are you", "What is 2+2?", "The quick brown fox", "12345"]


@pytest.fixture(scope="module")
def tiny():
    loaded = load_model("tiny:llama")
    loaded.tokenizer.padding_side = "left"
    return loaded


def direct(loaded, text: str, max_new_tokens: int, chat: bool) -> str:
    """One prompt at a time, unpadded: the reference the batched teacher must match."""
    tok = loaded.tokenizer
    if chat:
        text = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
    enc = tok([text], return_tensors="pt", add_special_tokens=not chat)
    with torch.inference_mode():
        out = loaded.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


@pytest.mark.parametrize("spec", ["hf-completions:tiny:llama", "hf:tiny:llama"])
def test_matches_direct_generate_and_caches(tiny, tmp_path, spec):
    params = GenerationParams(max_new_tokens=8)
    teacher = build_teacher(spec, cache_path=tmp_path / "c.sqlite", batch_size=3, progress=False)
    assert teacher.identity.startswith(spec + "#")  # the model folder's fingerprint
    out = teacher.complete(PROMPTS, params)
    chat = spec.startswith("hf:")
    assert [c.text for c in out] == [direct(tiny, p, 8, chat) for p in PROMPTS]
    assert all(c.tokens_out == 8 and c.tokens_in > 0 and c.finish_reason == "length" for c in out)
    assert teacher.stats.calls == len(PROMPTS) and teacher.stats.tokens_out == 8 * len(PROMPTS)

    again = build_teacher(spec, cache_path=tmp_path / "c.sqlite", progress=False)
    second = again.complete(PROMPTS, params)
    assert [c.text for c in second] == [c.text for c in out] and all(c.cached and c.cut_off for c in second)
    assert (again.stats.calls, again.stats.cache_hits) == (0, len(PROMPTS))
    assert again._loaded is None  # everything was cached: the model was never loaded


def test_stop_strings_cut_and_stop_early(tmp_path):
    teacher = HFTeacher("tiny:llama", chat=False, progress=False)
    [plain] = teacher.complete(["hello"], GenerationParams(max_new_tokens=10))
    assert plain.text == "o" * 10  # tiny:llama repeats the prompt's last character
    [cut] = teacher.complete(["hello"], GenerationParams(max_new_tokens=10, stop=["ooo"]))
    # stopped right at the stop string, and only one in the answer: the prompt's own last "o"
    # does not count (transformers' stop_strings would have stopped after "oo")
    assert cut.text == "" and cut.tokens_out == 3 and cut.finish_reason == "stop"


def test_sampling_n_and_seq2seq(tmp_path):
    torch.manual_seed(0)
    teacher = HFTeacher("tiny:llama", chat=False, cache=None, progress=False)
    out = teacher.complete(PROMPTS[:2], GenerationParams(max_new_tokens=6, temperature=1.0, n=3))
    assert len(out) == 6 and len({c.text for c in out}) > 1
    t5 = build_teacher("hf-completions:tiny:t5", cache_path=tmp_path / "c.sqlite", progress=False)
    assert t5._loaded is None
    out = t5.complete(PROMPTS[:3], GenerationParams(max_new_tokens=5, temperature=1.0, n=2))
    assert len(out) == 6 and all(isinstance(c.text, str) and c.tokens_out <= 5 for c in out)
    assert t5.loaded.is_seq2seq and t5.loaded.tokenizer.padding_side == "right"


def test_openai_teacher_on_a_server_running_the_tiny_model(tiny, tmp_path):
    """End to end over HTTP with a real model behind the server: same text as local generation."""
    with TeacherServer() as server:
        server.state.backend = "tiny"
        for kind, chat in [("openai-completions", False), ("openai", True)]:
            teacher = build_teacher(
                f"{kind}:tiny@{server.base_url}",
                cache_path=tmp_path / "c.sqlite",
                retry=RetryPolicy(backoff_base=0.01),
                progress=False,
            )
            out = teacher.complete(PROMPTS[:3], GenerationParams(max_new_tokens=6))
            assert [c.text for c in out] == [direct(tiny, p, 6, chat) for p in PROMPTS[:3]]
            assert all(c.tokens_out == 6 for c in out)


@pytest.mark.parametrize("spec", ["hf", "hf-completions"])
def test_a_reward_model_is_refused_as_a_teacher(tmp_path, spec):
    """A reward model loaded as a language model generates through its score head: refused in one line
    before anything loads, as `Predictor` refuses it (by mentor's record, or by its architecture)."""
    import json

    from conftest import reward_model_folder
    from mentor.errors import MentorError

    folder = reward_model_folder(tmp_path / "rm")
    with pytest.raises(MentorError, match=f"^{folder} is a reward model: it scores answers and does not generate"):
        build_teacher(f"{spec}:{folder}", cache_path=tmp_path / "cache.sqlite")
    (folder / "mentor_model.json").unlink()  # not mentor's: its architecture says what it is
    with pytest.raises(MentorError, match="is a reward model"):
        HFTeacher(str(folder))
    (folder / "mentor_model.json").write_text(json.dumps({"kind": "reward-model"}))
    with pytest.raises(MentorError, match="is a reward model"):
        HFTeacher(str(folder))
