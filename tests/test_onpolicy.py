"""On-policy distillation (the `on-policy` kind) and `prune:` students, on tiny models.

The teacher is tiny:llama tuned on the letter-shift task (peaked next-token distributions); the
student is that teacher with one of its two layers dropped (`prune:`). Every measurement is made by
this file's own code, not read back from the recipe: the reverse KL to the teacher on the student's
samples of held-out prompts, and the tuning loss a supervised step must equal.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import mentor
from conftest import shift_task, sigkill_when, write_jsonl
from mentor.errors import DataValidationError, MentorError


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    d = tmp_path_factory.mktemp("onpolicy")
    train = write_jsonl(d / "train.jsonl", shift_task(96, 1))
    mentor.tune(model="tiny:llama", data=str(train), output=str(d / "teacher"), tuning="full", train_steps=60,
                batch_size=16, learning_rate_multiplier=60, early_stopping=False, checkpoint_selection=False)
    return {"teacher": str(d / "teacher"), "student": f"prune:{d / 'teacher'}:layers=0", "train": train,
            "valid": write_jsonl(d / "valid.jsonl", shift_task(10, 2)),
            "held_out": [r["input_text"] for r in shift_task(12, 3)]}


def prompt_ids(tokenizer, text: str) -> list[int]:
    """A prompt as tuning encodes its input (the chat template of the tiny models)."""
    from mentor.data.encode import encode
    from mentor.data.formats import parse_row

    ex, _ = parse_row({"input_text": text, "output_text": "x"})
    row = encode(ex, tokenizer, is_seq2seq=False, use_chat_template=True, max_input_tokens=256, max_output_tokens=8)
    return row["input_ids"][: row["labels"].index(next(t for t in row["labels"] if t != -100))]


def reverse_kl(student_ref: str, teacher_ref: str, texts: list[str], samples: int = 4, new_tokens: int = 8) -> float:
    """KL(student || teacher) per sampled token, on the student's own samples of `texts` (seeded)."""
    from mentor.models import load_model

    student, teacher = load_model(student_ref), load_model(teacher_ref)
    torch.manual_seed(0)
    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([prompt_ids(student.tokenizer, text)] * samples)
            out = student.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0,
                                         top_k=0, top_p=1.0, max_new_tokens=new_tokens,
                                         pad_token_id=student.tokenizer.pad_token_id)
            for seq in out:
                completion = seq[ids.size(1):]
                eos = (completion == student.tokenizer.eos_token_id).nonzero()
                n = int(eos[0]) + 1 if len(eos) else len(completion)
                full = seq[: ids.size(1) + n].unsqueeze(0)
                positions = slice(ids.size(1) - 1, full.size(1) - 1)  # the logits predicting the completion
                s = F.log_softmax(student.model(full).logits[0, positions].float(), -1)
                t = F.log_softmax(teacher.model(full).logits[0, positions].float(), -1)
                total += (s.exp() * (s - t)).sum().item()
                count += n
    return total / count


def metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_on_policy_distillation_lowers_the_reverse_kl_to_the_teacher(task, tmp_path):
    before = reverse_kl(task["student"], task["teacher"], task["held_out"])
    result = mentor.run("on-policy", model=task["student"], teacher=task["teacher"], data=str(task["train"]),
                        evaluation_data=str(task["valid"]), output=str(tmp_path / "job"), train_steps=30,
                        batch_size=8, max_output_tokens=8, evaluation_interval=10, learning_rate_multiplier=20)
    after = reverse_kl(result.model_path, task["teacher"], task["held_out"])
    assert after < 0.6 * before, (before, after)
    rows = metrics(tmp_path / "job")
    assert rows[0]["step"] == 0 and "eval_divergence" in rows[0]  # measured before the first step
    train_rows = [r for r in rows if "train_divergence" in r]
    assert len(train_rows) == 30 and all(r["train_sampled_length"] > 0 and r["train_teacher_logprob"] < 0
                                         for r in train_rows)
    assert result.method == "on-policy" and result.metrics["eval_divergence"] < rows[0]["eval_divergence"]
    assert result.extra["alignment"] == "exact"  # one tokenizer: the exact path, token by token
    assert (tmp_path / "job" / "tensorboard").is_dir() and (tmp_path / "job" / "curves.png").exists()


