"""mentor's own job API, for every registered kind (the OpenAI and cloud shapes cover only tuning and
distillation): the kinds with their config schemas, create a job of any kind by its fields, and a job's
metric rows for live curves. The web console is built on these."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from mentor.jobs import kinds
from mentor.server import shapes
from mentor.server.job_requests import SERVER_FIELDS
from mentor.server.services import jobs

router = APIRouter()


def kind_object(kind) -> dict:
    """A kind as a form is drawn from it: its JSON schema (field names, types, defaults, descriptions,
    bounds) without the fields the server chooses, and which fields name data files."""
    schema = kind.config.model_json_schema(by_alias=False)
    if "keep_checkpoints" in schema.get("properties", {}):  # the server's default (validate_config), not the CLI's
        schema["properties"]["keep_checkpoints"]["default"] = True
    for name in SERVER_FIELDS:
        schema.get("properties", {}).pop(name, None)
        if name in schema.get("required", []):
            schema["required"].remove(name)
    return {"object": "job_kind", "id": kind.name, "family": kind.family, "method": kind.method,
            "summary": kind.summary, "input_fields": list(kind.config.input_fields), "schema": schema}


@router.get("/v1/mentor/kinds")
def list_kinds() -> dict:
    return {"object": "list", "data": [kind_object(k) for k in kinds().values()]}


class CreateJob(BaseModel):
    """A job of any kind: its config fields by name; data fields take an uploaded file id or a path."""

    model_config = ConfigDict(extra="forbid")
    kind: str = Field(min_length=1, max_length=64)
    config: dict[str, Any] = Field(default_factory=dict)
    suffix: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9._-]*$")
    display_name: str | None = Field(None, max_length=256)


@router.post("/v1/mentor/jobs")
def create(request: Request, body: CreateJob) -> dict:
    ctx = request.app.state.ctx
    row = jobs.create_of_kind(ctx, body.kind, body.config, suffix=body.suffix, display_name=body.display_name,
                              request=body.model_dump(mode="json", exclude_none=True))
    return shapes.job_object(row, ctx.settings)


@router.get("/v1/mentor/jobs/{job_id}/metrics")
def metrics(request: Request, job_id: str) -> dict:
    """Every logged metric row (step and values), oldest first: the job's curves as they grow."""
    job = jobs.get(request.app.state.ctx, job_id)
    return {"object": "list", "job_id": job.id, "data": shapes.metric_rows(job)}
