"""White-box distillation on tiny models built from configs: no mocks, real Trainer runs.

The teacher is `tiny:llama` (2 layers, width 64) briefly tuned on a learnable task (shift each
letter by one), so its distribution differs clearly from an untrained model's; the student is
`tiny:llama-small` (1 layer, width 32), same byte vocabulary. For every method the student must
move toward the teacher on held-out inputs (the method's own distance, measured by the job's
evaluation at step 0 and at the end, falls, and ends below a run without the distillation loss)
and agree more often with the teacher's greedy output than the untrained student does.
"""

from __future__ import annotations

import json
import os
import re

import pytest
import torch

import mentor
from conftest import shift_task, write_jsonl
from mentor.data.encode import render_prompt
from mentor.errors import MentorError
from mentor.jobs import Job
from mentor.models import load_model
from mentor.recipes.whitebox import prepare
from mentor.whitebox import offline_logits as offline
from mentor.whitebox.config import LogitConfig, SelfConfig, config_for
from mentor.whitebox.losses import logit_divergence, teacher_topk, topk_divergence
from mentor.whitebox.vocab import check_vocabularies

STUDENT = "tiny:llama-small"
# The last model (not the best checkpoint), so the distances compared are those of the same step.
RUN = dict(train_steps=300, batch_size=16, learning_rate_multiplier=60, evaluation_interval=150, early_stopping=False,
           checkpoint_selection=False, bf16="off", seed=0)
