"""The cloud's shape: tuning and distillation pipeline jobs with `parameterValues`, states
JOB_STATE_*, at projects/PROJECT/locations/LOCATION/pipelineJobs. The same jobs as /v1/fine_tuning."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi import Path as PathParam

from mentor.server import shapes
from mentor.server.job_requests import CloudPipelineJob
from mentor.server.services import jobs

router = APIRouter()
NAME = r"^[A-Za-z0-9._-]{1,64}$"
PREFIX = "/v1/projects/{project}/locations/{location}/pipelineJobs"


@router.post(PREFIX)
def create(request: Request, body: CloudPipelineJob, project: str = PathParam(pattern=NAME),
           location: str = PathParam(pattern=NAME)) -> dict:
    ctx = request.app.state.ctx
    return shapes.cloud_object(jobs.create_pipeline(ctx, body, project, location), project, location, ctx.settings)


@router.get(PREFIX)
def list_jobs(request: Request, project: str = PathParam(pattern=NAME), location: str = PathParam(pattern=NAME)) -> dict:
    ctx = request.app.state.ctx
    return {"pipelineJobs": [shapes.cloud_object(r, project, location, ctx.settings)
                             for r in jobs.pipeline_jobs(ctx, project, location)]}


@router.get(PREFIX + "/{job_id}")
def retrieve(request: Request, job_id: str, project: str = PathParam(pattern=NAME),
             location: str = PathParam(pattern=NAME)) -> dict:
    ctx = request.app.state.ctx
    return shapes.cloud_object(jobs.get(ctx, job_id), project, location, ctx.settings)


@router.post(PREFIX + "/{job_id}:cancel")
def cancel(request: Request, job_id: str, project: str = PathParam(pattern=NAME),
           location: str = PathParam(pattern=NAME)) -> dict:
    ctx = request.app.state.ctx
    return shapes.cloud_object(jobs.stop(ctx, jobs.get(ctx, job_id), "cancel"), project, location, ctx.settings)
