"""What every white-box method plugs into: the hooks the trainer calls.

A method turns one batch's student and teacher forward passes into a distillation loss. The
trainer mixes it with the ordinary next-token loss (`kd_ratio`), logs both, and gives the method
a place for extra trainable modules (feature projections) and extra checkpointed state (an EMA
teacher), so metrics, checkpoints and resume work the same for every method.

    class Mine(Method):
        def distill_loss(self, student, teacher, batch): ...

A method's config (a `WhiteboxConfig` subclass) names it as `method_class`, and registering that
config as a job kind (`register_kind`, as `mentor/recipes/__init__.py` does for the built-in ones)
makes it runnable: `mentor.run("mine", ...)`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch
from torch import nn

from mentor.data.encode import IGNORE
from mentor.training.trainer import token_loss
from mentor.whitebox.config import WhiteboxConfig


def method_class(cfg: WhiteboxConfig) -> type[Method]:
    """The class computing the loss of `cfg`'s method (its config's `method_class`, imported now)."""
    named = type(cfg).method_class
    if isinstance(named, str):
        module, _, name = named.partition(":")
        named = getattr(importlib.import_module(module), name)
    if not (isinstance(named, type) and issubclass(named, Method)):
        raise TypeError(f"{type(cfg).__name__}.method_class must name a Method subclass, not {named!r}")
    return named


@dataclass
class Forward:
    """One model's pass over a batch, on the positions the loss uses."""

    loss_sum: torch.Tensor  # summed next-token cross-entropy on output tokens
    correct: torch.Tensor
    count: int
    logits: torch.Tensor  # (P, V) at positions that predict an output token, in batch order
    targets: torch.Tensor  # (P,)
    hidden: tuple | None = None  # per layer (B, T, d): index 0 is the embedding output
    mask: torch.Tensor | None = None  # (B, T) positions whose hidden states are compared


class _WithHiddenStates:
    """Lets `token_loss` run a model with output_hidden_states=True, changing nothing else."""

    def __init__(self, model):
        self._model = model

    def __call__(self, **kwargs):
        return self._model(**kwargs, output_hidden_states=True)

    def __getattr__(self, name):
        return getattr(self._model, name)


def run_model(model, batch: dict, is_seq2seq: bool, keep_logits: bool, hidden: bool = False) -> Forward:
    """The tuning core's output-token forward (`token_loss`), optionally with hidden states."""
    runner = _WithHiddenStates(model) if hidden else model
    scored = token_loss(runner, batch, is_seq2seq, keep_logits)
    out = scored.outputs
    states = mask = None
    if hidden:
        if is_seq2seq:
            states, mask = out.decoder_hidden_states, batch["labels"] != IGNORE
        else:
            states, mask = out.hidden_states, batch["attention_mask"].bool()
    return Forward(scored.loss_sum, scored.correct, scored.count, scored.logits, scored.targets, states, mask)


class Method:
    """A white-box distillation method; see the module docstring."""

    needs_hidden_states = False
    uses_logits = True  # compares next-token distributions (vocabulary crop applies)

    def __init__(self, cfg: WhiteboxConfig, width: int):
        self.cfg = cfg
        self.width = width  # common logits width after the vocabulary check

    # -- set-up -----------------------------------------------------------------------------
    def attach(self, student, teacher, student_config, teacher_config, is_seq2seq: bool) -> None:
        """Called once with both models (teacher None for offline logits / EMA) before training."""

    def extra_modules(self) -> list[nn.Module]:
        """Modules trained with the student but not part of it (projections)."""
        return []

    def live_teacher(self):
        """The teacher model this method computes with, if it made one itself (EMA)."""
        return None

    # -- per batch ----------------------------------------------------------------------------
    def distill_loss(self, student: Forward, teacher: Forward | None, batch: dict) -> tuple[torch.Tensor, dict]:
        """(mean distillation loss of the batch, sums to record for the metrics)."""
        raise NotImplementedError

    def metrics(self, mode: str, sums: dict) -> dict[str, float]:
        return {}

    def after_optimizer_step(self, student) -> None:
        """Called after every optimizer step (EMA update)."""

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