DISTANCE = {"logit": "eval_kd_loss", "self": "eval_kd_loss", "feature": "eval_feature_loss",
            "relation": "eval_relation_loss"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("wb-data")
    return {"dir": d, "train": str(write_jsonl(d / "train.jsonl", shift_task(200, 1))),
            "eval": str(write_jsonl(d / "eval.jsonl", shift_task(20, 2))), "heldout": shift_task(24, 3)}


def _tuned(model: str, data, out, steps: int) -> str:
    r = mentor.tune(model=model, data=data["train"], evaluation_data=data["eval"], output=str(out), tuning="full",
             train_steps=steps, batch_size=16, learning_rate_multiplier=60, evaluation_interval=steps,
             early_stopping=False, bf16="off")
    return r.model_path


@pytest.fixture(scope="module")
def teacher(data):
    return _tuned("tiny:llama", data, data["dir"] / "teacher", 400)


def greedy_sequences(model_ref: str, rows: list[dict]) -> list[tuple[torch.Tensor, int]]:
    loaded = load_model(model_ref)
    model, tok = loaded.model.eval(), loaded.tokenizer
    seqs = []
    with torch.no_grad():
        for r in rows:
            prompt = render_prompt([{"role": "user", "content": r["input_text"]}], tok, True, "text")
            ids = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids
            out = model.generate(ids, max_new_tokens=len(r["input_text"]) + 1, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
            seqs.append((out, ids.shape[1]))
    return seqs


def agreement(model_ref: str, seqs) -> float:
    """Next-token accuracy of a model against the teacher's greedy continuations (teacher-forced)."""
    model = load_model(model_ref).model.eval()
    correct = total = 0
    with torch.no_grad():
        for ids, p in seqs:
            pred = model(ids).logits[0, p - 1:-1].argmax(-1)
            correct += int((pred == ids[0, p:]).sum())
            total += ids.shape[1] - p
    return correct / total


@pytest.fixture(scope="module")
def teacher_seqs(teacher, data):
    return greedy_sequences(teacher, data["heldout"])


@pytest.fixture(scope="module")
def untrained_agreement(teacher_seqs):
    return agreement(STUDENT, teacher_seqs)


def opened(cfg) -> Job:
    """The job's folder set up (identity, state) without holding its lock, for tests that drive `prepare`."""
    job = Job.open(cfg.method, cfg)
    job.close()
    return job


def run(data, name: str, **fields):
    fields = {**RUN, "data": data["train"], "evaluation_data": data["eval"], "output": str(data["dir"] / name),
              "student": STUDENT, **fields}
    return mentor.run(fields.pop("method"), **fields)


@pytest.mark.parametrize("method,extra", [
    ("logit", {"divergence": "forward_kl", "temperature": 2.0}),
    ("feature", {"feature_loss": "mse"}),
    ("relation", {}),
])
def test_student_moves_toward_teacher(method, extra, data, teacher, teacher_seqs, untrained_agreement):
    result = run(data, f"{method}", method=method, teacher=teacher, **extra)
    control = run(data, f"{method}-control", method=method, teacher=teacher, kd_ratio=0.0, **extra)
    key = DISTANCE[method]
    before, after = result.extra["eval_at_start"][key], result.metrics[key]
    after_control = control.metrics[key]
    acc = agreement(result.model_path, teacher_seqs)
    print(f"\n{method}: {key} {before:.4f} -> {after:.4f} (next-token loss only: {after_control:.4f}); "
          f"agreement with teacher greedy {untrained_agreement:.3f} -> {acc:.3f}")
    assert after < 0.8 * before
    assert after < after_control  # the distillation loss, not the data alone, moved the student
    assert acc > untrained_agreement + 0.1
    assert json.loads((data["dir"] / method / "result.json").read_text())["method"] == method
    assert "kd_ratio" in (data["dir"] / method / "README.md").read_text()


def test_self_distillation_from_tuned_copy(data, teacher, teacher_seqs):
    """The teacher is a tuned copy of the student's architecture (tiny:llama); the student learns from
    its distributions alone (kd_ratio 1: the data's labels are not used)."""
    base = agreement("tiny:llama", teacher_seqs)
    result = run(data, "self", method="self", teacher=teacher, student="tiny:llama", divergence="jsd", beta=0.5,
                 kd_ratio=1.0, train_steps=200)
    before, after = result.extra["eval_at_start"]["eval_kd_loss"], result.metrics["eval_kd_loss"]
    acc = agreement(result.model_path, teacher_seqs)
    print(f"\nself (tuned copy, JSD, kd_ratio 1): eval_kd_loss {before:.4f} -> {after:.4f}; agreement {base:.3f} -> {acc:.3f}")
    assert after < 0.8 * before
    assert acc > base + 0.1


def test_self_distillation_from_architecture_mismatch_fails(data, teacher):
    with pytest.raises(MentorError, match="one architecture"):
        run(data, "self-bad", method="self", teacher=teacher, train_steps=2)


def test_self_distillation_ema_teacher_checkpoints_and_resumes(data):
    out = data["dir"] / "self-ema"
    cfg = SelfConfig(**{**RUN, "train_steps": 6, "evaluation_interval": 3}, model=STUDENT,
                     tuning="lora", ema_decay=0.5, data=data["train"], evaluation_data=data["eval"], output=str(out))
    prep = prepare(cfg, opened(cfg))
    prep.trainer.train()
    ema = prep.trainer.method.ema
    student_params = dict(prep.trainer.model.named_parameters())
    trained = [n for n, p in student_params.items() if p.requires_grad]
    assert trained and all("lora" in n for n in trained)
    ema_params = dict(ema.named_parameters())
    assert any(not torch.equal(ema_params[n], student_params[n]) for n in trained)  # an average, not a copy
    logs = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["eval_kd_loss"] for r in logs if "eval_kd_loss" in r][0] == 0  # step 0: the EMA is the student
    assert [r["eval_kd_loss"] for r in logs if "eval_kd_loss" in r][-1] > 0
    ckpt = out / "checkpoints" / "checkpoint-6"
    assert (ckpt / "whitebox_state.pt").exists()
    # A resumed run gets the EMA back from the checkpoint, not a fresh copy of the student.
    again = prepare(cfg, opened(cfg), resume=True)
    again.trainer._load_from_checkpoint(str(ckpt))
    restored = dict(again.trainer.method.ema.named_parameters())
    assert all(torch.equal(restored[n], ema_params[n]) for n in trained)


def test_on_policy_steps_through_trl_gkd(data, teacher):
    result = run(data, "on-policy", method="logit", teacher=teacher, on_policy_fraction=0.5, max_new_tokens=8,
                 train_steps=30, evaluation_interval=30, divergence="reverse_kl")
    logs = [json.loads(l) for l in (data["dir"] / "on-policy" / "metrics.jsonl").read_text().splitlines()]
    shares = [r["train_on_policy_share"] for r in logs if "train_on_policy_share" in r]
    assert 0 < sum(shares) < len(shares)
    assert result.metrics["eval_kd_loss"] < result.extra["eval_at_start"]["eval_kd_loss"]


def _byte_tokenizer_with_specials(specials):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=specials[-1]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=specials[0], eos_token=specials[1],
                                   unk_token=specials[-1])


