"""The job service: create a job from any API's request (OpenAI's fine-tuning and batch APIs, the
cloud's pipeline jobs, mentor's own by kind), find, list, stop (cancel, pause) and resume one. The
database row is the service's record; the job folder (its config, the worker's order) is laid out here."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from sqlalchemy import Select, select

from mentor.jobs import ACTIVE, JobConfig, JobKind, get_kind, kinds, write_job_config
from mentor.server.db import JobRow, now
from mentor.server.errors import ApiError, bad, disk_full, no_space, not_found
from mentor.server.job_requests import (
    CloudPipelineJob,
    CreateFineTuningJob,
    Resolver,
    from_cloud,
    from_openai,
    resolve_fields,
    validate_config,
)
from mentor.server.scheduler import service_event
from mentor.server.services.models import servable
from mentor.server.uploads import FILE_ID, get_file, new_id

log = logging.getLogger("mentor")
JOB_ID = re.compile(r"^ftjob-[a-z0-9]{24}$")
BATCH_ID = re.compile(r"^batch-[a-z0-9]{24}$")


class InvalidState(ApiError):
    """A job asked to do what its status does not allow; a route may say it in its API's words."""

    def __init__(self, job: JobRow, message: str):
        super().__init__(400, message, code="invalid_state")
        self.job = job


# -- creating ---------------------------------------------------------------------------------------

def create(ctx, kind: JobKind, cfg: JobConfig, *, base_model: str, training_file: str | None,
           validation_file: str | None, suffix: str | None, metadata: dict | None, request: dict, api: str,
           job_id: str, display_name: str | None = None) -> JobRow:
    """Record a job and lay out its folder (its job config is the worker's order)."""
    folder = ctx.settings.jobs_dir / job_id
    row = JobRow(id=job_id, kind=kind.name, config=cfg.model_dump(mode="json"), status="validating_files",
                 folder=str(folder), base_model=base_model, training_file=training_file,
                 validation_file=validation_file, suffix=suffix, seed=getattr(cfg, "seed", 0) or 0,
                 request=request, api=api, display_name=display_name, job_metadata=metadata or {})
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # whole or not at all: a worker (or a restarted server) must never read half an order
        write_job_config(folder, kind.name, cfg.model_dump(mode="json"))
        # the event before the row: once the row is committed the job exists, and its creation must not fail
        service_event(folder, "created", f"{kind.name} job created", kind=kind.name)
        with ctx.db.begin() as s:
            s.add(row)
    except Exception as err:
        # no half-created job: no folder a later job or a look at the disk would take for one (no row was committed)
        shutil.rmtree(folder, ignore_errors=True)
        if disk_full(err):
            log.error("no space left on device while creating job %s: %s", job_id, err)
            raise no_space(f"creating job {job_id}") from None
        raise
    ctx.scheduler.wake()
    return row


def create_fine_tuning(ctx, body: CreateFineTuningJob) -> JobRow:
    """POST /v1/fine_tuning/jobs: OpenAI's body, its method type mapped to a kind."""
    job_id = new_id("ftjob")
    kind, cfg = from_openai(body, Resolver(ctx.db, ctx.settings), ctx.settings.jobs_dir / job_id)
    return create(ctx, kind, cfg, base_model=body.model, training_file=body.training_file,
                  validation_file=body.validation_file, suffix=body.suffix, metadata=body.metadata,
                  request=body.model_dump(mode="json", exclude_none=True), api="openai", job_id=job_id)


def create_pipeline(ctx, body: CloudPipelineJob, project: str, location: str) -> JobRow:
    """The cloud's pipeline job, its TensorBoard logs linked into the folder the request names."""
    job_id = new_id("ftjob")
    kind, cfg, tensorboard = from_cloud(body, Resolver(ctx.db, ctx.settings), ctx.settings.jobs_dir / job_id)
    if tensorboard:  # before the job exists: a folder that cannot be made refuses the request
        try:
            Path(tensorboard).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise bad(f"tensorboard_resource_id: cannot make the folder {tensorboard!r} ({err.strerror})",
                      "tensorboard_resource_id") from None
    row = create(ctx, kind, cfg, base_model=getattr(cfg, "model", ""), training_file=None, validation_file=None,
                 suffix=None, metadata={"project": project, "location": location},
                 request={"parameterValues": body.parameters()}, api="cloud", job_id=job_id,
                 display_name=body.display_name)
    if tensorboard:
        link = Path(tensorboard) / job_id
        if not link.exists():
            os.symlink(Path(row.folder) / "tensorboard", link, target_is_directory=True)
    return row


def create_of_kind(ctx, kind_name: str, config: dict[str, Any], *, suffix: str | None, display_name: str | None,
                   request: dict) -> JobRow:
    """mentor's own: a job of any registered kind, by its config fields (data fields an upload or a path)."""
    if kind_name not in kinds():
        raise bad(f"unknown job kind '{kind_name}'; kinds: {', '.join(kinds())}", "kind", "unknown_kind")
    kind = get_kind(kind_name)
    job_id = new_id("ftjob")
    fields = {k: v for k, v in config.items() if v is not None and v != ""}
    cfg = validate_config(kind, {**resolve_fields(kind, fields, Resolver(ctx.db, ctx.settings)),
                                 "output": str(ctx.settings.jobs_dir / job_id)})
    # the uploads by role, not by position: an RLHF job given a trained reward model reads its prompts
    # (its third input) and no preference pairs (its first); every role is in the model's lineage
    uploads = {name: fields[name] for name in kind.config.input_fields
               if isinstance(fields.get(name), str) and FILE_ID.match(fields[name])}
    evaluation = [name for name in uploads if name.startswith(("eval", "validation"))]
    training = [name for name in uploads if name not in evaluation and name not in ("test_data", "prompt_examples")]
    return create(ctx, kind, cfg, base_model=str(getattr(cfg, "model", "") or ""),
                  training_file=uploads[training[0]] if training else None,
                  validation_file=uploads[evaluation[0]] if evaluation else None,
                  suffix=suffix, metadata=None, request=request, api="mentor", job_id=job_id,
                  display_name=display_name)


