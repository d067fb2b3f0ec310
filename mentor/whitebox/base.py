"""What every white-box method plugs into: a registry by name and the hooks the trainer calls.

A method turns one batch's student and teacher forward passes into a distillation loss. The
trainer mixes it with the ordinary next-token loss (`kd_ratio`), logs both, and gives the method
a place for extra trainable modules (feature projections) and extra checkpointed state (an EMA
teacher), so metrics, checkpoints and resume work the same for every method.

    @register_method("mine")
    class Mine(Method):
        def distill_loss(self, student, teacher, batch): ...

Registering a method also registers its job kind (same name, WhiteboxConfig with the method
fixed), so `mentor.run("mine", ...)` runs it like the built-in ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mentor.data.encode import IGNORE
from mentor.errors import MentorError
from mentor.jobs.registry import JobKind, kinds, register_kind
from mentor.training.trainer import token_loss
from mentor.whitebox.config import config_for

METHODS: dict[str, type[Method]] = {}


def register_method(name: str, summary: str | None = None):
    """Class decorator: a white-box method under `name`, and a job kind of the same name."""
    def deco(cls):
        cls.name = name
        METHODS[name] = cls
        if name not in kinds():
            register_kind(JobKind(name, config_for(name), "mentor.recipes.whitebox:run",
                                  summary or (cls.__doc__ or f"white-box method {name}").strip().splitlines()[0],
                                  family="distill", method=name))
        return cls
    return deco


def get_method(name: str) -> type[Method]:
    if name not in METHODS:
        raise MentorError(f"unknown white-box method '{name}'; known: {', '.join(sorted(METHODS))}")
    return METHODS[name]


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

    name = "?"
    needs_hidden_states = False
    uses_logits = True  # compares next-token distributions (vocabulary crop applies)

    def __init__(self, cfg, width: int):
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