def test_lmbda_mixes_supervised_steps_and_at_0_the_loss_is_the_tuning_loss(task, tmp_path):
    from mentor.data.encode import encode
    from mentor.data.formats import load_examples
    from mentor.models import load_model

    data = write_jsonl(tmp_path / "few.jsonl", shift_task(6, 7))
    mentor.run("on-policy", model=task["student"], teacher=task["teacher"], data=str(data),
               output=str(tmp_path / "sup"), train_steps=1, batch_size=6, max_output_tokens=8, lmbda=0,
               bf16="off")  # fp32, as the loss below is computed
    (first,) = metrics(tmp_path / "sup")
    assert first["train_on_policy_share"] == 0 and "train_divergence" not in first
    # the tuning loss of the whole batch at the student's starting weights: output tokens' cross-entropy
    student = load_model(task["student"])
    total, count = 0.0, 0
    with torch.no_grad():
        for ex in load_examples(data):
            row = encode(ex, student.tokenizer, is_seq2seq=False, use_chat_template=True, max_input_tokens=7168,
                         max_output_tokens=8)
            logits = student.model(torch.tensor([row["input_ids"]])).logits[0, :-1]
            labels = torch.tensor(row["labels"][1:])
            total += F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum").item()
            count += int((labels != -100).sum())
    assert first["train_objective"] == pytest.approx(total / count, rel=1e-4)
    assert first["train_supervised_loss"] == first["train_objective"]

    mentor.run("on-policy", model=task["student"], teacher=task["teacher"], data=str(data),
               output=str(tmp_path / "mixed"), train_steps=4, batch_size=2, max_output_tokens=8, lmbda=0.5)
    rows = metrics(tmp_path / "mixed")
    assert [r["train_on_policy_share"] for r in rows] == [0, 1, 0, 1]
    assert ["train_divergence" in r for r in rows] == [False, True, False, True]


def test_a_pruned_model_keeps_the_named_layers_of_its_source(task):
    from mentor.models import load_model, model_config

    source = load_model("tiny:llama-wide").model
    pruned = load_model("prune:tiny:llama-wide:layers=0,2").model
    assert model_config("prune:tiny:llama-wide:layers=0,2").num_hidden_layers == 2
    for new, old in ((0, 0), (1, 2)):
        kept, original = pruned.model.layers[new].state_dict(), source.model.layers[old].state_dict()
        assert kept.keys() == original.keys() and all(torch.equal(kept[k], original[k]) for k in kept)
        assert pruned.model.layers[new].self_attn.layer_idx == new  # the KV cache is indexed by the new order
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        assert torch.equal(pruned.state_dict()[name], source.state_dict()[name])
    ids = torch.tensor([[5, 6, 7]])
    assert pruned.generate(ids, max_new_tokens=3, do_sample=False).shape == (1, 6)  # it runs, cache and all
    # a mentor output is a reference like any other: the task's student is its teacher's first layer
    student, teacher = load_model(task["student"]).model, load_model(task["teacher"]).model
    assert student.config.num_hidden_layers == 1
    assert all(torch.equal(v, teacher.model.layers[0].state_dict()[k])
               for k, v in student.model.layers[0].state_dict().items())


@pytest.mark.parametrize("ref,message", [
    ("prune:tiny:llama-wide:layers=", "the layer list is empty"),
    ("prune:tiny:llama-wide:layers=0,3", "layer 3 is out of range: the model has 3 layers"),
    ("prune:tiny:llama-wide:layers=0-1,1", "layer 1 named twice"),
    ("prune:tiny:llama-wide:layers=2-1", "range '2-1' runs backwards"),
    ("prune:tiny:llama-wide:layers=one", "'one' is not a layer number"),
    ("prune:tiny:llama-wide", "is not prune:REF:layers=SPEC"),
    ("prune:tiny:t5:layers=0", "keeps decoder layers of a causal model"),
])
def test_a_bad_layer_list_is_refused_in_one_line(ref, message):
    from mentor.models import resolve

    with pytest.raises(MentorError, match=message) as err:
        resolve(ref)
    assert "\n" not in str(err.value)


