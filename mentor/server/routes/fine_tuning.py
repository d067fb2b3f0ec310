"""/v1/fine_tuning/jobs: OpenAI's fine-tuning API over mentor's job model (every kind), with
mentor's pause and resume."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request

from mentor.server import shapes
from mentor.server.job_requests import CreateFineTuningJob
from mentor.server.services import jobs

router = APIRouter()


@router.post("/v1/fine_tuning/jobs")
def create(request: Request, body: CreateFineTuningJob) -> dict:
    ctx = request.app.state.ctx
    return shapes.job_object(jobs.create_fine_tuning(ctx, body), ctx.settings)


@router.get("/v1/fine_tuning/jobs")
def list_jobs(request: Request, after: str | None = Query(None, max_length=64), limit: int = Query(20, ge=1, le=100),
              kind: str | None = Query(None, max_length=64)) -> dict:
    ctx = request.app.state.ctx
    return shapes.job_page(ctx.db, jobs.model_jobs(kind), after, limit, lambda row: shapes.job_object(row, ctx.settings))


@router.get("/v1/fine_tuning/jobs/{job_id}")
def retrieve(request: Request, job_id: str) -> dict:
    ctx = request.app.state.ctx
    return shapes.job_object(jobs.get(ctx, job_id), ctx.settings)


@router.post("/v1/fine_tuning/jobs/{job_id}/cancel")
def cancel(request: Request, job_id: str) -> dict:
    ctx = request.app.state.ctx
    return shapes.job_object(jobs.stop(ctx, jobs.get(ctx, job_id), "cancel"), ctx.settings)


@router.post("/v1/fine_tuning/jobs/{job_id}/pause")
def pause(request: Request, job_id: str) -> dict:
    ctx = request.app.state.ctx
    return shapes.job_object(jobs.stop(ctx, jobs.get(ctx, job_id), "pause"), ctx.settings)


@router.post("/v1/fine_tuning/jobs/{job_id}/resume")
def resume(request: Request, job_id: str) -> dict:
    ctx = request.app.state.ctx
    return shapes.job_object(jobs.resume(ctx, jobs.get(ctx, job_id)), ctx.settings)


@router.get("/v1/fine_tuning/jobs/{job_id}/events")
def events(request: Request, job_id: str, after: str | None = Query(None, max_length=80),
           limit: int = Query(20, ge=1, le=1000)) -> dict:
    return shapes.page(shapes.events(jobs.get(request.app.state.ctx, job_id)), after, limit)


@router.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
def checkpoints(request: Request, job_id: str, after: str | None = Query(None, max_length=80),
                limit: int = Query(10, ge=1, le=100)) -> dict:
    return shapes.page(shapes.checkpoints(jobs.get(request.app.state.ctx, job_id)), after, limit)
