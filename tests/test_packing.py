"""Padding-free packing (`packing: true`): a batch's examples in one row, positions restarting at
each example. It must compute exactly what padded batches compute: the attention never crosses
from one example into another, and no token learns to predict the next example's first token."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import DataCollatorForSeq2Seq

import mentor
from conftest import shift_task, write_jsonl
from mentor.distill.config import DistillConfig
from mentor.errors import MentorError
from mentor.models.resolve import load_model
from mentor.training.arguments import collator
from mentor.training.trainer import token_loss


def features(lengths: list[int], offset: int = 10) -> list[dict]:
    out = []
    for i, n in enumerate(lengths):
        ids = [offset + (7 * i + j) % 200 for j in range(n)]
        out.append({"input_ids": ids, "attention_mask": [1] * n, "labels": [-100] * (n // 2) + ids[n // 2:]})
    return out


def test_a_packed_batch_scores_each_example_as_it_scores_alone():
    loaded = load_model("tiny:llama")
    model, tok = loaded.model.eval(), loaded.tokenizer
    feats = features([7, 12, 5, 9])
    packed = collator(tok, packing=True)(feats)
    assert packed["input_ids"].shape == (1, 33) and "attention_mask" not in packed
    with torch.no_grad():
        alone = [token_loss(model, DataCollatorForSeq2Seq(tok, label_pad_token_id=-100)([f]), False) for f in feats]
        padded = token_loss(model, collator(tok)(feats), False)
        together = token_loss(model, packed, False)
        # another example's tokens change nothing in the first: attention stays within an example
        changed = token_loss(model, collator(tok, packing=True)([feats[0], *features([12, 5, 9], offset=90)]), False)
    assert together.count == padded.count == sum(a.count for a in alone)
    assert together.loss_sum.item() == pytest.approx(sum(a.loss_sum.item() for a in alone), rel=1e-5)
    assert together.loss_sum.item() == pytest.approx(padded.loss_sum.item(), rel=1e-5)
    first = alone[0].count
    assert torch.allclose(together.logits[:first], changed.logits[:first], atol=1e-5)


def test_packed_and_padded_training_give_the_same_losses(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", shift_task(64, 0))
    evald = write_jsonl(tmp_path / "eval.jsonl", shift_task(16, 1))
    common = dict(model="tiny:llama", data=str(train), evaluation_data=str(evald), tuning="lora", train_steps=12,
                  batch_size=8, learning_rate_multiplier=4, evaluation_interval=6, early_stopping=False,
                  checkpoint_selection=False, bf16="off")
    runs = {p: mentor.tune(output=str(tmp_path / f"packing-{p}"), packing=p, **common) for p in (False, True)}

    def losses(packing: bool) -> list[float]:
        rows = map(json.loads, (tmp_path / f"packing-{packing}" / "metrics.jsonl").read_text().splitlines())
        return [r.get("train_total_loss", r.get("eval_total_loss")) for r in rows
                if "train_total_loss" in r or "eval_total_loss" in r]

    assert len(losses(True)) == len(losses(False)) >= 12 + 2  # every step, and the evaluations
    assert losses(True) == pytest.approx(losses(False), rel=1e-4)
    assert runs[True].metrics["eval_total_loss"] == pytest.approx(runs[False].metrics["eval_total_loss"], rel=1e-4)
    # tokens/s counts real tokens either way: padding is not work done
    assert runs[True].extra["tokens_seen"] == runs[False].extra["tokens_seen"]


def test_step_by_step_distillation_packs_both_tasks(tmp_path):
    from test_distill import arithmetic_rows

    train = write_jsonl(tmp_path / "train.jsonl", arithmetic_rows(32, 0))
    common = dict(model="tiny:llama", teacher="recorded:field=teacher_completion", data=str(train), output="",
                  task="math", label_field="equation", tuning="full", train_steps=4, batch_size=8, bf16="off",
                  early_stopping=False, method="step-by-step")
    losses = {}
    for packing in (False, True):
        out = tmp_path / f"sbs-{packing}"
        mentor.run("step-by-step", DistillConfig(**{**common, "output": str(out), "packing": packing}))
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        losses[packing] = [(r["train_label_loss"], r["train_rationale_loss"]) for r in rows if "train_label_loss" in r]
    assert len(losses[True]) == 4
    assert [x for pair in losses[True] for x in pair] == pytest.approx([x for pair in losses[False] for x in pair], rel=1e-4)


def test_packing_is_refused_where_it_cannot_apply(tmp_path):
    with pytest.raises(MentorError, match="decoder-only"):
        collator(load_model("tiny:t5").tokenizer, packing=True, is_seq2seq=True)
    from pydantic import ValidationError

    from mentor.rlhf.config import DPOConfig
    from mentor.whitebox.config import LogitConfig

    with pytest.raises(ValidationError, match="not DPO"):
        DPOConfig(model="tiny:llama", data="pairs.jsonl", output=str(tmp_path / "o"), packing=True)
    with pytest.raises(ValidationError, match="not white-box"):
        LogitConfig(model="tiny:llama", teacher="tiny:llama", data="d.jsonl", output=str(tmp_path / "o"), packing=True)


def test_packed_training_counts_every_token_where_the_pad_is_the_eos(tmp_path, monkeypatch):
    """Tokenizers without a pad token pad with their end-of-sequence token under mentor (Llama 3,
    Mistral): a packed row has no attention mask, and counting "not the pad id" left out every
    end-of-sequence token of its examples (found by review)."""
    from mentor.training import setup as training_setup

    load = training_setup.load_model

    def eos_as_pad(*args, **kwargs):
        loaded = load(*args, **kwargs)
        loaded.tokenizer.pad_token = loaded.tokenizer.eos_token
        return loaded

    monkeypatch.setattr(training_setup, "load_model", eos_as_pad)
    train = write_jsonl(tmp_path / "train.jsonl", shift_task(16, 0))
    common = dict(model="tiny:llama", data=str(train), train_steps=2, batch_size=8, bf16="off")
    padded = mentor.tune(output=str(tmp_path / "padded"), **common)
    packed = mentor.tune(output=str(tmp_path / "packed"), packing=True, **common)
    assert packed.extra["tokens_seen"] == padded.extra["tokens_seen"]
