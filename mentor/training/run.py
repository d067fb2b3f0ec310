"""The training step every kind shares: resume from the last complete checkpoint, train with
the job's lifecycle attached (progress, events, cancel at a step boundary), time it."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path

from transformers.trainer_callback import PrinterCallback

from mentor.jobs import Job
from mentor.training.callbacks import JobCallback
from mentor.training.checkpoints import last_complete_checkpoint

log = logging.getLogger("mentor")


def checkpoints_of(job: Job) -> Path:
    return job.folder / "checkpoints"


def train(trainer, job: Job, quiet=nullcontext) -> None:
    """Train (or resume) to the end, an early stop, or a cancel (raised as JobCancelled)."""
    resume = last_complete_checkpoint(checkpoints_of(job))
    if resume:
        log.info("resuming from %s", resume)
    trainer.remove_callback(PrinterCallback)  # the progress bar shows metrics; no dict per step
    lifecycle = JobCallback(job)
    trainer.add_callback(lifecycle)
    with quiet():
        trainer.train(resume_from_checkpoint=resume)
    if lifecycle.cancelled:
        raise job.cancelled()
