"""/v1/batches: OpenAI's batch API. A batch is a `batch` job (queued, run by a worker, resumable,
cancellable like any job); its answers and its bad lines come back as files."""

from __future__ import annotations

import json
import re

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from mentor.jobs import get_kind
from mentor.server.db import JobRow, epoch
from mentor.server.errors import ApiError, bad, not_found
from mentor.server.job_requests import validate_config
from mentor.server.routes.fine_tuning import ACTIVE, create_job
from mentor.server.routes.inference import servable
from mentor.server.uploads import get_file, new_id

router = APIRouter()
BATCH_ID = re.compile(r"^batch-[a-z0-9]{24}$")
STATUS = {"validating_files": "validating", "queued": "in_progress", "running": "in_progress", "paused": "in_progress",
          "succeeded": "completed", "failed": "failed", "cancelled": "cancelled"}


class CreateBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input_file_id: str = Field(max_length=64)
    endpoint: str = Field(max_length=64)
    completion_window: str = Field("24h", max_length=16)
    metadata: dict[str, str] | None = None


def batch_object(job: JobRow, settings) -> dict:
    from mentor.server.shapes import seen

    now = seen(job, settings)  # a batch whose worker died is not shown in progress
    state = now.state
    status = "cancelling" if job.requested == "cancel" and now.status in ACTIVE else STATUS[now.status]
    result = job.request.get("result", {})
    counts = {"total": state.get("total_steps") or 0, "completed": result.get("completed", 0),
              "failed": result.get("failed", 0)}
    if now.status == "running":
        counts["completed"] = max((state.get("step") or 0), 0)
    return {"id": job.id, "object": "batch", "endpoint": job.config.get("endpoint"), "errors": now.error and {
                "object": "list", "data": [{"code": now.error.get("code"), "message": now.error.get("message")}]},
            "input_file_id": job.training_file, "completion_window": job.request.get("completion_window", "24h"),
            "status": status, "output_file_id": result.get("output_file_id"),
            "error_file_id": result.get("error_file_id"), "created_at": epoch(job.created_at),
            "in_progress_at": epoch(job.started_at), "expires_at": None, "finalizing_at": None,
            "completed_at": epoch(job.finished_at) if now.status == "succeeded" else None,
            "failed_at": epoch(job.finished_at) if now.status == "failed" else None, "expired_at": None,
            "cancelling_at": None, "cancelled_at": epoch(job.finished_at) if now.status == "cancelled" else None,
            "request_counts": counts, "metadata": job.job_metadata or None}


def _get(ctx, batch_id: str) -> JobRow:
    if not BATCH_ID.match(batch_id or ""):
        raise not_found("batch", batch_id[:80], "batch_id")
    with ctx.db.session() as s:
        row = s.get(JobRow, batch_id)
    if row is None or row.kind != "batch":
        raise not_found("batch", batch_id, "batch_id")
    return row


@router.post("/v1/batches")
def create(request: Request, body: CreateBatch) -> dict:
    ctx = request.app.state.ctx
    if body.endpoint not in ("/v1/chat/completions", "/v1/completions"):
        raise bad("endpoint must be /v1/chat/completions or /v1/completions", "endpoint")
    file = get_file(ctx.db, body.input_file_id, "input_file_id")
    models = {}
    with open(file.path, "rb") as f:  # the models the lines name, resolved now (the registry is the server's)
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
    job_id = new_id("batch")
    kind = get_kind("batch")
    cfg = validate_config(kind, {"input": file.path, "endpoint": body.endpoint, "models": models,
                                 "listed_models_only": True,
                                 "output": str(ctx.settings.jobs_dir / job_id),
                                 "memory_mb": ctx.settings.serving_memory_mb})
    row = create_job(ctx, kind, cfg, base_model=", ".join(sorted(models)) or "-", training_file=file.id,
                     validation_file=None, suffix=None, metadata=body.metadata,
                     request={"completion_window": body.completion_window}, api="batch", job_id=job_id)
    return batch_object(row, ctx.settings)


@router.get("/v1/batches")
def list_batches(request: Request, after: str | None = Query(None, max_length=64),
                 limit: int = Query(20, ge=1, le=100)) -> dict:
    from mentor.server.shapes import job_page

    ctx = request.app.state.ctx
    return job_page(ctx.db, select(JobRow).where(JobRow.kind == "batch"), after, limit,
                    lambda row: batch_object(row, ctx.settings))


@router.get("/v1/batches/{batch_id}")
def retrieve(request: Request, batch_id: str) -> dict:
    return batch_object(_get(request.app.state.ctx, batch_id), request.app.state.ctx.settings)


@router.post("/v1/batches/{batch_id}/cancel")
def cancel(request: Request, batch_id: str) -> dict:
    ctx = request.app.state.ctx
    with ctx.db.begin() as s:
        row = s.get(JobRow, _get(ctx, batch_id).id)
        if row.status not in ACTIVE:
            raise ApiError(400, f"batch {batch_id} is {STATUS[row.status]}; it cannot be cancelled", code="invalid_state")
        row.requested = "cancel"
    ctx.scheduler.wake()
    return batch_object(_get(ctx, batch_id), ctx.settings)
