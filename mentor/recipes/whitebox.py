"""White-box distillation recipe: setup / train / save, like tuning, with a teacher.

setup: check that teacher and student share a vocabulary (tokenizers and configs only, before
       any weights load), then the tuning setup for the student (data validated and encoded,
       LoRA); then the teacher: loaded frozen, or (offline logits) its top-k log-probs computed
       once in a subprocess so this process never holds it, or (self-distillation) an EMA;
train: WhiteboxTrainer (MentorTrainer + the method's loss), an evaluation at step 0 so the
       report shows where the student started, checkpoints, resume, early stopping;
save:  the tuning recipe's save (model, curves, card, result.json), the card with every
       distillation parameter.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from mentor.errors import MentorError
from mentor.jobs import Job, TunedModel
from mentor.models import load_model
from mentor.teachers.logprobs import is_served
from mentor.training import arguments, setup
from mentor.training.callbacks import MetricsRecorder, ProgressBar
from mentor.training.checkpoints import last_complete_checkpoint
from mentor.training.outputs import save_tuned
from mentor.training.run import checkpoints_of, train
from mentor.whitebox import offline_logits as offline
from mentor.whitebox.base import method_class
from mentor.whitebox.config import LogitConfig, ResponseGroup, WhiteboxConfig
from mentor.whitebox.trainer import WhiteboxCollator, WhiteboxTrainer
from mentor.whitebox.vocab import VocabCheck, check_vocabularies, output_rows, peek

log = logging.getLogger("mentor")


@dataclass
class Prepared:
    trainer: WhiteboxTrainer
    student: setup.Student
    enc_stats: dict
    vocab: VocabCheck
    teacher_config: object
    logits_seconds: float = 0.0


def _with_keys(ds, split_id: int):
    if ds is None:
        return None
    return ds.add_column("example_index", list(range(len(ds)))).add_column("split_id", [split_id] * len(ds))


def check_pair(cfg: WhiteboxConfig, method_cls):
    """Teacher and student checked from their configs and tokenizers alone, before any weights load:
    (vocabularies, the teacher's config, the student's config)."""
    student_tok, student_config = peek(cfg.model)
    if cfg.uses_ema_teacher or is_served(cfg.teacher):
        # an EMA is the student; a served teacher's tokenizer is checked against the student's by its
        # first request (`offline.ensure_offline_logits`), and its weights are never here
        if is_served(cfg.teacher) and bool(getattr(student_config, "is_encoder_decoder", False)):
            raise MentorError("a served teacher scores causal token sequences: the student must be a causal model")
        rows = output_rows(student_config)
        return VocabCheck(rows, rows, rows, len(student_tok)), student_config, student_config
    teacher_tok, teacher_config = peek(cfg.teacher)
    vocab = check_vocabularies(teacher_tok, student_tok, output_rows(teacher_config), output_rows(student_config),
                               cfg.teacher, cfg.model, announce=method_cls.uses_logits)
    if bool(getattr(teacher_config, "is_encoder_decoder", False)) != bool(getattr(student_config, "is_encoder_decoder", False)):
        raise MentorError("teacher and student must both be causal or both encoder-decoder (seq2seq) models "
                          "for white-box distillation")
    return vocab, teacher_config, student_config


def prepare(cfg: WhiteboxConfig, job: Job, resume: bool = False) -> Prepared:
    """Everything before the first step: checks, data, student, teacher (or its logits), trainer."""
    method_cls = method_class(cfg)
    # what only some methods have: on-policy steps (logit, self), stored teacher logits (logit)
    response = cfg if isinstance(cfg, ResponseGroup) else None
    on_policy_fraction = response.on_policy_fraction if response else 0.0
    offline_logits = isinstance(cfg, LogitConfig) and cfg.offline_logits
    vocab, teacher_config, student_config = check_pair(cfg, method_cls)
    train_examples, eval_examples = setup.load_tuning_data(cfg)
    student = setup.load_student(cfg, longest=lambda s: setup.longest_encoded(train_examples, s),
                                 logits_at_outputs=False)
    train_ds, eval_ds, enc_stats = setup.encode_tuning_data(cfg, student, train_examples, eval_examples)
    loaded, model, bf16 = student.loaded, student.model, student.bf16
    if on_policy_fraction > 0 and loaded.is_seq2seq:
        raise MentorError("on-policy distillation (TRL GKD) is for causal models; set on_policy_fraction to 0")
    train_ds, eval_ds = _with_keys(train_ds, 0), _with_keys(eval_ds, 1)

    teacher = None
    stored, logits_seconds = None, 0.0
    if offline_logits:
        assert isinstance(cfg, LogitConfig)
        stored, logits_seconds = offline.ensure_offline_logits(cfg, job.folder, {"train": train_ds, "eval": eval_ds},
                                                               vocab.width, loaded.is_seq2seq, bf16)
        log.info("training from stored teacher logits: the teacher is not loaded")
    elif not cfg.uses_ema_teacher:
        teacher_loaded = load_model(cfg.teacher, dtype=torch.bfloat16 if bf16 else torch.float32)
        teacher = teacher_loaded.model.eval().requires_grad_(False)

    method = method_cls(cfg, vocab.width)
    method.attach(model, teacher, student_config, teacher_config, loaded.is_seq2seq)

    has_eval = eval_ds is not None
    args = arguments.training_arguments(cfg, checkpoints_of(job), has_eval, bf16, eval_on_start=has_eval and not resume,
                                        checkpointing=student.gradient_checkpointing)
    trainer = WhiteboxTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=WhiteboxCollator(loaded.tokenizer, stored, with_prompts=on_policy_fraction > 0),
        processing_class=loaded.tokenizer,
        callbacks=[MetricsRecorder(job.folder), ProgressBar(), *arguments.early_stopping(cfg, has_eval)],
        is_seq2seq=loaded.is_seq2seq,
        sampler_seed=cfg.seed,
        method=method,
        teacher=teacher,
        teacher_is_seq2seq=loaded.is_seq2seq,
        kd_ratio=cfg.kd_ratio,
        # on-policy sampling: the response group's settings (other methods train on the data alone)
        **(dict(on_policy_fraction=response.on_policy_fraction, max_new_tokens=response.max_new_tokens,
                temperature=response.temperature) if response else {}),
    )
    return Prepared(trainer, student, enc_stats, vocab, teacher_config, logits_seconds)


def run(cfg: WhiteboxConfig, job: Job) -> TunedModel:
    """White-box distillation of a student from a teacher; rerunning the same job resumes it."""
    resume = last_complete_checkpoint(checkpoints_of(job), remove=job.main)
    prep = prepare(cfg, job, resume=resume is not None)
    train(prep.trainer, job)

    extra = {"teacher": cfg.teacher or "ema", "distill_method": cfg.method,
             "vocabulary": {"width": prep.vocab.width, "teacher_rows": prep.vocab.teacher_rows,
                            "student_rows": prep.vocab.student_rows, "cropped": prep.vocab.cropped}}
    if isinstance(cfg, LogitConfig) and cfg.offline_logits:
        extra["teacher_logits"] = {"folder": str(offline.logits_folder(cfg, job.folder)), "top_k": cfg.top_k,
                                   "seconds_this_run": round(prep.logits_seconds, 1)}
    notes = []
    start = _step0_eval(job.folder)
    if start:
        extra["eval_at_start"] = start
        notes.append("evaluation before training: " + ", ".join(f"{k} {v:.4f}" for k, v in start.items()))
    if prep.vocab.cropped:
        notes.append(f"vocabulary: logits cropped to {prep.vocab.width} columns (padding rows of the output matrices)")
    return save_tuned(job, prep.trainer, prep.student, prep.enc_stats, extra=extra, notes=notes)


def _step0_eval(out: Path) -> dict:
    path = out / "metrics.jsonl"
    if not path.exists():
        return {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if row.get("step") == 0 and "eval_total_loss" in row:
            return {k: v for k, v in row.items() if k.startswith("eval_") and not k.endswith(("runtime", "per_second"))}
    return {}