def test_bad_on_policy_jobs_are_refused_in_one_line(task, tmp_path):
    job = dict(model=task["student"], teacher=task["teacher"], data=str(task["train"]), output=str(tmp_path / "j"),
               train_steps=1, max_output_tokens=4)
    # the parameters, checked as every job's are (mentor's list of the fields at fault)
    for changed, field in (({"lmbda": 1.5}, "lmbda"), ({"beta": -0.1}, "beta"), ({"teacher": " "}, "teacher")):
        with pytest.raises(MentorError, match=f"field '{field}'"):
            mentor.run("on-policy", **{**job, **changed})
    # what only the models tell, before any weights load: in one line
    for changed, message in (({"teacher": "tiny:t5"}, "encoder-decoder"),
                             ({"model": "prune:tiny:llama:layers=2"}, "layer 2 is out of range")):
        with pytest.raises(MentorError, match=message) as err:
            mentor.run("on-policy", **{**job, **changed})
        assert "\n" not in str(err.value).strip(), str(err.value)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"input_text": "abc"}])
    with pytest.raises(DataValidationError, match="output_text"):
        mentor.run("on-policy", **{**job, "data": str(bad)})


def test_the_kinds_help_is_its_own():
    from test_config_fields import _help

    text = _help(["distill", "--method", "on-policy"])
    assert all(flag in text for flag in ("--teacher", "--lmbda", "--beta", "--temperature", "--max-output-tokens"))
    assert not [f for f in ("--kd-ratio", "--divergence", "--offline-logits", "--on-policy-fraction", "--packing",
                            "--num-generations") if f + " " in text]


def test_a_killed_on_policy_job_resumes_from_its_last_checkpoint(task, tmp_path):
    from mentor.onpolicy.trainer import samples_at

    out = tmp_path / "job"
    job = dict(model=task["student"], teacher=task["teacher"], data=str(task["train"]), output=str(out),
               train_steps=8, batch_size=4, max_output_tokens=8, evaluation_interval=2, lmbda=0.5)
    argv = [sys.executable, "-m", "mentor.cli", "-q", "run", "on-policy"]
    for k, v in job.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sigkill_when(proc, lambda: (out / "checkpoints" / "checkpoint-4" / "trainer_state.json").exists(), 240,
                 "the second checkpoint")
    result = mentor.run("on-policy", **job)
    assert result.steps_run == 8
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    resumed = [e for e in events if e["type"] == "resumed"]
    assert resumed and resumed[0]["step"] >= 4
    rows = [r for r in metrics(out) if "train_on_policy_share" in r]
    assert max(r["step"] for r in rows) == 8 and (out / "model" / "mentor_model.json").exists()
    # the steps after the kill sample where the uninterrupted run would have: the share follows the step
    assert all(r["train_on_policy_share"] == samples_at(r["step"] - 1, 0.5) for r in rows)


# -- a served teacher: mentor's own server on loopback, scoring the student's samples by top-k --------
@pytest.fixture(scope="module")
def served_teacher(task, tmp_path_factory):
    """`mentor serve` of the task's teacher on loopback: its spec, openai:MODEL@URL."""
    import httpx
    from test_teachers_logprobs import _free_port, _wait

    tmp = tmp_path_factory.mktemp("served-teacher")
    port, log = _free_port(), tmp / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mentor.cli", "serve", task["teacher"], "--port", str(port),
                                 "--insecure-no-auth", "--data-dir", str(tmp / "d")], stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        url = f"http://127.0.0.1:{port}/v1"
        _wait(f"{url}/models", proc, log)
        name = httpx.get(f"{url}/models").json()["data"][0]["id"]
        yield f"openai:{name}@{url}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def record_scores(monkeypatch) -> list[dict]:
    """Each batch the served teacher scores during a job: the batch, and the requests it made and the
    answers it took from the cache for it."""
    from mentor.onpolicy.trainer import ServedTeacher

    seen, original = [], ServedTeacher.score

    def score(self, input_ids, attention_mask, completion_ids):
        calls, hits = self.teacher.stats.calls, self.teacher.stats.cache_hits
        scores = original(self, input_ids, attention_mask, completion_ids)
        seen.append({"input_ids": input_ids.clone(), "attention_mask": attention_mask.clone(),
                     "completion_ids": completion_ids.clone(), "calls": self.teacher.stats.calls - calls,
                     "cache_hits": self.teacher.stats.cache_hits - hits})
        return scores

    monkeypatch.setattr(ServedTeacher, "score", score)
    return seen


