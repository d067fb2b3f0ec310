"""Relation-based distillation: the student learns how the teacher relates the items of a batch.

Representations (hidden states of the mapped layers: by default the last student layer and the
last teacher layer) are compared not with each other but through their structure: the matrix
of pairwise cosine similarities within the batch, between tokens (`relation_level='token'`, at
most `relation_max_tokens` real tokens, evenly spaced) or between mean-pooled sequences
(`'sequence'`). The loss is the MSE between the teacher's and the student's matrices; widths
never need to agree, so nothing is projected.
"""

from __future__ import annotations

import torch

from mentor.whitebox.base import Forward
from mentor.whitebox.config import RelationConfig
from mentor.whitebox.feature import FeatureKD
from mentor.whitebox.losses import relation_distance


class RelationKD(FeatureKD):
    cfg: RelationConfig  # its own method's config
    default_map = "last"

    def make_projections(self, ds, dt):
        return None

    def representations(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.cfg.relation_level == "sequence":
            m = mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
        reps = hidden[mask]
        limit = self.cfg.relation_max_tokens
        if reps.shape[0] > limit:
            reps = reps[torch.linspace(0, reps.shape[0] - 1, limit, device=reps.device).round().long()]
        return reps

    def distill_loss(self, student: Forward, teacher: Forward | None, batch: dict):
        mask = student.mask
        losses = [relation_distance(self.representations(student.hidden[s], mask), self.representations(teacher.hidden[t], mask))
                  for s, t in self.pairs]
        loss = torch.stack(losses).mean()
        return loss, {"relation_sum": loss.item(), "relation_batches": 1}

    def metrics(self, mode: str, sums: dict) -> dict[str, float]:
        return {f"{mode}_relation_loss": sums.get("relation_sum", 0.0) / max(sums.get("relation_batches", 0.0), 1.0)}