def _models_named(ctx, path: str) -> dict[str, str]:
    """The models a batch file's lines name, resolved now (the registry is the server's): name -> reference."""
    models = {}
    with open(path, "rb") as f:
        for raw in f:
            try:
                name = json.loads(raw).get("body", {}).get("model")
            except (ValueError, AttributeError):
                continue
            if isinstance(name, str) and name not in models:
                try:
                    s = servable(ctx, name)
                    models[name] = s.adapter or s.base
                except ApiError:
                    pass  # the line fails with "unknown model" and the rest are answered
    return models


def create_batch(ctx, input_file_id: str, endpoint: str, completion_window: str, metadata: dict | None) -> JobRow:
    """OpenAI's batch: a job of the kind that produces predictions, answering every line of the file."""
    if endpoint not in ("/v1/chat/completions", "/v1/completions"):
        raise bad("endpoint must be /v1/chat/completions or /v1/completions", "endpoint")
    file = get_file(ctx.db, input_file_id, "input_file_id")
    models = _models_named(ctx, file.path)
    job_id = new_id("batch")
    kind = get_kind("batch")
    cfg = validate_config(kind, {"input": file.path, "endpoint": endpoint, "models": models,
                                 "listed_models_only": True, "output": str(ctx.settings.jobs_dir / job_id),
                                 "memory_mb": ctx.settings.serving_memory_mb})
    return create(ctx, kind, cfg, base_model=", ".join(sorted(models)) or "-", training_file=file.id,
                  validation_file=None, suffix=None, metadata=metadata,
                  request={"completion_window": completion_window}, api="batch", job_id=job_id)


# -- finding ----------------------------------------------------------------------------------------

def _prediction_kinds() -> list[str]:
    return [k.name for k in kinds().values() if k.produces == "predictions"]


def get(ctx, job_id: str) -> JobRow:
    """A job by its ftjob- id (a batch has its own id and is found by get_batch)."""
    if not JOB_ID.match(job_id or ""):
        raise not_found("fine-tuning job", job_id[:80], "fine_tuning_job_id")
    with ctx.db.session() as s:
        row = s.get(JobRow, job_id)
    if row is None:
        raise not_found("fine-tuning job", job_id, "fine_tuning_job_id")
    return row


def get_batch(ctx, batch_id: str) -> JobRow:
    if not BATCH_ID.match(batch_id or ""):
        raise not_found("batch", batch_id[:80], "batch_id")
    with ctx.db.session() as s:
        row = s.get(JobRow, batch_id)
    if row is None or row.kind not in _prediction_kinds():
        raise not_found("batch", batch_id, "batch_id")
    return row


def model_jobs(kind: str | None = None) -> Select:
    """The jobs that make models, for a page of them (batches are listed at /v1/batches, in their shape)."""
    query = select(JobRow).where(JobRow.kind.not_in(_prediction_kinds()))
    return query.where(JobRow.kind == kind) if kind else query


def batch_jobs() -> Select:
    return select(JobRow).where(JobRow.kind.in_(_prediction_kinds()))


def pipeline_jobs(ctx, project: str, location: str) -> list[JobRow]:
    """The cloud's jobs of one project and location, newest first."""
    with ctx.db.session() as s:
        rows = list(s.scalars(select(JobRow).where(JobRow.api == "cloud").order_by(JobRow.created_at.desc())))
    here = {"project": project, "location": location}
    return [r for r in rows if {k: (r.job_metadata or {}).get(k) for k in here} == here]


# -- stopping and resuming --------------------------------------------------------------------------

def stop(ctx, row: JobRow, what: str) -> JobRow:
    """Ask a job to cancel or pause: it stops at its next step and keeps its last checkpoint. A
    paused job is cancelled at once (nothing runs); pausing one is refused."""
    with ctx.db.begin() as s:
        row = s.get(JobRow, row.id)
        if row.status not in ACTIVE or (what == "pause" and row.status == "paused"):
            raise InvalidState(row, f"job {row.id} is {row.status}; only a queued or running job can be "
                               + ("canceled" if what == "cancel" else "paused"))
        if row.status == "paused":
            row.status, row.finished_at = "cancelled", now()
        else:
            row.requested = what
    service_event(row.folder, f"{what}_requested", f"{what} requested")
    ctx.scheduler.wake()
    with ctx.db.session() as s:
        return s.get(JobRow, row.id)


def resume(ctx, row: JobRow) -> JobRow:
    """A paused job back in the queue: it continues from its last checkpoint."""
    with ctx.db.begin() as s:
        row = s.get(JobRow, row.id)
        if row.status != "paused":
            raise InvalidState(row, f"job {row.id} is {row.status}; only a paused job can be resumed")
        row.status, row.requested = "queued", None
    service_event(row.folder, "resume_requested", "resume requested: the job continues from its last checkpoint")
    ctx.scheduler.wake()
    with ctx.db.session() as s:
        return s.get(JobRow, row.id)