def topk_reverse_kl(student_ref: str, teacher_ref: str, batch: dict, k: int) -> float:
    """KL(student || teacher) per completion token of a batch, both distributions reduced to the
    teacher's top k tokens and one bucket for the rest of the mass; the teacher in this process."""
    from mentor.models import load_model

    ids, mask, completion = batch["input_ids"], batch["attention_mask"], batch["completion_ids"]
    length = completion.size(1)
    with torch.no_grad():
        s, t = (F.log_softmax(load_model(ref).model(input_ids=ids, attention_mask=mask).logits[:, -length - 1:-1]
                              .float(), -1) for ref in (student_ref, teacher_ref))
    t_top, top = t.topk(k, dim=-1)

    def with_rest(lp):
        return torch.cat([lp, (1 - lp.exp().sum(-1, keepdim=True)).clamp_min(1e-12).log()], dim=-1)

    keep = mask[:, -length:].bool()
    s_k, t_k = with_rest(s.gather(-1, top))[keep], with_rest(t_top)[keep]
    return ((s_k.exp() * (s_k - t_k)).sum() / keep.sum()).item()


def test_a_served_teacher_distils_by_its_top_k_log_probs(task, served_teacher, tmp_path, monkeypatch):
    scored = record_scores(monkeypatch)
    before = reverse_kl(task["student"], task["teacher"], task["held_out"])
    result = mentor.run("on-policy", model=task["student"], teacher=served_teacher, data=str(task["train"]),
                        output=str(tmp_path / "job"), train_steps=30, batch_size=8, max_output_tokens=8, top_k=16,
                        learning_rate_multiplier=20, bf16="off", seed=0)
    # the first step's divergence is the in-process teacher's top-16 reverse KL on the samples it scored
    first = next(r for r in metrics(tmp_path / "job") if "train_divergence" in r)
    assert first["step"] == 1 and len(scored) == 30
    want = topk_reverse_kl(task["student"], task["teacher"], scored[0], k=16)
    assert first["train_divergence"] == pytest.approx(want, abs=1e-3)
    # and it distils: the full reverse KL to the teacher on held-out prompts falls
    after = reverse_kl(result.model_path, task["teacher"], task["held_out"])
    assert after < 0.6 * before, (before, after)
    assert all(s["calls"] == 8 and s["cache_hits"] == 0 for s in scored)  # new samples are new requests
    assert not (tmp_path / "job" / "teacher_cache.sqlite").exists()  # only a resumed run would read it


