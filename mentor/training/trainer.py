"""The transformers Trainer, taught the tuning services' metrics and a cheaper loss.

Trainer already gives checkpoints with optimizer and RNG state, resume, early stopping, best
checkpoint selection, bf16 autocast and scale-out through accelerate (DDP, FSDP, DeepSpeed).
What is added here:

- the loss is computed on output tokens only, and for causal models the vocabulary
  projection runs only at positions that predict an output token (`logits_to_keep` with a
  boolean mask), which skips most of the largest matmul when prompts are long;
- token-weighted `*_total_loss`, `*_fraction_of_correct_next_step_preds` and
  `*_num_predictions` for training steps and evaluations;
- length-grouped batches whose order is seeded per epoch, so a resumed run sees the same
  batches as an uninterrupted one.
"""

from __future__ import annotations

import inspect
from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import Trainer
from transformers.trainer_pt_utils import LengthGroupedSampler

from mentor.data.encode import IGNORE


class EpochSeededLengthSampler(LengthGroupedSampler):
    """Length-grouped shuffling with a generator seeded by (seed, epoch): resumable exactly."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths)
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator = torch.Generator().manual_seed(self.seed * 1000 + epoch)


def accepts_logits_to_keep(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


@dataclass
class TokenLoss:
    """One forward pass scored on the output tokens of a batch."""

    loss_sum: torch.Tensor  # summed cross-entropy
    correct: torch.Tensor  # correct next-token predictions
    count: int  # output tokens scored
    outputs: object  # the model's outputs (hidden states when asked for)
    logits: torch.Tensor  # (P, V) at the positions that predict an output token, in batch order
    targets: torch.Tensor  # (P,)


# What a batch hands the model; the rest (labels) is scored here. Packed batches add positions and,
# under flash attention, the examples' boundaries.
MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q",
                "max_length_k")


def token_loss(model, batch: dict, is_seq2seq: bool, keep_logits: bool = True) -> TokenLoss:
    """Summed cross-entropy, correct next-token predictions and their count on output tokens."""
    # position_ids: a packed batch (`packing`) restarts them at each example, which is what keeps
    # attention within an example (transformers builds a block-diagonal mask from them)
    inputs = {k: v for k, v in batch.items() if k in MODEL_INPUTS}
    if "position_ids" in inputs:  # transformers reads packing only without a cache (a training setup)
        inputs["use_cache"] = False
    labels = batch["labels"]
    if is_seq2seq:
        decoder_input_ids = model.prepare_decoder_input_ids_from_labels(labels=labels) \
            if hasattr(model, "prepare_decoder_input_ids_from_labels") else None
        if decoder_input_ids is None:
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            decoder_input_ids = base._shift_right(labels)
        out = model(**inputs, decoder_input_ids=decoder_input_ids)
        targets_mask = labels != IGNORE
        logits = out.logits[targets_mask]
        targets = labels[targets_mask]
    else:
        shifted = labels[:, 1:]
        targets_mask = shifted != IGNORE
        keep = torch.zeros_like(labels, dtype=torch.bool)
        keep[:, :-1] = targets_mask
        if keep_logits:
            out = model(**inputs, logits_to_keep=keep)
            logits = out.logits.reshape(-1, out.logits.shape[-1])
        else:
            out = model(**inputs)
            logits = out.logits[keep]
        targets = shifted[targets_mask]
    loss_sum = F.cross_entropy(logits.float(), targets, reduction="sum")
    with torch.no_grad():
        correct = (logits.argmax(-1) == targets).sum()
    return TokenLoss(loss_sum, correct, targets.numel(), out, logits, targets)


class MentorTrainer(Trainer):
    """Trainer with output-token loss and the tuning services' metric names."""

    def __init__(self, *args, is_seq2seq: bool = False, sampler_seed: int = 0, task_score=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.is_seq2seq = is_seq2seq
        self.sampler_seed = sampler_seed
        self.task_score = task_score  # model -> metrics of generated answers, added to every evaluation
        self.model_accepts_loss_kwargs = False  # the loss below is a per-batch token mean
        self._keep_logits = not is_seq2seq and accepts_logits_to_keep(self.model)
        self._sums = {"train": defaultdict(float), "eval": defaultdict(float)}

    # -- data ---------------------------------------------------------------------------
    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if dataset is None:  # as Trainer's own: no data, no sampler
            return None
        lengths = [len(x) for x in dataset["input_ids"]]
        return EpochSeededLengthSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                        lengths, self.sampler_seed)

    # -- loss and metrics ---------------------------------------------------------------
    def record(self, mode: str, **values: float) -> None:
        """Add to the running sums that the next log (train) or evaluation (eval) reports."""
        for k, v in values.items():
            self._sums[mode][k] += float(v)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if model.training else "eval"
        scored = token_loss(model, inputs, self.is_seq2seq, self._keep_logits)
        count = max(scored.count, 1)
        self.record(mode, loss_sum=scored.loss_sum.item(), correct=scored.correct.item(), count=count)
        loss = scored.loss_sum / count
        return (loss, scored.outputs) if return_outputs else loss

    def metrics_for(self, mode: str) -> dict[str, float]:
        s = _summed_over_processes(self._sums[mode])
        n = max(s.get("count", 0.0), 1.0)
        metrics = {
            f"{mode}_total_loss": s.get("loss_sum", 0.0) / n,
            f"{mode}_fraction_of_correct_next_step_preds": s.get("correct", 0.0) / n,
            f"{mode}_num_predictions": s.get("count", 0.0),
        }
        metrics.update(self.extra_metrics(mode, s))
        self._sums[mode] = defaultdict(float)
        return metrics

    def extra_metrics(self, mode: str, sums: dict) -> dict[str, float]:
        """Recipes with more than one loss report their parts here."""
        return {}

    def evaluation_loop(self, *args, **kwargs):
        self._sums["eval"] = defaultdict(float)
        output = super().evaluation_loop(*args, **kwargs)
        prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
        metrics = output.metrics if output.metrics is not None else {}
        metrics.pop(f"{prefix}_loss", None)
        for k, v in self.metrics_for("eval").items():
            metrics[prefix + k[len("eval"):]] = v
        if self.task_score is not None and prefix == "eval":
            metrics.update(self.task_score(self.model))
        return output._replace(metrics=metrics)

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs:  # a training log: replace the running mean by token-weighted metrics
            logs.pop("loss")
            logs.update(self.metrics_for("train"))
        super().log(logs, *args, **kwargs)


def _summed_over_processes(sums: dict[str, float]) -> dict[str, float]:
    """Each process saw its share of the batches: metrics are of all of them, on every process (so
    checkpoint selection and early stopping judge the whole evaluation set, and agree)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return sums
    parts: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, dict(sums))
    total: dict[str, float] = defaultdict(float)
    for part in parts:
        for k, v in part.items():
            total[k] += v
    return total


class SeededEvaluation:
    """A trainer mixin for kinds whose evaluation samples (reinforcement, on-policy distillation): every
    evaluation draws from the same seed, so the checkpoints that selection compares are scored on the
    same draws, not on whatever the training's random state had reached; and the training's random
    state is left where it was."""

    def evaluate(self, *args, **kwargs):
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.args.seed)  # type: ignore[attr-defined]  # a Trainer's, which this mixes into
            return super().evaluate(*args, **kwargs)  # type: ignore[misc]
