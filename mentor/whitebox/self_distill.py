"""Self-distillation: teacher and student share one architecture.

The teacher is either a given model of the student's architecture (a tuned copy, an earlier
checkpoint of this or another run: any model reference), frozen; or, with no teacher (or
`teacher='ema'`), an exponential moving average of the student itself, updated after every
optimizer step and saved in every checkpoint so a resumed run continues the same average. The
loss is the response-based one (`logit`): divergence, temperature, kd_ratio and on-policy steps
all apply.
"""

from __future__ import annotations

import copy
import logging

import torch

from mentor.errors import MentorError
from mentor.whitebox.config import SelfConfig
from mentor.whitebox.logit import LogitKD

log = logging.getLogger("mentor")

ARCH_KEYS = ("model_type", "hidden_size", "d_model", "num_hidden_layers", "num_layers", "num_decoder_layers",
             "num_attention_heads", "num_heads", "intermediate_size", "d_ff", "vocab_size")


def architecture(config) -> dict:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return {k: getattr(text, k) for k in ARCH_KEYS if getattr(text, k, None) is not None}


class SelfDistillation(LogitKD):
    cfg: SelfConfig  # its own method's config
    ema: torch.nn.Module | None = None

    def attach(self, student, teacher, student_config, teacher_config, is_seq2seq):
        if self.cfg.uses_ema_teacher:
            self.ema = copy.deepcopy(student).eval().requires_grad_(False)
            self._trainable = [n for n, p in student.named_parameters() if p.requires_grad]
            log.info(f"self-distillation: the teacher is an EMA of the student (decay {self.cfg.ema_decay})")
            return
        a, b = architecture(student_config), architecture(teacher_config)
        if a != b:
            diff = ", ".join(f"{k}: student {a.get(k)} vs teacher {b.get(k)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
            raise MentorError(f"self-distillation needs teacher and student of one architecture; these differ ({diff}). "
                              "Use method 'logit' for a different teacher.")

    def live_teacher(self):
        return self.ema

    @torch.no_grad()
    def after_optimizer_step(self, student) -> None:
        if self.ema is None:
            return
        ema_params = dict(self.ema.named_parameters())
        for name, p in student.named_parameters():
            if p.requires_grad:
                ema_params[name].lerp_(p.detach().to(ema_params[name].dtype), 1.0 - self.cfg.ema_decay)

    def state_dict(self) -> dict:
        if self.ema is None:
            return {}
        params = dict(self.ema.named_parameters())
        return {"ema": {n: params[n].detach().clone() for n in self._trainable}}

    def load_state_dict(self, state: dict) -> None:
        if self.ema is None or "ema" not in state:
            return
        params = dict(self.ema.named_parameters())
        with torch.no_grad():
            for n, v in state["ema"].items():
                params[n].copy_(v)
