"""White-box distillation: the student learns from the teacher's weights, not only its text.

Methods, registered by name (`mentor.whitebox.base.register_method`), each a job kind:

- `logit`: response-based KD on next-token distributions (forward KL, reverse KL, generalized
  JSD; temperature; `kd_ratio` mix with the next-token loss), optionally from offline top-k
  teacher logits stored on disk, optionally on-policy through TRL GKD;
- `feature`: hidden-state MSE or cosine loss with learned projections, layers mapped uniformly
  or as given;
- `relation`: the pairwise similarity structure of representations within a batch;
- `self`: self-distillation from a tuned copy, an earlier checkpoint or an EMA of the student.

Importing this package loads nothing heavy; the methods load when a white-box job runs.
"""

import importlib

BUILTIN_MODULES = ("logit", "feature", "relation", "self_distill")


def load_builtin_methods() -> None:
    """Import the built-in methods, which registers them."""
    for name in BUILTIN_MODULES:
        importlib.import_module(f"mentor.whitebox.{name}")
