"""Batch prediction on tiny models: a killed run resumes and generates only the missing rows, the
output appears atomically and equals an uninterrupted run's, a bad output path fails before any
model loads; and the one generation path every prediction and local teacher takes."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from typing import ClassVar

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from conftest import write_jsonl
from mentor.errors import MentorError
from mentor.models import load_model
from mentor.serving import predict as predict_module
from mentor.serving.answer_log import AnswerLog, log_path
from mentor.serving.generate import GeneratedText, SamplingParams, generate
from mentor.serving.pool import adapter_names
from mentor.serving.predict import Predictor, predict_file

WORDS = ["hello", "abc", "The quick brown fox", "12345", "zz top", "a", "what is 2+2?"]
SETTINGS = {"max_new_tokens": 6, "batch_size": 3, "progress": False}


class Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs, not even `except Exception` handlers."""


@pytest.fixture
def inputs(tmp_path):
    rows = [{"id": i, "input_text": w} for i, w in enumerate(WORDS)]
    rows.insert(3, "")  # a blank line: line numbers and row positions differ from here on
    rows.append({"id": 99, "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ref"}]})
    return write_jsonl(tmp_path / "in.jsonl", rows)


@pytest.fixture
def spy(monkeypatch):
    """Records the prompts each prediction generates for; `kill_after = k` dies after k answers."""

    class Spy:
        calls: ClassVar[list[list[str]]] = []
        kill_after: int | None = None

    real = predict_module.generate_stream

    def generate_stream(loaded, prompts, params, **options):
        Spy.calls.append(list(prompts))
        for done, item in enumerate(real(loaded, prompts, params, **options)):
            if done == Spy.kill_after:
                raise Killed
            yield item

    monkeypatch.setattr(predict_module, "generate_stream", generate_stream)
    return Spy


def test_killed_prediction_resumes_only_missing_rows(tmp_path, inputs, spy):
    reference = predict_file("tiny:llama", str(inputs), str(tmp_path / "ref.jsonl"), **SETTINGS)
    ref_rows = [json.loads(line) for line in reference.read_text().splitlines()]
    assert [r.get("id") for r in ref_rows] == [*range(len(WORDS)), 99]
    assert all(isinstance(r["prediction"], str) for r in ref_rows)

    out = tmp_path / "sub" / "out.jsonl"
    partial = log_path(out)
    spy.kill_after = 4  # in the middle of the second batch of 3
    with pytest.raises(Killed):
        predict_file("tiny:llama", str(inputs), str(out), **SETTINGS)
    assert not out.exists()  # nothing half-written where the output goes
    saved = partial.read_text().splitlines()
    assert partial.name == ".out.jsonl.partial" and len(saved) == 1 + 4  # the header and 4 answers
    with partial.open("a") as f:
        f.write('{"line": 9, "predic')  # killed in the middle of writing a line

    spy.kill_after = None
    assert predict_file("tiny:llama", str(inputs), str(out), **SETTINGS) == out
    predictor = Predictor("tiny:llama")
    answered = {json.loads(line)["line"] for line in saved[1:]}
    lines = [n for n, line in enumerate(inputs.read_text().splitlines(), 1) if line.strip()]
    missing = [json.loads(inputs.read_text().splitlines()[n - 1]) for n in lines if n not in answered]
    assert len(missing) == len(lines) - 4
    # the rerun generated for exactly the rows the killed run had not answered, nothing else
    expected = [predictor.render(r.get("input_text") or r["messages"][:-1]) for r in missing]
    assert spy.calls[-1] == expected
    assert out.read_bytes() == reference.read_bytes()
    assert not partial.exists() and sorted(p.name for p in out.parent.iterdir()) == ["out.jsonl"]


def test_partial_answers_of_other_settings_or_input_are_not_reused(tmp_path, inputs, spy):
    out = tmp_path / "out.jsonl"
    spy.kill_after = 3
    with pytest.raises(Killed):
        predict_file("tiny:llama", str(inputs), str(out), **SETTINGS)
    spy.kill_after = None
    n_rows = len(WORDS) + 1
    predict_file("tiny:llama", str(inputs), str(out), **{**SETTINGS, "max_new_tokens": 5})
    assert len(spy.calls[-1]) == n_rows  # other settings: every row generated again

    spy.kill_after = 3
    with pytest.raises(Killed):
        predict_file("tiny:llama", str(inputs), str(out), **SETTINGS)
    inputs.write_text(inputs.read_text().replace("hello", "hallo"))
    spy.kill_after = None
    predict_file("tiny:llama", str(inputs), str(out), **SETTINGS)
    assert len(spy.calls[-1]) == n_rows  # another input file: every row generated again
    assert json.loads(out.read_text().splitlines()[0])["input_text"] == "hallo"
    assert not log_path(out).exists()


