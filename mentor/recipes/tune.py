"""Supervised tuning recipe: full fine-tuning or LoRA on text or chat data.

setup: validate all data, load the model, tokenize (inputs and outputs truncated to their
       limits), wrap with LoRA;
train: the Trainer with early stopping on eval next-token accuracy, a checkpoint at every
       evaluation, resume from the last complete one;
save:  the best (or last) model, tokenizer, curves, model card and a summary.
"""

from __future__ import annotations

from mentor.jobs import Job, TunedModel
from mentor.training import arguments, setup
from mentor.training.callbacks import MetricsRecorder, ProgressBar
from mentor.training.config import TuneConfig
from mentor.training.outputs import save_tuned
from mentor.training.run import checkpoints_of, train
from mentor.training.trainer import MentorTrainer


def run(cfg: TuneConfig, job: Job) -> TunedModel:
    # -- setup: all data problems surface here, before any weights load
    train_examples, eval_examples = setup.load_tuning_data(cfg)
    student = setup.load_student(cfg, longest=lambda s: setup.longest_encoded(train_examples, s))
    train_ds, eval_ds, enc_stats = setup.encode_tuning_data(cfg, student, train_examples, eval_examples)

    # -- train
    has_eval = eval_ds is not None
    trainer = MentorTrainer(
        model=student.model,
        args=arguments.training_arguments(cfg, checkpoints_of(job), has_eval, student.bf16,
                                          checkpointing=student.gradient_checkpointing),
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=arguments.collator(student.tokenizer, cfg.packing, student.is_seq2seq, student.attention),
        processing_class=student.tokenizer,
        callbacks=[MetricsRecorder(job.folder), ProgressBar(), *arguments.early_stopping(cfg, has_eval)],
        is_seq2seq=student.is_seq2seq,
        sampler_seed=cfg.seed,
    )
    train(trainer, job)

    # -- save
    return save_tuned(job, trainer, student, enc_stats)
