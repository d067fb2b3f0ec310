"""On-policy distillation (the `on-policy` kind): the student samples completions of the training
prompts, the teacher scores them token by token, and the student minimises the generalized JSD
(reverse KL by default) to the teacher on its own samples, with supervised steps on the data's
outputs mixed in (GKD). TRL's DistillationTrainer runs the loop; mentor adds the supervised steps,
the teacher's scoring behind one function, and its metrics."""