def test_a_resumed_run_asks_the_served_teacher_nothing_it_already_answered(task, served_teacher, tmp_path,
                                                                           monkeypatch):
    from mentor.onpolicy.trainer import ServedTeacher

    scored = record_scores(monkeypatch)
    recording, dying = ServedTeacher.score, [True]

    def dies_at_the_third_step(self, *args):
        scores = recording(self, *args)
        if dying[0] and len(scored) == 3:  # after checkpoint-2, and after step 3's samples were scored and cached
            raise RuntimeError("the training process died")
        return scores

    monkeypatch.setattr(ServedTeacher, "score", dies_at_the_third_step)
    job = dict(model=task["student"], teacher=served_teacher, data=str(task["train"]), output=str(tmp_path / "job"),
               train_steps=5, batch_size=4, max_output_tokens=8, evaluation_interval=2, top_k=16, seed=0)
    with pytest.raises(Exception, match="died"):
        mentor.run("on-policy", **job)
    assert (tmp_path / "job" / "checkpoints" / "checkpoint-2").is_dir()
    assert [(s["calls"], s["cache_hits"]) for s in scored] == [(4, 0)] * 3
    killed = scored[2]
    scored.clear()
    dying[0] = False
    result = mentor.run("on-policy", **job)
    assert result.steps_run == 5 and len(scored) == 3  # steps 3, 4 and 5
    # step 3 again, sampled as before: every answer from the cache, no request
    assert torch.equal(scored[0]["completion_ids"], killed["completion_ids"])
    assert (scored[0]["calls"], scored[0]["cache_hits"]) == (0, 4)
    assert [(s["calls"], s["cache_hits"]) for s in scored[1:]] == [(4, 0)] * 2
    # the resumed run's requests: steps 4 and 5, and the first request's tokenizer check
    assert result.extra["teacher_requests"] == {"calls": 9, "cache_hits": 4}


def test_a_served_teacher_takes_temperature_1_and_the_students_tokenizer(task, served_teacher, tmp_path):
    job = dict(model=task["student"], teacher=served_teacher, data=str(task["train"]), output=str(tmp_path / "j"),
               train_steps=1, max_output_tokens=4)
    # checked with the job's parameters (mentor's list of the fields at fault)
    with pytest.raises(MentorError, match="served teacher's log-probs are at temperature 1"):
        mentor.run("on-policy", **job, temperature=0.7)
    # a student whose tokenizer is not the served teacher's (one more token, "teacher"): refused before
    # any step, in one line
    from mentor.models import load_model

    other = load_model(task["student"])
    other.tokenizer.add_tokens(["teacher"])
    other.model.resize_token_embeddings(len(other.tokenizer))
    other.model.save_pretrained(tmp_path / "other")
    other.tokenizer.save_pretrained(tmp_path / "other")
    with pytest.raises(MentorError, match="tokenizes differently") as err:
        mentor.run("on-policy", **{**job, "model": str(tmp_path / "other")})
    assert "\n" not in str(err.value).strip()
    assert not (tmp_path / "j" / "checkpoints").exists()


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_the_top_k_divergence_is_the_full_one_at_k_v_and_fillers_count_in_the_rest(beta):
    from mentor.onpolicy.trainer import TeacherScores, divergence_per_token
    from mentor.teachers.logprobs import FILL_LOGPROB

    torch.manual_seed(0)
    student, teacher = torch.randn(2, 3, 40), F.log_softmax(3 * torch.randn(2, 3, 40), -1)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    full = divergence_per_token(student, TeacherScores(teacher[..., 0], teacher), mask, beta, 1.0)
    top, ids = teacher.topk(40, dim=-1)
    assert divergence_per_token(student, TeacherScores(teacher[..., 0], top, ids), mask, beta, 1.0).item() == \
        pytest.approx(full.item(), rel=1e-5)
    # a server that sent 6 tokens where 8 were asked: the 2 filler columns (arbitrary ids at FILL_LOGPROB)
    # change nothing; the student's mass on those ids stays in the rest bucket
    top, ids = teacher.topk(6, dim=-1)
    six = divergence_per_token(student, TeacherScores(teacher[..., 0], top, ids), mask, beta, 1.0)
    filled = torch.cat([top, torch.full((2, 3, 2), FILL_LOGPROB)], -1)
    fillers = torch.cat([ids, (ids.max(-1, keepdim=True).values + torch.tensor([1, 2])) % 40], -1)
    got = divergence_per_token(student, TeacherScores(teacher[..., 0], filled, fillers), mask, beta, 1.0)
    assert got.item() == pytest.approx(six.item(), rel=1e-5) and six.item() <= full.item() + 1e-6


