"""White-box distillation: the student learns from the teacher's weights, not only its text.

Methods, registered by name (`mentor.whitebox.base.register_method`):

- `logit`: response-based KD on next-token distributions (forward KL, reverse KL, generalized
  JSD; temperature; `kd_ratio` mix with the next-token loss), optionally from offline top-k
  teacher logits stored on disk, optionally on-policy through TRL GKD;
- `feature`: hidden-state MSE or cosine loss with learned projections, layers mapped uniformly
  or as given;
- `relation`: the pairwise similarity structure of representations within a batch;
- `self`: self-distillation from a tuned copy, an earlier checkpoint or an EMA of the student.

Python API: `mentor.whitebox.distill(method=..., teacher=..., student=..., data=..., ...)`
returns a TunedModel; `mentor.whitebox.cli.register(subparsers)` adds `mentor distill-whitebox`.
"""

from mentor.whitebox import feature, logit, relation, self_distill  # noqa: F401 - registers the methods
from mentor.whitebox.base import METHODS, Method, register_method
from mentor.whitebox.config import WhiteboxConfig
from mentor.whitebox.recipe import distill

__all__ = ["METHODS", "Method", "WhiteboxConfig", "distill", "register_method"]
