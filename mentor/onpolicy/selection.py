"""Checkpoint selection on the task: at every evaluation the student answers the validation prompts
greedily (the prompts exactly as the job encodes them), and its answers are parsed and scored against
the data's outputs as `mentor eval` scores a task (`mentor.tasks.metrics.score`). Every metric of the
task is logged as `eval_task_<metric>`; the task's main one (`main_metric`: accuracy, or F1 for
extract) picks the checkpoint and stops the job early, greater being better."""

from __future__ import annotations

import torch

from mentor.evaluation.evaluate import label_of, main_metric
from mentor.tasks.metrics import score

PREFIX = "task_"  # eval_task_<metric>


def selection_key(task: str) -> str:
    """The metric (without "eval_") that picks the checkpoint for `task`."""
    probe = score(["x"], ["x"], task, labels=["x"] if task == "classify" else None)
    return PREFIX + main_metric(probe)[0]


class TaskAnswers:
    """Greedy answers of the model being trained to the validation prompts, scored for the task."""

    def __init__(self, prompts: list[list[int]], golds: list[str], rows: list[dict], task: str,
                 labels: list[str] | None, tokenizer, max_new_tokens: int, batch_size: int):
        self.prompts, self.golds, self.rows = prompts, golds, rows
        self.task, self.labels, self.tokenizer = task, labels, tokenizer
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size

    @torch.no_grad()
    def answers(self, model) -> list[str]:
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        device = next(model.parameters()).device
        texts: list[str] = []
        for start in range(0, len(self.prompts), self.batch_size):
            chunk = self.prompts[start:start + self.batch_size]
            width = max(len(p) for p in chunk)
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=self.max_new_tokens,
                                 pad_token_id=pad, eos_token_id=tok.eos_token_id, top_p=None, top_k=None,
                                 temperature=None)
            texts += tok.batch_decode(out[:, width:], skip_special_tokens=True)
        return texts

    def __call__(self, model) -> dict[str, float]:
        was_training = model.training
        model.eval()
        try:
            texts = self.answers(model)
        finally:
            model.train(was_training)
        preds = [label_of(text, self.task, row, self.labels) for text, row in zip(texts, self.rows)]
        choices = [row.get("choices") for row in self.rows] if self.task == "choice" else None
        metrics = score(preds, self.golds, self.task, choices=choices, labels=self.labels)
        return {"eval_" + PREFIX + k: float(v) for k, v in metrics.items() if k != "n"}