# -- checkpoint selection on the task metric of the validation set ----------------------------------
def test_a_task_job_selects_its_checkpoint_on_the_task_metric(task, tmp_path):
    from mentor.evaluation.evaluate import label_of
    from mentor.models import load_model
    from mentor.tasks.metrics import score

    # the shifted letters spaced, so that token F1 (extract's metric) gives partial credit and moves; the
    # supervised steps (lmbda 0.5) teach the spacing the teacher never learned
    def spaced(rows):
        return [{**r, "output_text": " ".join(r["output_text"])} for r in rows]

    train = write_jsonl(tmp_path / "train.jsonl", spaced(shift_task(96, 1)))
    valid_file = write_jsonl(tmp_path / "valid.jsonl", spaced(shift_task(10, 2)))
    # a task and evaluation data: the task's metric selects
    result = mentor.run("on-policy", model=task["student"], teacher=task["teacher"], data=str(train),
                        evaluation_data=str(valid_file), output=str(tmp_path / "job"), task="extract", lmbda=0.5,
                        train_steps=18, batch_size=8, max_output_tokens=12, evaluation_interval=3,
                        learning_rate_multiplier=20, early_stopping=False, keep_checkpoints=True, bf16="off")
    rows = [r for r in metrics(tmp_path / "job") if "eval_task_f1" in r]
    assert [r["step"] for r in rows] == [0, 3, 6, 9, 12, 15, 18]
    assert all("eval_divergence" in r and "eval_task_exact_match" in r for r in rows)  # divergence logged beside
    trained = [r for r in rows if r["step"] > 0]
    assert len({r["eval_task_f1"] for r in trained}) > 1, trained  # the metric moves: its arg-max means something
    best = max(trained, key=lambda r: r["eval_task_f1"])  # the first of equals, as the Trainer keeps it
    assert result.best_step == best["step"] and result.extra["selected_by"] == "eval_task_f1"
    # the logged metric is the checkpoint's greedy answers scored by the test itself
    checkpoint = load_model(str(tmp_path / "job" / "checkpoints" / f"checkpoint-{best['step']}"))
    valid = [json.loads(line) for line in valid_file.read_text().splitlines()]
    preds = []
    for row in valid:
        ids = torch.tensor([prompt_ids(checkpoint.tokenizer, row["input_text"])])
        out = checkpoint.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12,
                                        pad_token_id=checkpoint.tokenizer.pad_token_id)
        text = checkpoint.tokenizer.decode(out[0, ids.size(1):], skip_special_tokens=True)
        preds.append(label_of(text, "extract", row, None))
    want = score(preds, [r["output_text"] for r in valid], "extract")
    assert best["eval_task_f1"] == pytest.approx(want["f1"]) and best["eval_task_exact_match"] == want["exact_match"]


def test_selection_metric_defaults_to_the_task_with_evaluation_data(task):
    from mentor.onpolicy.config import OnPolicyConfig

    base = dict(model=task["student"], teacher=task["teacher"], data=str(task["train"]), output="o")
    assert OnPolicyConfig(**base).selection_metric == "divergence"
    assert OnPolicyConfig(**base, task="math").selection_metric == "divergence"  # nothing to score it on
    assert OnPolicyConfig(**base, task="math", evaluation_data=str(task["valid"])).selection_metric == "task"
    assert OnPolicyConfig(**base, task="math", evaluation_data=str(task["valid"]),
                          selection_metric="divergence").selection_metric == "divergence"
    with pytest.raises(ValueError, match="name the task"):
        OnPolicyConfig(**base, selection_metric="task")


# -- a teacher with another tokenizer: universal logit distillation on the answer text --------------
def merged_tokenizer():
    """A byte-level BPE tokenizer that is not the tiny models': its bytes in another order, and every
    pair of the task's letters one token ("bc", "de", ...), so the two tokenizations of an answer differ."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from mentor.models.tiny import CHATML_TEMPLATE, SPECIALS

    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet(), reverse=True):
        vocab[ch] = len(vocab)
    merges = [(a, b) for a in "abcdefghi" for b in "abcdefghi"]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>",
                                   unk_token="<unk>", bos_token="<|endoftext|>")
    fast.chat_template = CHATML_TEMPLATE
    return fast


@pytest.fixture(scope="module")
def other_teacher(task, tmp_path_factory):
    """A tiny Llama with the merged tokenizer, tuned on the letter-shift task like the task's teacher."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from mentor.models.tiny import TINY_CONFIGS

    d = tmp_path_factory.mktemp("other-teacher")
    tok = merged_tokenizer()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(
        vocab_size=len(tok), max_position_embeddings=2048, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id, tie_word_embeddings=True, **TINY_CONFIGS["llama"]))
    model.save_pretrained(d / "base")
    tok.save_pretrained(d / "base")
    mentor.tune(model=str(d / "base"), data=str(task["train"]), output=str(d / "teacher"), tuning="full",
                train_steps=60, batch_size=16, learning_rate_multiplier=60, early_stopping=False,
                checkpoint_selection=False)
    return str(d / "teacher")


