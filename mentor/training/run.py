"""The training step every kind shares: resume from the last complete checkpoint, train with
the job's lifecycle attached (progress, events, cancel at a step boundary), time it."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path

from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_callback import EarlyStoppingCallback, PrinterCallback, TrainerState

from mentor.jobs import Job
from mentor.training.callbacks import JobCallback, ProgressBar
from mentor.training.checkpoints import last_complete_checkpoint

log = logging.getLogger("mentor")


def checkpoints_of(job: Job) -> Path:
    return job.folder / "checkpoints"


def train(trainer, job: Job, quiet=nullcontext) -> None:
    """Train (or resume) to the end, an early stop, or a cancel (raised as JobCancelled)."""
    resume = last_complete_checkpoint(checkpoints_of(job), remove=job.main)
    state = TrainerState.load_from_json(str(Path(resume) / TRAINER_STATE_NAME)) if resume else None
    ended = _training_ended(trainer, state) if state else None
    if state and ended:
        # Trainer would take one step more from a checkpoint of the last step, and one evaluation
        # interval more from that of an early stop (killed as the job was being recorded): the
        # training is done, only its result is loaded
        log.info("%s holds the %s: loading it", resume, ended)
        trainer.state = state
        trainer._load_from_checkpoint(resume)
        best = trainer.state.best_model_checkpoint
        if trainer.args.load_best_model_at_end and best and Path(best).is_dir():
            trainer._load_best_model()
        job.event("resumed", f"resumed at the {ended}, step {trainer.state.global_step}: nothing left to train",
                  step=trainer.state.global_step)
        return
    if resume:
        log.info("resuming from %s", resume)
    trainer.remove_callback(PrinterCallback)  # the progress bar shows metrics; no dict per step
    lifecycle = JobCallback(job)
    trainer.add_callback(lifecycle)
    try:
        with quiet():
            trainer.train(resume_from_checkpoint=resume)
    finally:  # a training that raised never ends its progress bar, which would print after the error
        for callback in trainer.callback_handler.callbacks:
            if isinstance(callback, ProgressBar):
                callback.close()
    if lifecycle.cancelled:
        raise job.cancelled()


def _training_ended(trainer, state: TrainerState) -> str | None:
    """What ended the training a checkpoint's state belongs to ("last step", "early stop"), or None."""
    if state.global_step >= trainer.args.max_steps:
        return "last step"
    # TrainerState declares stateful_callbacks a list of callbacks, but turns it into their states by class
    # name when built (and reads it so from JSON): a dict
    stopping = (state.stateful_callbacks or {}).get(  # pyright: ignore[reportAttributeAccessIssue]
        EarlyStoppingCallback.__name__)
    for kept in stopping if isinstance(stopping, list) else [stopping] if stopping else []:
        if kept["attributes"]["early_stopping_patience_counter"] >= kept["args"]["early_stopping_patience"]:
            return "early stop"  # the evaluation that stopped it was saved with this checkpoint
    return None
