"""White-box distillation: the student learns from the teacher's weights, not only its text.

Methods, each a job kind with a config class of its own (`mentor.whitebox.config`):

- `logit`: response-based KD on next-token distributions (forward KL, reverse KL, generalized
  JSD; temperature; `kd_ratio` mix with the next-token loss), optionally from offline top-k
  teacher logits stored on disk, optionally on-policy through TRL GKD;
- `feature`: hidden-state MSE or cosine loss with learned projections, layers mapped uniformly
  or as given;
- `relation`: the pairwise similarity structure of representations within a batch;
- `self`: self-distillation from a tuned copy, an earlier checkpoint or an EMA of the student.

Importing this package loads nothing heavy; a method's module loads when its job runs.
"""