def test_vocabulary_mismatch_stops_before_training(data, teacher, tmp_path):
    # A teacher whose tokenizer has two more tokens (and a resized embedding to match).
    loaded = load_model(teacher)
    loaded.tokenizer.add_tokens(["<extra-1>", "<extra-2>"])
    loaded.model.resize_token_embeddings(len(loaded.tokenizer))
    other = tmp_path / "other-vocab-teacher"
    loaded.model.save_pretrained(other)
    loaded.tokenizer.save_pretrained(other)
    out = data["dir"] / "mismatch"
    with pytest.raises(MentorError) as err:
        run(data, "mismatch", method="logit", teacher=str(other))
    msg = str(err.value)
    assert str(other) in msg and STUDENT in msg and "263" in msg and "261" in msg
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()
    # Same size, different tokens: also refused, with both names and sizes.
    student_tok = load_model(STUDENT).tokenizer
    swapped = _byte_tokenizer_with_specials(["<pad>", "<|im_end|>", "<|im_start|>", "<|endoftext|>", "<unk>"])
    assert len(swapped) == len(student_tok) == 261
    with pytest.raises(MentorError, match=r"size 261\).*size 261\).*different ids"):
        check_vocabularies(swapped, student_tok, 261, 261, "swapped-teacher", STUDENT)


def test_padding_rows_are_cropped(data, teacher, tmp_path, capsys):
    loaded = load_model(teacher)
    loaded.model.resize_token_embeddings(len(loaded.tokenizer), pad_to_multiple_of=64)
    padded = tmp_path / "padded-teacher"
    loaded.model.save_pretrained(padded)
    loaded.tokenizer.save_pretrained(padded)
    assert loaded.model.get_output_embeddings().weight.shape[0] == 320

    losses = {}
    for name, ref in (("padded", str(padded)), ("plain", teacher)):
        out = tmp_path / f"crop-{name}"
        cfg = LogitConfig(**{**RUN, "train_steps": 3}, model=STUDENT, teacher=ref,
                          data=data["train"], evaluation_data=data["eval"], output=str(out))
        prep = prepare(cfg, opened(cfg))
        assert prep.vocab.width == 261
        batch = next(iter(prep.trainer.get_eval_dataloader()))
        prep.trainer.model.eval()
        with torch.no_grad():
            losses[name] = prep.trainer.compute_loss(prep.trainer.model, batch).item()
        if name == "padded":
            assert prep.vocab.cropped and prep.vocab.teacher_rows == 320
            assert "cropping both models' logits to the first 261 columns" in capsys.readouterr().out
            prep.trainer.train()  # and training goes on
            assert prep.trainer.state.global_step == 3
    assert losses["padded"] == pytest.approx(losses["plain"], rel=1e-5)


