"""/v1/batches: OpenAI's batch API. A batch is a `batch` job (queued, run by a worker, resumable,
cancellable like any job); its answers and its bad lines come back as files."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from mentor.jobs import ACTIVE
from mentor.server.db import JobRow, epoch
from mentor.server.errors import ApiError
from mentor.server.services import jobs
from mentor.server.shapes import job_page, seen

router = APIRouter()
STATUS = {"validating_files": "validating", "queued": "in_progress", "running": "in_progress", "paused": "in_progress",
          "succeeded": "completed", "failed": "failed", "cancelled": "cancelled"}


class CreateBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input_file_id: str = Field(max_length=64)
    endpoint: str = Field(max_length=64)
    completion_window: str = Field("24h", max_length=16)
    metadata: dict[str, str] | None = None


def batch_object(job: JobRow, settings) -> dict:
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


@router.post("/v1/batches")
def create(request: Request, body: CreateBatch) -> dict:
    ctx = request.app.state.ctx
    row = jobs.create_batch(ctx, body.input_file_id, body.endpoint, body.completion_window, body.metadata)
    return batch_object(row, ctx.settings)


@router.get("/v1/batches")
def list_batches(request: Request, after: str | None = Query(None, max_length=64),
                 limit: int = Query(20, ge=1, le=100)) -> dict:
    ctx = request.app.state.ctx
    return job_page(ctx.db, jobs.batch_jobs(), after, limit, lambda row: batch_object(row, ctx.settings))


@router.get("/v1/batches/{batch_id}")
def retrieve(request: Request, batch_id: str) -> dict:
    ctx = request.app.state.ctx
    return batch_object(jobs.get_batch(ctx, batch_id), ctx.settings)


@router.post("/v1/batches/{batch_id}/cancel")
def cancel(request: Request, batch_id: str) -> dict:
    ctx = request.app.state.ctx
    try:
        row = jobs.stop(ctx, jobs.get_batch(ctx, batch_id), "cancel")
    except jobs.InvalidState as err:  # said in the batch API's statuses
        raise ApiError(400, f"batch {batch_id} is {STATUS[err.job.status]}; it cannot be cancelled",
                       code="invalid_state") from None
    return batch_object(row, ctx.settings)
