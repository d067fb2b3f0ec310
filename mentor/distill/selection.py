"""Choosing the checkpoint (and stopping early) on the task itself rather than on next-token accuracy.

Next-token accuracy on the evaluation set is the cloud's rule and stays the default, but a student can
predict the gold label's tokens better while answering worse (or the reverse); with
`selection_metric="task"` every evaluation also generates the student's label-task answers for the
evaluation set (the seeds' 10 to 256 examples are few enough to generate for), parses them as the test
does, and scores them with the task's metric (accuracy; token F1 for extraction): `eval_task_score`.
"""

from __future__ import annotations

import torch

from mentor.data.encode import render_prompt
from mentor.evaluation.evaluate import label_of, main_metric
from mentor.models import LoadedModel
from mentor.serving.generate import SamplingParams, generate
from mentor.tasks.metrics import score

TASK_SCORE = "eval_task_score"


class TaskScore:
    """Greedy label-task answers of the model being trained on the evaluation examples, scored."""

    def __init__(self, targets: list[dict], task: str, labels: list[str] | None, prefix: str, tokenizer,
                 use_chat_template: bool, is_seq2seq: bool, max_new_tokens: int, batch_size: int,
                 max_input_tokens: int):
        self.task, self.labels, self.tokenizer, self.is_seq2seq = task, labels, tokenizer, is_seq2seq
        self.rows = [t.get("row") or {} for t in targets]
        self.golds = [t.get("gold", t["label"]) for t in targets]  # the gold answer, or the teacher's label
        self.prompts = [render_prompt([{"role": "user", "content": prefix + t["input"]}], tokenizer,
                                      use_chat_template, "text") for t in targets]
        self.params = SamplingParams(max_new_tokens=max_new_tokens)
        self.batch_size, self.max_input_tokens = batch_size, max_input_tokens

    def __call__(self, model) -> dict[str, float]:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                outputs = generate(LoadedModel(model, self.tokenizer, self.is_seq2seq, source="training"), self.prompts,
                                   self.params, batch_size=self.batch_size, max_input_tokens=self.max_input_tokens)
        finally:
            model.train(was_training)
        preds = [label_of(out[0].text, self.task, row, self.labels) for out, row in zip(outputs, self.rows)]
        choices = [row.get("choices") for row in self.rows] if self.task == "choice" else None
        metrics = score(preds, self.golds, self.task, choices=choices, labels=self.labels)
        return {TASK_SCORE: main_metric(metrics)[1], "eval_task_answered": metrics["answered"]}
