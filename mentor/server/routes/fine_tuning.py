"""/v1/fine_tuning/jobs: OpenAI's fine-tuning API over mentor's job model (every kind), with
mentor's pause and resume."""

from __future__ import annotations

import logging
import re
import shutil

from fastapi import APIRouter, Query, Request
from sqlalchemy import select

from mentor.jobs import write_job_config
from mentor.server import shapes
from mentor.server.db import JobRow, now
from mentor.server.errors import ApiError, disk_full, no_space, not_found
from mentor.server.job_requests import CreateFineTuningJob, Resolver, from_openai
from mentor.server.scheduler import service_event
from mentor.server.uploads import new_id

log = logging.getLogger("mentor")
router = APIRouter()
JOB_ID = re.compile(r"^ftjob-[a-z0-9]{24}$")
ACTIVE = ("validating_files", "queued", "running")


def create_job(ctx, kind, cfg, *, base_model: str, training_file: str | None, validation_file: str | None,
               suffix: str | None, metadata: dict | None, request: dict, api: str, job_id: str,
               display_name: str | None = None) -> JobRow:
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


def get_job(ctx, job_id: str) -> JobRow:
    if not JOB_ID.match(job_id or ""):
        raise not_found("fine-tuning job", job_id[:80], "fine_tuning_job_id")
    with ctx.db.session() as s:
        row = s.get(JobRow, job_id)
    if row is None:
        raise not_found("fine-tuning job", job_id, "fine_tuning_job_id")
    return row


def request_stop(ctx, job_id: str, what: str) -> JobRow:
    """Ask a job to cancel or pause: it stops at its next step and keeps its last checkpoint."""
    with ctx.db.begin() as s:
        row = s.get(JobRow, get_job(ctx, job_id).id)
        if row.status not in ACTIVE and not (what == "cancel" and row.status == "paused"):
            raise ApiError(400, f"job {job_id} is {row.status}; only a queued or running job can be {what}ed"
                           if what == "cancel" else f"job {job_id} is {row.status}; only a queued or running job "
                           "can be paused", code="invalid_state")
        if row.status == "paused":  # cancelling a paused job: nothing runs, it just ends
            row.status, row.finished_at = "cancelled", now()
        else:
            row.requested = what
    service_event(row.folder, f"{what}_requested", f"{what} requested")
    ctx.scheduler.wake()
    return get_job(ctx, job_id)


@router.post("/v1/fine_tuning/jobs")
def create(request: Request, body: CreateFineTuningJob) -> dict:
    ctx = request.app.state.ctx
    job_id = new_id("ftjob")
    kind, cfg = from_openai(body, Resolver(ctx.db, ctx.settings), ctx.settings.jobs_dir / job_id)
    row = create_job(ctx, kind, cfg, base_model=body.model, training_file=body.training_file,
                     validation_file=body.validation_file, suffix=body.suffix, metadata=body.metadata,
                     request=body.model_dump(mode="json", exclude_none=True), api="openai", job_id=job_id)
    return shapes.job_object(row, ctx.settings)


@router.get("/v1/fine_tuning/jobs")
def list_jobs(request: Request, after: str | None = Query(None, max_length=64), limit: int = Query(20, ge=1, le=100),
              kind: str | None = Query(None, max_length=64)) -> dict:
    q = select(JobRow).where(JobRow.kind != "batch")  # batches are listed at /v1/batches, in their own shape
    if kind:
        q = q.where(JobRow.kind == kind)
    ctx = request.app.state.ctx
    return shapes.job_page(ctx.db, q, after, limit, lambda row: shapes.job_object(row, ctx.settings))


@router.get("/v1/fine_tuning/jobs/{job_id}")
def retrieve(request: Request, job_id: str) -> dict:
    return shapes.job_object(get_job(request.app.state.ctx, job_id), request.app.state.ctx.settings)


@router.post("/v1/fine_tuning/jobs/{job_id}/cancel")
def cancel(request: Request, job_id: str) -> dict:
    return shapes.job_object(request_stop(request.app.state.ctx, job_id, "cancel"), request.app.state.ctx.settings)


@router.post("/v1/fine_tuning/jobs/{job_id}/pause")
def pause(request: Request, job_id: str) -> dict:
    return shapes.job_object(request_stop(request.app.state.ctx, job_id, "pause"), request.app.state.ctx.settings)


@router.post("/v1/fine_tuning/jobs/{job_id}/resume")
def resume(request: Request, job_id: str) -> dict:
    ctx = request.app.state.ctx
    with ctx.db.begin() as s:
        row = s.get(JobRow, get_job(ctx, job_id).id)
        if row.status != "paused":
            raise ApiError(400, f"job {job_id} is {row.status}; only a paused job can be resumed", code="invalid_state")
        row.status, row.requested = "queued", None
    service_event(row.folder, "resume_requested", "resume requested: the job continues from its last checkpoint")
    ctx.scheduler.wake()
    return shapes.job_object(get_job(ctx, job_id), ctx.settings)


@router.get("/v1/fine_tuning/jobs/{job_id}/events")
def events(request: Request, job_id: str, after: str | None = Query(None, max_length=80),
           limit: int = Query(20, ge=1, le=1000)) -> dict:
    return shapes.page(shapes.events(get_job(request.app.state.ctx, job_id)), after, limit)


@router.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
def checkpoints(request: Request, job_id: str, after: str | None = Query(None, max_length=80),
                limit: int = Query(10, ge=1, le=100)) -> dict:
    return shapes.page(shapes.checkpoints(get_job(request.app.state.ctx, job_id)), after, limit)
