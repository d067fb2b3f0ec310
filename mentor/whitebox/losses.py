"""The distances white-box distillation minimizes.

Response-based: TRL GKD's generalized JSD (`GKDTrainer.generalized_jsd_loss`), which is forward
KL(teacher || student) at beta 0, reverse KL(student || teacher) at beta 1 and the generalized
JSD in between; both distributions are softened by the temperature. It is used as is on full
vocabularies, and on offline top-k logits through a (k + 1)-way distribution (below).

Offline top-k: the teacher's log-probs at the training temperature are stored for its k most
likely tokens per position. Both distributions are then compared on k + 1 outcomes: the k stored
tokens and "any other token" holding the rest of the mass (1 - the k probabilities), for the
teacher as stored and for the student from its full softmax. This is a proper distribution for
both sides, so every divergence is defined, and with k = the vocabulary size the rest bucket is
empty and the loss equals online KD exactly (up to float rounding).

Feature-based: MSE or cosine distance between (projected) student and teacher hidden states.
Relation-based: MSE between the teacher's and the student's matrices of pairwise cosine
similarities of representations within a batch.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

_GJSD = None
_EPS = 1e-12
# below this a stored teacher log-prob is a filler column, not a token the teacher named (exp() of it
# is 0 in float32 either way, so moving such a token into the rest bucket changes no probability)
_FILLED = -1e3


def generalized_jsd():
    """TRL GKD's generalized JSD (imported on first use: trl.experimental takes seconds to import)."""
    global _GJSD
    if _GJSD is None:
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        from trl.experimental.gkd import GKDTrainer

        _GJSD = GKDTrainer.generalized_jsd_loss
    return _GJSD


def logit_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float,
                     temperature: float) -> torch.Tensor:
    """Summed divergence over positions: (P, V) student and teacher logits -> scalar."""
    return generalized_jsd()(student_logits.float(), teacher_logits.float(), beta=beta,
                             temperature=temperature, reduction="sum")


def teacher_topk(teacher_logits: torch.Tensor, k: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """What offline logits store: the k largest log-probs at `temperature` and their token ids."""
    logprobs = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    values, indices = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1)
    return values, indices


def _with_rest(logprobs_k: torch.Tensor) -> torch.Tensor:
    """Append log(1 - sum of the k probabilities): the mass of every token not kept."""
    rest = (1.0 - logprobs_k.exp().sum(-1, keepdim=True)).clamp_min(_EPS).log()
    return torch.cat([logprobs_k, rest], dim=-1)


def topk_divergence(student_logits: torch.Tensor, teacher_logprobs: torch.Tensor, teacher_indices: torch.Tensor,
                    beta: float, temperature: float) -> torch.Tensor:
    """Summed divergence against stored top-k teacher log-probs (already at `temperature`).

    A column whose teacher log-prob is below `_FILLED` is a filler (a served teacher sent fewer
    than k tokens: `mentor.teachers.logprobs.FILL_LOGPROB`, probability 0): its token is counted in
    the rest bucket on the student's side too. Left in its own column, reverse KL would charge the
    student p * 1e4 for whatever mass it puts on an arbitrary token the teacher never named."""
    student = F.log_softmax(student_logits.float() / temperature, dim=-1).gather(-1, teacher_indices.long())
    # the teacher's own value in a filler column: both sides equal there, so it adds nothing
    student = torch.where(teacher_logprobs < _FILLED, teacher_logprobs.float(), student)
    # Both sides are already normalized log-probs at the temperature; the JSD's own log_softmax
    # leaves them unchanged, so temperature 1 there.
    return generalized_jsd()(_with_rest(student), _with_rest(teacher_logprobs.float()), beta=beta,
                             temperature=1.0, reduction="sum")


def feature_distance(student_h: torch.Tensor, teacher_h: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean distance between (N, d) projected student and teacher hidden states."""
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(student_h.float(), teacher_h.float(), dim=-1)).mean()
    return F.mse_loss(student_h.float(), teacher_h.float())


def similarity_matrix(reps: torch.Tensor) -> torch.Tensor:
    z = F.normalize(reps.float(), dim=-1)
    return z @ z.T


def relation_distance(student_reps: torch.Tensor, teacher_reps: torch.Tensor) -> torch.Tensor:
    """MSE between pairwise cosine-similarity matrices of (N, d_s) and (N, d_t) representations."""
    return F.mse_loss(similarity_matrix(student_reps), similarity_matrix(teacher_reps))
