"""The tuning core's MentorTrainer with a teacher: one loss = (1 - kd_ratio) * next-token loss +
kd_ratio * the method's distillation loss, both logged.

Metrics: `*_total_loss`, `*_fraction_of_correct_next_step_preds`, `*_num_predictions` as in
tuning (the student on the data), plus the method's distance (`*_kd_loss`, `*_feature_loss` or
`*_relation_loss`) and `*_distill_objective` (the mixed loss that is minimized).

The teacher is frozen in eval mode and runs without gradients; with offline logits there is no
teacher at all, the collator brings its stored top-k log-probs with each batch. On-policy steps
(a share `on_policy_fraction` of the steps) replace the batch's outputs by the student's own
samples through TRL GKD's `generate_on_policy_outputs` and train on the distillation loss alone,
as GKD does.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from transformers import GenerationConfig, TrainerCallback

from mentor.data.encode import IGNORE
from mentor.files import atomic_path
from mentor.training.arguments import collator
from mentor.training.trainer import MentorTrainer, accepts_logits_to_keep
from mentor.whitebox.base import Method, run_model

STATE_FILE = "whitebox_state.pt"
BATCH_EXTRAS = ("teacher_logprobs", "teacher_indices", "prompts", "prompt_attention_mask", "on_policy")


class WhiteboxCollator:
    """Pads like the tuning collator; adds stored teacher logits and (on-policy) left-padded prompts."""

    def __init__(self, tokenizer, teacher_logits: dict | None = None, with_prompts: bool = False):
        self.base = collator(tokenizer)
        self.teacher_logits = teacher_logits or {}
        self.with_prompts = with_prompts
        self.pad_id = tokenizer.pad_token_id

    def __call__(self, features: list[dict]) -> dict:
        features = [dict(f) for f in features]
        keys = [(f.pop("split_id", 0), f.pop("example_index", -1)) for f in features]
        prompts = [f["input_ids"][: next((i for i, t in enumerate(f["labels"]) if t != IGNORE), len(f["labels"]))]
                   for f in features] if self.with_prompts else None
        batch = self.base(features)
        if self.teacher_logits:
            parts = [self.teacher_logits[split].get(i) for split, i in keys]
            batch["teacher_logprobs"] = torch.cat([p[0] for p in parts])
            batch["teacher_indices"] = torch.cat([p[1] for p in parts])
        if prompts is not None:
            width = max(len(p) for p in prompts)
            batch["prompts"] = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in prompts])
            batch["prompt_attention_mask"] = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        return batch


class _AfterOptimizerStep(TrainerCallback):
    def __init__(self, trainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer.method.after_optimizer_step(self.trainer.model)


class WhiteboxTrainer(MentorTrainer):
    def __init__(self, *args, method: Method, teacher=None, teacher_is_seq2seq: bool = False,
                 kd_ratio: float = 0.5, on_policy_fraction: float = 0.0, max_new_tokens: int = 64,
                 temperature: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.method = method
        self.teacher = teacher
        device = self.args.device
        if teacher is not None:
            teacher.eval().requires_grad_(False)
            if not getattr(teacher, "hf_device_map", None):  # a teacher placed with a device_map stays put
                teacher.to(device)
        for module in [*method.extra_modules(), method.live_teacher()]:
            if module is not None:
                module.to(device)
        self.teacher_is_seq2seq = teacher_is_seq2seq
        self._teacher_keep = teacher is not None and not teacher_is_seq2seq and accepts_logits_to_keep(teacher)
        self.kd_ratio = kd_ratio
        self.on_policy_fraction = on_policy_fraction
        if on_policy_fraction > 0:
            gen = self.model.generation_config
            self.generation_config = GenerationConfig(  # as TRL GKD samples: at the KD temperature
                max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature, top_k=0,
                pad_token_id=gen.pad_token_id, eos_token_id=gen.eos_token_id)

        self.add_callback(_AfterOptimizerStep(self))

    # -- teacher ------------------------------------------------------------------------------
    def _teacher(self):
        return self.teacher if self.teacher is not None else self.method.live_teacher()

    def _teacher_forward(self, batch: dict):
        teacher = self._teacher()
        if teacher is None:
            return None
        keep = self._teacher_keep if teacher is self.teacher else self._keep_logits
        with torch.no_grad():
            return run_model(teacher, batch, self.teacher_is_seq2seq, keep, hidden=self.method.needs_hidden_states)

    # -- loss -----------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if model.training else "eval"
        extras = {k: inputs[k] for k in BATCH_EXTRAS if k in inputs}
        batch = {k: v for k, v in inputs.items() if k not in BATCH_EXTRAS}
        on_policy = bool(extras.get("on_policy", False))
        student = run_model(model, batch, self.is_seq2seq, self._keep_logits, hidden=self.method.needs_hidden_states)
        teacher = self._teacher_forward(batch)
        distill, sums = self.method.distill_loss(student, teacher, extras)
        count = max(student.count, 1)
        ce = student.loss_sum / count
        ratio = 1.0 if on_policy else self.kd_ratio
        loss = (1.0 - ratio) * ce + ratio * distill if ratio < 1.0 else distill
        if not on_policy:  # next-token metrics on the data, not on the student's own samples
            self.record(mode, loss_sum=student.loss_sum.item(), correct=student.correct.item(), count=count)
        else:
            self.record(mode, on_policy_batches=1)
        self.record(mode, objective_sum=loss.item(), batches=1, **sums)
        return (loss, {}) if return_outputs else loss

    def metrics_for(self, mode: str) -> dict[str, float]:
        had_data_batches = self._sums[mode].get("count", 0.0) > 0
        metrics = super().metrics_for(mode)
        if not had_data_batches:  # only on-policy batches since the last log: no next-token metrics on data
            for k in ("total_loss", "fraction_of_correct_next_step_preds", "num_predictions"):
                metrics.pop(f"{mode}_{k}", None)
        return metrics

    def extra_metrics(self, mode: str, sums: dict) -> dict[str, float]:
        metrics = self.method.metrics(mode, sums)
        batches = max(sums.get("batches", 0.0), 1.0)
        metrics[f"{mode}_distill_objective"] = sums.get("objective_sum", 0.0) / batches
        if mode == "train" and self.on_policy_fraction > 0:
            metrics["train_on_policy_share"] = sums.get("on_policy_batches", 0.0) / batches
        return metrics

    # -- on-policy steps (TRL GKD) -------------------------------------------------------------
    def training_step(self, model, inputs, num_items_in_batch=None):
        prompts = inputs.pop("prompts", None)
        prompt_mask = inputs.pop("prompt_attention_mask", None)
        if prompts is not None and self._on_policy_now():
            from trl.experimental.gkd import GKDTrainer
            from trl.models.utils import unwrap_model_for_generation

            from mentor.whitebox.losses import generalized_jsd  # noqa: F401 - sets the TRL warning switch

            with unwrap_model_for_generation(model, self.accelerator) as unwrapped:
                ids, mask, labels = GKDTrainer.generate_on_policy_outputs(
                    unwrapped, {"prompts": prompts, "prompt_attention_mask": prompt_mask}, self.generation_config)
            inputs = {"input_ids": ids, "attention_mask": mask, "labels": labels, "on_policy": True}
        return super().training_step(model, inputs, num_items_in_batch)

    def _on_policy_now(self) -> bool:
        # Seeded by step, so a resumed run makes the same choices as an uninterrupted one.
        rng = random.Random(self.args.seed * 1_000_003 + self.state.global_step)
        return rng.random() < self.on_policy_fraction

    # -- methods' extra parameters and state -------------------------------------------------------
    def create_optimizer(self, model=None):
        fresh = self.optimizer is None
        optimizer = super().create_optimizer(model)
        params = [p for m in self.method.extra_modules() for p in m.parameters() if p.requires_grad]
        if fresh and params:
            optimizer.add_param_group({"params": params, "weight_decay": 0.0})
        return optimizer

    def _save_checkpoint(self, model, trial):
        state = self.method.state_dict()
        if state:  # written before the Trainer's files, so a checkpoint with trainer_state.json has it
            folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
            folder.mkdir(parents=True, exist_ok=True)
            with atomic_path(folder / STATE_FILE) as tmp:
                torch.save(state, tmp)
        super()._save_checkpoint(model, trial)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = Path(resume_from_checkpoint) / STATE_FILE
        if path.exists():
            self.method.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
