"""Response-based (logit) distillation: the student matches the teacher's next-token distributions.

The distance is TRL GKD's generalized JSD between the temperature-softened distributions at
every position that predicts an output token: forward KL(teacher || student) (`forward_kl`, the
classic Hinton KD, mass-covering), reverse KL(student || teacher) (`reverse_kl`, mode-seeking) or
the generalized JSD with its `beta`. As in Hinton et al., the loss is multiplied by
temperature^2 so its gradients keep their size when the temperature changes; the logged
`*_kd_loss` is the divergence itself. With offline logits the teacher's stored top-k log-probs
take the place of its live logits (see `losses.topk_divergence`).
"""

from __future__ import annotations

from mentor.errors import MentorError
from mentor.whitebox.base import Forward, Method
from mentor.whitebox.config import LogitConfig, SelfConfig
from mentor.whitebox.losses import logit_divergence, topk_divergence


class LogitKD(Method):
    cfg: LogitConfig | SelfConfig  # the response group's fields (divergence, beta, temperature)

    def distill_loss(self, student: Forward, teacher: Forward | None, batch: dict):
        cfg = self.cfg
        beta, temperature = cfg.beta_for_divergence, cfg.temperature
        s = student.logits[:, : self.width]
        if "teacher_logprobs" in batch:
            t_lp, t_idx = batch["teacher_logprobs"], batch["teacher_indices"]
            if t_lp.shape[0] != s.shape[0]:
                raise MentorError(f"offline teacher logits hold {t_lp.shape[0]} positions for this batch, the student "
                                  f"predicts {s.shape[0]}: the stored logits were made for other data; delete them")
            kd_sum = topk_divergence(s, t_lp.to(s.device), t_idx.to(s.device), beta, temperature)
        else:
            kd_sum = logit_divergence(s, teacher.logits[:, : self.width], beta, temperature)
        kd = kd_sum / max(student.count, 1)
        return kd * temperature ** 2, {"kd_sum": kd_sum.item(), "kd_count": student.count}

    def metrics(self, mode: str, sums: dict) -> dict[str, float]:
        return {f"{mode}_kd_loss": sums.get("kd_sum", 0.0) / max(sums.get("kd_count", 0.0), 1.0)}
