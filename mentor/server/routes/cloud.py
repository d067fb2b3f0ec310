"""The cloud's shape: tuning and distillation pipeline jobs with `parameterValues`, states
JOB_STATE_*, at projects/PROJECT/locations/LOCATION/pipelineJobs. The same jobs as /v1/fine_tuning."""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from sqlalchemy import select

from mentor.server import shapes
from mentor.server.db import JobRow
from mentor.server.errors import bad
from mentor.server.job_requests import CloudPipelineJob, Resolver, from_cloud
from mentor.server.routes.fine_tuning import create_job, get_job, request_stop
from mentor.server.uploads import new_id

router = APIRouter()
NAME = r"^[A-Za-z0-9._-]{1,64}$"
PREFIX = "/v1/projects/{project}/locations/{location}/pipelineJobs"


@router.post(PREFIX)
def create(request: Request, body: CloudPipelineJob, project: str = PathParam(pattern=NAME),
           location: str = PathParam(pattern=NAME)) -> dict:
    ctx = request.app.state.ctx
    job_id = new_id("ftjob")
    kind, cfg, tensorboard = from_cloud(body, Resolver(ctx.db, ctx.settings), ctx.settings.jobs_dir / job_id)
    if tensorboard:  # before the job exists: a folder that cannot be made refuses the request
        try:
            Path(tensorboard).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise bad(f"tensorboard_resource_id: cannot make the folder {tensorboard!r} ({err.strerror})",
                      "tensorboard_resource_id") from None
    row = create_job(ctx, kind, cfg, base_model=getattr(cfg, "model", ""), training_file=None, validation_file=None,
                     suffix=None, metadata={"project": project, "location": location},
                     request={"parameterValues": body.parameters()}, api="cloud", job_id=job_id,
                     display_name=body.display_name)
    if tensorboard:  # the job's TensorBoard logs, seen from the folder the request named
        link = Path(tensorboard) / job_id
        if not link.exists():
            os.symlink(Path(row.folder) / "tensorboard", link, target_is_directory=True)
    return shapes.cloud_object(row, project, location, ctx.settings)


@router.get(PREFIX)
def list_jobs(request: Request, project: str = PathParam(pattern=NAME), location: str = PathParam(pattern=NAME)) -> dict:
    with request.app.state.ctx.db.session() as s:
        rows = list(s.scalars(select(JobRow).where(JobRow.api == "cloud").order_by(JobRow.created_at.desc())))
    here = {"project": project, "location": location}
    return {"pipelineJobs": [shapes.cloud_object(r, project, location, request.app.state.ctx.settings) for r in rows
                             if {k: (r.job_metadata or {}).get(k) for k in here} == here]}


@router.get(PREFIX + "/{job_id}")
def retrieve(request: Request, job_id: str, project: str = PathParam(pattern=NAME),
             location: str = PathParam(pattern=NAME)) -> dict:
    return shapes.cloud_object(get_job(request.app.state.ctx, job_id), project, location, request.app.state.ctx.settings)


@router.post(PREFIX + "/{job_id}:cancel")
def cancel(request: Request, job_id: str, project: str = PathParam(pattern=NAME),
           location: str = PathParam(pattern=NAME)) -> dict:
    return shapes.cloud_object(request_stop(request.app.state.ctx, job_id, "cancel"), project, location,
                               request.app.state.ctx.settings)
