"""Reinforcement fine-tuning with graders: GRPO (TRL's GRPOTrainer) whose rewards are a grader's
scores of the model's own samples (OpenAI's `reinforcement` method, the cloud's reinforcement tuning)."""
