"""Multi-task training for distilling step-by-step (Hsieh et al. 2023).

Every example yields two sequences from one input: `[label] x -> label` and
`[rationale] x -> rationale`. Each step computes both on the same inputs, as the paper's
trainer does, so the label task gets as many updates as in standard fine-tuning:

    loss = alpha * label_loss + (1 - alpha) * rationale_loss
"""

from __future__ import annotations

from mentor.training.trainer import MentorTrainer, token_loss

RATIONALE_KEYS = ("input_ids", "attention_mask", "labels")


class MultiTaskCollator:
    """Collates the label-task and rationale-task sequences of a batch separately, each with the
    tuning collator (padded, or packed into one row: see `mentor.training.arguments.collator`)."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, features: list[dict]) -> dict:
        batch = dict(self.collate([{k: f[k] for k in RATIONALE_KEYS} for f in features]))
        if "rationale_input_ids" in features[0]:
            rationale = self.collate([{k: f[f"rationale_{k}"] for k in RATIONALE_KEYS} for f in features])
            batch.update({f"rationale_{k}": v for k, v in rationale.items()})
        return batch


class StepByStepTrainer(MentorTrainer):
    """MentorTrainer whose loss mixes the label and rationale tasks; both are logged."""

    def __init__(self, *args, alpha: float = 0.5, **kwargs):
        super().__init__(*args, **kwargs)
        self.alpha = alpha

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if model.training else "eval"
        label_batch = {k: v for k, v in inputs.items() if not k.startswith("rationale_")}
        label = token_loss(model, label_batch, self.is_seq2seq, self._keep_logits)
        label_loss = label.loss_sum / max(label.count, 1)
        loss = label_loss
        values = dict(loss_sum=label.loss_sum.item(), correct=label.correct.item(), count=label.count, label_batches=1,
                      label_loss=label_loss.item())
        if "rationale_input_ids" in inputs and self.alpha < 1.0:
            r_batch = {k[len("rationale_"):]: v for k, v in inputs.items() if k.startswith("rationale_")}
            rationale = token_loss(model, r_batch, self.is_seq2seq, self._keep_logits)
            rationale_loss = rationale.loss_sum / max(rationale.count, 1)  # 0 when every rationale is masked
            loss = self.alpha * label_loss + (1 - self.alpha) * rationale_loss
            values.update(rationale_loss=rationale_loss.item(), rationale_batches=1)
            if mode == "train":  # the Trainer counts the label sequences' tokens; add the rationales'
                mask = r_batch.get("attention_mask")  # a packed batch has no padding to leave out
                self.state.num_input_tokens_seen += int(mask.sum() if mask is not None else r_batch["input_ids"].numel())
        self.record(mode, **values)
        return (loss, label.outputs) if return_outputs else loss

    def extra_metrics(self, mode: str, sums: dict) -> dict[str, float]:
        label = sums.get("label_loss", 0.0) / max(sums.get("label_batches", 0.0), 1.0)
        metrics = {f"{mode}_label_loss": label}
        if sums.get("rationale_batches"):
            rationale = sums["rationale_loss"] / sums["rationale_batches"]
            metrics[f"{mode}_rationale_loss"] = rationale
            metrics[f"{mode}_total_loss"] = self.alpha * label + (1 - self.alpha) * rationale
        return metrics


def merge_tasks(label_rows: list[dict], rationale_rows: list[dict] | None) -> list[dict]:
    """One dataset row per example holding both tasks' token ids."""
    if rationale_rows is None:
        return label_rows
    return [{**l, **{f"rationale_{k}": r[k] for k in RATIONALE_KEYS}} for l, r in zip(label_rows, rationale_rows)]