def test_offline_logits_resume_after_kill_and_match_online(data, teacher, tmp_path, monkeypatch, capfd):
    logits_dir = tmp_path / "logits"
    fields = dict(method="logit", teacher=teacher, offline_logits=True, top_k=261, shard_examples=32,
                  teacher_logits_dir=str(logits_dir), train_steps=4, evaluation_interval=4)
    # The precompute subprocess SIGKILLs itself after 2 shards (a hard kill: no cleanup runs),
    # with a half-written shard lying around as a kill during a write would leave.
    (logits_dir / "train").mkdir(parents=True)
    (logits_dir / "train" / ".shard-00002.safetensors.tmp").write_bytes(b"half a shard")
    monkeypatch.setenv(offline.KILL_ENV, "2")
    with pytest.raises(MentorError, match="rerun the same command to resume"):
        run(data, "offline", **fields)
    train_dir = logits_dir / "train"
    done = sorted(p.name for p in train_dir.glob("shard-*.safetensors"))
    assert done == ["shard-00000.safetensors", "shard-00001.safetensors"]
    index = json.loads((train_dir / "index.json").read_text())
    assert not index["complete"] and len(index["shards"]) == 2 and index["num_shards"] == 7
    mtimes = {n: (train_dir / n).stat().st_mtime_ns for n in done}

    monkeypatch.delenv(offline.KILL_ENV)
    capfd.readouterr()
    result = run(data, "offline", **fields)
    printed = capfd.readouterr().out
    assert "2 of 7 shards already done, resuming" in printed
    assert "the teacher is not loaded" in printed
    assert all((train_dir / n).stat().st_mtime_ns == t for n, t in mtimes.items())  # not recomputed
    assert len(list(train_dir.glob("shard-*.safetensors"))) == 7 and not list(train_dir.glob(".*.tmp"))
    assert json.loads((train_dir / "index.json").read_text())["complete"]
    assert result.steps_run == 4

    # The same batch scores the same loss from stored logits as with the live teacher, for every divergence.
    for divergence in ("forward_kl", "reverse_kl", "jsd"):
        losses = {}
        for mode in ("online", "offline"):
            extra = fields if mode == "offline" else {"method": "logit", "teacher": teacher}
            cfg = LogitConfig(**{**RUN, **extra}, model=STUDENT, data=data["train"], evaluation_data=data["eval"],
                              divergence=divergence, output=str(tmp_path / f"same-{mode}"))
            prep = prepare(cfg, opened(cfg))
            trainer = prep.trainer
            assert (trainer.teacher is None) == (mode == "offline")
            batch = next(iter(trainer.get_train_dataloader()))
            trainer.model.eval()
            with torch.no_grad():
                losses[mode] = trainer.compute_loss(trainer.model, batch).item()
            losses[mode + "_kd"] = trainer.metrics_for("eval")["eval_kd_loss"]
        print(f"\n{divergence}: online kd {losses['online_kd']:.6f}, offline kd {losses['offline_kd']:.6f}")
        assert losses["offline_kd"] == pytest.approx(losses["online_kd"], rel=1e-4, abs=1e-6)
        assert losses["offline"] == pytest.approx(losses["online"], rel=1e-4)


def test_topk_loss_definition(data, teacher):
    """k < V: stored top-k = the live teacher's top-k; with k = V the (k+1)-way loss is exactly full KD."""
    torch.manual_seed(0)
    t_logits = load_model(teacher).model.eval()(torch.tensor([[5, 70, 71, 72, 3]])).logits[0].detach()
    s_logits = torch.randn_like(t_logits)
    for beta in (0.0, 0.5, 1.0):
        full = logit_divergence(s_logits, t_logits, beta, 2.0)
        lp, ix = teacher_topk(t_logits, t_logits.shape[-1], 2.0)
        assert topk_divergence(s_logits, lp, ix, beta, 2.0).item() == pytest.approx(full.item(), rel=1e-4)
        lp8, ix8 = teacher_topk(t_logits, 8, 2.0)
        approx = topk_divergence(s_logits, lp8, ix8, beta, 2.0)
        assert torch.isfinite(approx) and approx >= 0


def test_cli_distill_whitebox(data, teacher):
    from mentor.cli import main

    out = data["dir"] / "cli"
    code = main(["distill", "--method", "relation", "--relation-level", "sequence", "--teacher", teacher,
                 "--student", STUDENT, "--data", data["train"], "--output", str(out), "--train-steps", "3",
                 "--batch-size", "8", "--bf16", "off"])
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    assert result["method"] == "relation" and result["steps_run"] == 3
    assert re.search(r"relation_level.*sequence", (out / "README.md").read_text())
    assert os.path.exists(out / "model" / "config.json")


def test_sequence_relations_need_two_sequences_a_batch(tmp_path):
    with pytest.raises(ValueError, match="batch_size must be 2 or more"):
        config_for("relation")(model="tiny:llama", teacher="tiny:llama", data="d", output=str(tmp_path),
                               relation_level="sequence", batch_size=1)
