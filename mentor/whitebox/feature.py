"""Feature-based distillation: student hidden states learn to match the teacher's.

For every mapped pair of layers (uniform by default, or `layer_map`), the student's hidden
states at the batch's real tokens go through a learned linear projection to the teacher's width
(when the widths differ; unchanged otherwise) and are compared with the teacher's by MSE or
cosine distance. The projections train with the student, are saved in checkpoints (resume) and
are dropped from the saved model, which keeps its own architecture.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from mentor.whitebox.base import Forward, Method
from mentor.whitebox.config import FeatureConfig
from mentor.whitebox.layers import depth_and_width, parse_layer_map
from mentor.whitebox.losses import feature_distance

log = logging.getLogger("mentor")


class FeatureKD(Method):
    cfg: FeatureConfig  # RelationKD, its subclass: RelationConfig (the layer map both have)
    needs_hidden_states = True
    uses_logits = False
    default_map = "uniform"

    def attach(self, student, teacher, student_config, teacher_config, is_seq2seq):
        ls, ds = depth_and_width(student_config, is_seq2seq)
        lt, dt = depth_and_width(teacher_config, is_seq2seq)
        self.pairs = parse_layer_map(self.cfg.layer_map, ls, lt, self.default_map)
        self.widths = (ds, dt)
        self.projections = self.make_projections(ds, dt)
        if self.projections is not None:
            device = next(student.parameters()).device
            self.projections.to(device=device, dtype=torch.float32)
        log.info(f"{self.cfg.method} distillation: student:teacher hidden states {', '.join(f'{s}:{t}' for s, t in self.pairs)}"
              + (f"; learned projections {ds} -> {dt}" if self.projections is not None and ds != dt else ""))

    def make_projections(self, ds: int, dt: int) -> nn.ModuleDict | None:
        if ds == dt:
            return None
        return nn.ModuleDict({f"{s}_{t}": nn.Linear(ds, dt, bias=False) for s, t in self.pairs})

    def project(self, s: int, t: int, h: torch.Tensor) -> torch.Tensor:
        return self.projections[f"{s}_{t}"](h.float()) if self.projections is not None else h

    def extra_modules(self):
        return [self.projections] if self.projections is not None else []

    def distill_loss(self, student: Forward, teacher: Forward | None, batch: dict):
        mask = student.mask
        losses = [feature_distance(self.project(s, t, student.hidden[s][mask]), teacher.hidden[t][mask].float(),
                                   self.cfg.feature_loss)
                  for s, t in self.pairs]
        loss = torch.stack(losses).mean()
        return loss, {"feature_sum": loss.item(), "feature_batches": 1}

    def metrics(self, mode: str, sums: dict) -> dict[str, float]:
        return {f"{mode}_feature_loss": sums.get("feature_sum", 0.0) / max(sums.get("feature_batches", 0.0), 1.0)}

    def state_dict(self) -> dict:
        return {"projections": self.projections.state_dict()} if self.projections is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.projections is not None and "projections" in state:
            self.projections.load_state_dict(state["projections"])