def uld_at_shared_starts(student_ref: str, teacher_ref: str, texts: list[str], samples: int = 4,
                         new_tokens: int = 8) -> float:
    """The test's own ULD on the student's samples of `texts` (seeded): wherever a token of the answer
    starts on the same byte in both tokenizations, the L1 distance between the two next-token
    distributions there, each sorted (the shorter padded with zeros); averaged over those places."""
    from mentor.models import load_model

    student, teacher = load_model(student_ref), load_model(teacher_ref)
    assert student.tokenizer.get_vocab() != teacher.tokenizer.get_vocab()
    torch.manual_seed(0)
    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([prompt_ids(student.tokenizer, text)] * samples)
            t_prompt = prompt_ids(teacher.tokenizer, text)
            out = student.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0,
                                         top_k=0, top_p=1.0, max_new_tokens=new_tokens,
                                         pad_token_id=student.tokenizer.pad_token_id)
            for seq in out:
                completion = seq[ids.size(1):].tolist()
                if student.tokenizer.eos_token_id in completion:
                    completion = completion[: completion.index(student.tokenizer.eos_token_id)]
                answer = student.tokenizer.decode(completion)
                if not completion or not answer.isascii():
                    continue
                # ASCII: a character is a byte; the student's tokens are single bytes
                s_starts = {k: k for k in range(len(completion))}
                enc = teacher.tokenizer(answer, add_special_tokens=False, return_offsets_mapping=True)
                t_starts = {start: j for j, (start, _) in enumerate(enc["offset_mapping"])}
                s_full = torch.tensor([ids[0].tolist() + completion])
                t_full = torch.tensor([t_prompt + enc["input_ids"]])
                s = F.softmax(student.model(s_full).logits[0, ids.size(1) - 1: -1].float(), -1)
                t = F.softmax(teacher.model(t_full).logits[0, len(t_prompt) - 1: -1].float(), -1)
                for start in s_starts.keys() & t_starts.keys():
                    ps = s[s_starts[start]].sort(descending=True).values
                    pt = t[t_starts[start]].sort(descending=True).values
                    width = max(len(ps), len(pt))
                    total += (F.pad(ps, (0, width - len(ps))) - F.pad(pt, (0, width - len(pt)))).abs().sum().item()
                    count += 1
    assert count > 0
    return total / count


def test_a_teacher_with_another_tokenizer_distils_by_uld(task, other_teacher, tmp_path):
    before = uld_at_shared_starts(task["student"], other_teacher, task["held_out"])
    result = mentor.run("on-policy", model=task["student"], teacher=other_teacher, data=str(task["train"]),
                        evaluation_data=str(task["valid"]), output=str(tmp_path / "job"), train_steps=30,
                        batch_size=8, max_output_tokens=8, evaluation_interval=10, learning_rate_multiplier=20)
    assert result.extra["alignment"] == "uld"
    after = uld_at_shared_starts(result.model_path, other_teacher, task["held_out"])
    assert after < 0.8 * before, (before, after)
    rows = metrics(tmp_path / "job")
    train_rows = [r for r in rows if "train_divergence" in r]
    assert len(train_rows) == 30 and all(r["train_teacher_logprob"] < 0 for r in train_rows)
    assert result.metrics["eval_divergence"] < rows[0]["eval_divergence"]  # the ULD loss on the validation prompts
