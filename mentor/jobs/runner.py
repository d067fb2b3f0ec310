"""Running a job of any kind: validate its config, hold its folder, run its kind's function,
and leave its state, events and result saying what happened."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mentor.errors import DamagedJobFile, MentorError
from mentor.jobs.config import JobConfig, build_config
from mentor.jobs.lifecycle import Job, JobCancelled, disk_full
from mentor.jobs.registry import JobKind, get_kind
from mentor.jobs.result import TunedModel

log = logging.getLogger("mentor")


def make_config(kind: JobKind, config: JobConfig | dict[str, Any] | None, fields: dict[str, Any]) -> JobConfig:
    if isinstance(config, kind.config) and not fields:
        return config
    base = config.model_dump() if isinstance(config, JobConfig) else dict(config or {})
    return build_config(kind.config, {**base, **fields})


def run(kind: str | JobKind, config: JobConfig | dict[str, Any] | None = None, *, parent: Job | None = None,
        **fields: Any) -> TunedModel:
    """Run (or resume, or return the result of) a job; the same call always means the same job.
    `parent`: the job this one is a stage of (a cancel of the parent stops it too)."""
    kind = get_kind(kind) if isinstance(kind, str) else kind
    cfg = make_config(kind, config, fields)
    try:
        job = Job.open(kind.name, cfg, parent)
    except OSError as err:
        if not disk_full(err):
            raise
        raise _no_space(err, Path(cfg.output).expanduser()) from None
    try:
        if (done := job.finished_result()) is not None:
            log.info("%s already holds this finished job", job.folder)
            return done
        job.start()
        result = kind.run_function()(cfg, job)
        job.succeed(result)
        return result
    except DamagedJobFile:
        raise  # the job's own file is unreadable: said, and the job's recorded state left as it is
    except JobCancelled:
        job.mark_cancelled()
        raise
    except KeyboardInterrupt:
        job.mark_cancelled("interrupted")
        raise
    except BaseException as err:
        if disk_full(err, job.folder):  # a checkpoint, the model or a job file could not be written
            log.debug("disk full", exc_info=True)
            err = _no_space(err, job.folder)
            job.fail(err)
            raise err from None
        job.fail(err)
        if not isinstance(err, MentorError):
            log.debug("job failed", exc_info=True)
        raise
    finally:
        job.close()


def _no_space(err: BaseException, folder: Path) -> MentorError:
    filename = getattr(err, "filename", None)
    return MentorError(f"no space left on device while writing the job in {folder}{f' ({filename})' if filename else ''}"
                       ": free some space and rerun the same command to resume from its last complete checkpoint")