def test_bad_output_path_fails_before_the_model_loads(tmp_path, inputs, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(predict_module, "Predictor", no_model)
    monkeypatch.setattr(predict_module, "resolve", no_model)
    folder = tmp_path / "results"
    folder.mkdir()
    with pytest.raises(MentorError, match="is a directory") as err:
        predict_file("tiny:llama", str(inputs), str(folder))
    assert str(folder) in str(err.value) and "\n" not in str(err.value)
    blocker = tmp_path / "file.txt"
    blocker.write_text("")
    with pytest.raises(MentorError, match="not writable") as err:
        predict_file("tiny:llama", str(inputs), str(blocker / "out.jsonl"))
    assert str(blocker / "out.jsonl") in str(err.value) and "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "in.jsonl", "results"]


def test_generation_reports_token_counts_and_finish_reasons():
    loaded = load_model("tiny:llama")  # repeats the prompt's last character
    [[plain], [digits]] = generate(loaded, ["hello", "12345"], SamplingParams(max_new_tokens=10))
    assert plain == GeneratedText("o" * 10, prompt_tokens=5, completion_tokens=10, finish_reason="length")
    assert digits.text == "5" * 10 and digits.finish_reason == "length"
    # a stop string ends the row and cuts the text; the prompt's own "o" does not count towards it
    [[cut]] = generate(loaded, ["hello"], SamplingParams(max_new_tokens=10, stop=("ooo",)))
    assert cut == GeneratedText("", prompt_tokens=5, completion_tokens=3, finish_reason="stop")
    [copies] = generate(loaded, ["hello"], SamplingParams(max_new_tokens=4, n=3))  # greedy: n equal answers
    assert [c.text for c in copies] == ["oooo"] * 3
    sampled = generate(loaded, ["hello", "abc"], SamplingParams(max_new_tokens=6, temperature=1.5, top_k=0, n=2, seed=7))
    again = generate(loaded, ["hello", "abc"], SamplingParams(max_new_tokens=6, temperature=1.5, top_k=0, n=2, seed=7))
    assert sampled == again and all(len(outs) == 2 for outs in sampled)


@pytest.mark.parametrize("ref", ["tiny:llama", "tiny:t5"])
def test_batched_predictions_equal_one_at_a_time_generation(ref):
    """Left padding (causal) and the seq2seq path give each prompt what it gets alone, unpadded."""
    predictor = Predictor(ref)
    tok, seq2seq = predictor.tokenizer, predictor.loaded.is_seq2seq
    prompts = [predictor.render(w) for w in WORDS]
    alone = []
    for prompt in prompts:
        enc = tok([prompt], return_tensors="pt", add_special_tokens=seq2seq)
        with torch.inference_mode():
            out = predictor.model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
        alone.append(tok.decode(out[0, 1 if seq2seq else enc["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    assert predictor.generate(prompts, max_new_tokens=6, batch_size=3) == alone


def test_batches_stay_whole_while_other_threads_count_tokens():
    """A server counts prompt tokens on request threads while its engine generates a padded batch
    with the same tokenizer; that must not switch the batch's padding or truncation off mid-call."""
    loaded = load_model("tiny:llama")
    prompts = [w * 3 for w in WORDS]
    expected = generate(loaded, prompts, SamplingParams(max_new_tokens=2), batch_size=len(prompts))
    [[truncated]] = generate(loaded, ["abcdefgh"], SamplingParams(max_new_tokens=2), max_input_tokens=3)
    assert truncated.prompt_tokens == 3 and truncated.text == "hh"  # as in training, a causal prompt keeps its end
    stop = threading.Event()

    def count_tokens():
        while not stop.is_set():
            loaded.tokenizer("a prompt to count", add_special_tokens=False)

    counters = [threading.Thread(target=count_tokens) for _ in range(2)]
    for thread in counters:
        thread.start()
    try:
        for _ in range(20):
            assert generate(loaded, prompts, SamplingParams(max_new_tokens=2), batch_size=len(prompts)) == expected
            assert generate(loaded, ["abcdefgh"], SamplingParams(max_new_tokens=2), max_input_tokens=3) == [[truncated]]
    finally:
        stop.set()
        for thread in counters:
            thread.join()


def test_a_base_whose_last_adapter_was_evicted_still_answers(tmp_path):
    """Evicting a base's only adapter leaves the plain base model, not a PEFT model whose active
    adapter is gone (every later batch on that base failed with a KeyError)."""
    from peft import LoraConfig, get_peft_model

    from mentor.serving.pool import ModelPool, Servable

    folder = tmp_path / "adapter"
    peft = get_peft_model(load_model("tiny:llama").model, LoraConfig(r=2, target_modules="all-linear",
                                                                     init_lora_weights=False))
    peft.save_pretrained(folder)
    (folder / "mentor_base.json").write_text(json.dumps({"base_model": "tiny:llama"}))
    base, adapter, other = Servable.of("tiny:llama"), Servable.of(str(folder)), Servable.of("tiny:t5")

    def answer(pool, servable):
        loaded, names = pool.acquire([servable])
        try:
            return generate(loaded, ["hello"], SamplingParams(max_new_tokens=3),
                            adapter_names=adapter_names(loaded, names))[0][0].text
        finally:
            pool.release([servable])

    sizes = ModelPool()
    expected = {s: answer(sizes, s) for s in (base, adapter, other)}
    assert expected[adapter] != expected[base]
    used = sizes.used_bytes  # all three; room for the two bases, not for the adapter as well
    pool = ModelPool(memory_budget_bytes=used - sizes._bases[adapter.base].adapters[adapter.adapter_name] // 2)
    assert answer(pool, adapter) == expected[adapter]
    assert answer(pool, other) == expected[other]  # evicts the adapter, the base stays
    assert pool.loaded_names() == {base.base: [], other.base: []}
    assert answer(pool, base) == expected[base]
    assert answer(pool, adapter) == expected[adapter]  # and it loads again on demand

    # while a batch generates on a base (here one without adapters), loading another model must not
    # delete the base's adapter layers under it: the eviction waits for the batch to end
    pool.acquire([base])
    model = pool._bases[base.base].loaded.model
    pool.base_of(other)  # an HTTP thread preparing a request for the other model
    assert pool._bases[base.base].loaded.model is model and pool.loaded_names()[base.base] == [adapter.adapter_name]
    pool.release([base])


def test_answer_log_keeps_odd_characters_and_drops_a_torn_line(tmp_path):
    partial = tmp_path / ".out.jsonl.partial"
    records = [{"key": "k"}, {"line": 1, "answer": {"prediction": "a\u2028b\x85c"}},
               {"line": 3, "answer": {"prediction": "d"}}]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    partial.write_text(text + '{"line": 4, "ans', encoding="utf-8")
    assert AnswerLog(partial, "k").answers == {r["line"]: r["answer"] for r in records[1:]}
    assert partial.read_text(encoding="utf-8") == text  # ready to append to
    assert AnswerLog(partial, "other key", {"model": "m"}).answers == {}
    assert json.loads(partial.read_text()) == {"model": "m", "key": "other key"}


def test_token_counts_do_not_depend_on_batch_mates_when_padding_is_the_eos_token():
    """SmolLM2, GPT-2 and Llama 3 pad with their EOS token: a row a stop string ended is padded
    while its batch mates go on, and that padding is not a generated token."""
    loaded = load_model("tiny:llama")  # a fresh copy: changing its tokenizer changes no other test's
    loaded.tokenizer.pad_token = loaded.tokenizer.eos_token
    params = SamplingParams(max_new_tokens=10, stop=("ooo",))
    [[alone]] = generate(loaded, ["hello"], params)
    [[together], [longer]] = generate(loaded, ["hello", "12345"], params)
    assert alone.completion_tokens == together.completion_tokens == 3
    assert longer.completion_tokens == 10 and longer.finish_reason == "length"


def test_a_seeded_request_answers_the_same_whatever_else_is_served():
    from mentor.serving.engine import Engine, Ticket
    from mentor.serving.pool import ModelPool, Servable

    engine = Engine(ModelPool(), window_seconds=0.2)
    params = SamplingParams(max_new_tokens=8, temperature=1.0, top_k=0, seed=42)
    tiny = Servable.of("tiny:llama")
    try:
        alone = engine.submit(Ticket(tiny, "hello", params)).result(timeout=120)
        together = [engine.submit(Ticket(tiny, "hello", params)) for _ in range(3)]
        assert [t.result(timeout=120) for t in together] == [alone] * 3
    finally:
        engine.close()


def test_batch_prediction_cuts_what_exceeds_the_context_and_says_which_answers_were_cut(tmp_path, caplog):
    """tiny:llama's context is 2048 tokens: a longer input is cut as training cuts it (and said),
    never fed past the model's positions; answers that reached max_new_tokens say so."""
    rows = [{"input_text": "hello"}, {"input_text": "ab " * 1500}]
    src, dst = write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    predict_file("tiny:llama", str(src), str(dst), max_new_tokens=4, progress=False)
    out = [json.loads(line) for line in dst.read_text().splitlines()]
    assert [r["finish_reason"] for r in out] == ["length", "length"]
    assert "1 input(s) longer than 2044 tokens" in caplog.text and f"{src}:2" in caplog.text
    assert "2 of 2 predictions reached --max-new-tokens (4)" in caplog.text


def test_a_stream_whose_client_left_stops_generating():
    """The server sets `gone` when a streaming client disconnects: the batch ends at the next token
    instead of computing an answer nobody reads (what a client that gives up on a slow answer
    expects, mentor's own teacher client among them)."""
    from mentor.serving.engine import Engine, Ticket
    from mentor.serving.pool import ModelPool, Servable

    engine = Engine(ModelPool())
    try:
        ticket = engine.submit(Ticket(Servable.of("tiny:llama"), "hello", SamplingParams(max_new_tokens=1500),
                                      stream=True))
        deltas = ticket.deltas(timeout=120)
        next(deltas)
        ticket.gone.set()
        kind, [output] = next(kind_done for kind_done in deltas if kind_done[0] == "done")
        assert output.completion_tokens < 100 and output.finish_reason == "length"
        gone = Ticket(Servable.of("tiny:llama"), "hello", SamplingParams(max_new_tokens=8))
        gone.gone.set()
        engine.submit(gone)  # left before its turn: never generated
        fresh = engine.submit(Ticket(Servable.of("tiny:llama"), "hello", SamplingParams(max_new_tokens=2)))
        assert fresh.result(timeout=120)[0].completion_tokens == 2 and gone.events.empty()
    finally:
        engine.close()


def test_context_limits_count_what_generation_feeds():
    """An encoder-decoder's answer has positions of its own: its prompt alone must fit (T5 configs
    say n_positions 512); a causal model's prompt and answer share the context."""
    t5 = Predictor("tiny:t5")
    t5.loaded.model.config.n_positions = 64
    assert t5.input_limit(max_new_tokens=512) == 64 and t5.room(["hello"]) is None
    assert t5.overflow(["hello"], max_new_tokens=512) is None
    assert "more than the model's context of 64" in t5.overflow(["a b c " * 40], max_new_tokens=1)
    llama = Predictor("tiny:llama")  # context 2048
    prompt = llama.render("hello")
    assert llama.room([prompt]) == 2048 - llama.prompt_tokens(prompt)
    assert llama.overflow([prompt], max_new_tokens=llama.room([prompt])) is None
    assert llama.overflow([prompt], max_new_tokens=llama.room([prompt]) + 1) is not None


def test_a_reward_model_is_not_predicted_with_but_scores(tmp_path, capsys):
    """`mentor predict` on a reward model refuses in one line (it generated through its score head);
    `mentor score` and `mentor.score` give its scores, as `RewardModel` scores in RLHF."""
    import mentor
    from conftest import reward_model_folder
    from mentor.cli import main
    from mentor.rlhf.reward import RewardModel

    job = tmp_path / "rm-job"
    folder = reward_model_folder(job / "model")
    (job / "result.json").write_text("{}")  # a job folder: the reference resolves to its model
    assert main(["predict", str(job), "abc"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is a reward model" in err and "mentor score" in err
    with pytest.raises(MentorError, match="is a reward model"):
        Predictor(str(folder))

    expected = RewardModel(str(folder)).score(["abc", "abc"], ["bcd", "zzz"])
    assert mentor.score(str(job), "abc", ["bcd", "zzz"]) == pytest.approx(expected, abs=1e-5)
    assert main(["score", str(job), "--prompt", "abc", "--response", "bcd", "--response", "zzz"]) == 0
    printed = [float(x) for x in capsys.readouterr().out.split()]
    assert printed == pytest.approx(expected, abs=1e-4)
    rows = write_jsonl(tmp_path / "answers.jsonl", [{"input_text": "abc", "response": "bcd"},
                                                    {"messages": [{"role": "user", "content": "abc"}],
                                                     "response": "zzz"}])
    assert main(["score", str(job), "--input", str(rows), "--output", str(tmp_path / "scored.jsonl")]) == 0
    scored = [json.loads(line) for line in (tmp_path / "scored.jsonl").read_text().splitlines()]
    assert [r["score"] for r in scored] == pytest.approx(expected, abs=1e-5)


def test_seeded_requests_batch_together_and_a_seeded_sample_does_not_depend_on_its_batch():
    """Evaluation harnesses send a seed with every (greedy) request: a seed changes nothing for greedy
    decoding, so such requests share a batch (they ran one batch each). Seeded sampled requests batch
    too, each row drawing from its own generator: the same text alone and among others."""
    from mentor.serving.engine import Engine, Ticket
    from mentor.serving.pool import ModelPool, Servable

    engine = Engine(ModelPool(), window_seconds=0.3)
    tiny = Servable.of("tiny:llama")
    greedy = [SamplingParams(max_new_tokens=6, seed=seed) for seed in range(6)]
    sampled = SamplingParams(max_new_tokens=8, temperature=1.0, top_k=0, seed=7)
    try:
        expected = [engine.submit(Ticket(tiny, w, SamplingParams(max_new_tokens=6))).result(timeout=120)
                    for w in WORDS[:6]]
        before = engine.batches
        tickets = [engine.submit(Ticket(tiny, w, p)) for w, p in zip(WORDS, greedy)]
        assert [t.result(timeout=120) for t in tickets] == expected
        assert engine.batches - before == 1  # six seeds, one batch

        alone = engine.submit(Ticket(tiny, "hello", sampled)).result(timeout=120)
        before = engine.batches
        mates = [SamplingParams(max_new_tokens=8, temperature=1.0, top_k=0, seed=s) for s in (None, 8, 9)]
        tickets = [engine.submit(Ticket(tiny, w, p)) for w, p in zip(["abc", "zz top", "12345"], mates)]
        seeded = engine.submit(Ticket(tiny, "hello", sampled))
        tickets.append(engine.submit(Ticket(tiny, "hello", dataclasses.replace(sampled, seed=8))))
        assert seeded.result(timeout=120) == alone
        assert tickets[-1].result(timeout=120) != alone  # another seed, another draw
        assert engine.batches - before == 1
    finally:
        engine.close()


def test_a_model_in_use_is_held_in_a_shared_pool():
    """A Predictor on a shared pool (a server's) hands its model out only while it is held: the
    model stays loaded under the budget's pressure until the block ends. (`model` released it
    before returning it, so another request could evict it while the caller still used it.)"""
    from mentor.serving.pool import ModelPool, Servable

    sizes = ModelPool()
    llama, t5 = Servable.of("tiny:llama"), Servable.of("tiny:t5")
    sizes.base_of(llama)
    pool = ModelPool(memory_budget_bytes=sizes.used_bytes + 1)  # room for one of the two
    predictor = Predictor(llama, pool=pool)
    with pytest.raises(MentorError, match="held"):
        _ = predictor.model
    with predictor.held() as model:
        pool.acquire([t5])  # another request, for another model
        pool.release([t5])
        assert llama.base in pool.loaded_names() and pool._bases[llama.base].loaded.model is model
    assert predictor.parameters == sum(p.numel() for p in model.parameters())
    assert Predictor("tiny:llama").model is not None  # a pool of its own evicts nothing


def test_a_deleted_model_a_batch_still_uses_is_unloaded_when_the_batch_ends(tmp_path):
    import shutil

    from mentor.models import resolve
    from mentor.serving.pool import ModelPool, Servable

    folder = tmp_path / "job" / "model"
    shutil.copytree(resolve("tiny:llama"), folder)
    model = Servable.of(str(folder))
    pool = ModelPool()
    pool.acquire([model])  # a batch generating on it
    pool.unload(tmp_path / "job")
    assert model.base in pool.loaded_names()  # not pulled from under the batch
    pool.release([model])
    assert pool.loaded_names() == {} and pool.used_bytes == 0


def test_a_pruned_mentor_model_is_prompted_as_its_source_learned(tmp_path):
    """prune: keeps the source's record: a step-by-step student made smaller still gets its task
    prefix and its prompt format (the record was once dropped, and the pruned model was prompted with
    the tokenizer's chat template and no prefix)."""
    import shutil

    from mentor.model_record import ModelRecord
    from mentor.models import resolve
    from mentor.serving.predict import Predictor

    source = tmp_path / "student"
    shutil.copytree(resolve("tiny:llama"), source)
    ModelRecord(kind="step-by-step", base_model="tiny:llama", method="step-by-step", tuning="full",
                use_chat_template=False, task="math", task_prefix="[label] ", rationale_prefix="[rationale] ").write(source)
    pruned = resolve(f"prune:{source}:layers=0")
    record = ModelRecord.read(pruned)
    assert (record.task_prefix, record.use_chat_template, record.base_model) == ("[label] ", False, str(source))
    assert record.model_extra["pruned_layers"] == [0]
    assert Predictor(f"prune:{source}:layers=0").render("2 + 3?") == Predictor(str(source)).render("2 + 3?")
