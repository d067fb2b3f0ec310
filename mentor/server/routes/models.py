"""/v1/models: base models and every registered tuned model, with lineage; delete a tuned model."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from mentor.errors import MentorError
from mentor.server import registry
from mentor.server.db import epoch
from mentor.server.errors import bad, not_found
from mentor.server.services import models

router = APIRouter()


def _model_object(model_id: str, created: int | None, owner: str, **extra) -> dict:
    return {**extra, "id": model_id, "object": "model", "created": created or 0, "owned_by": owner,
            "endpoints": models.endpoints_of_kind(extra.get("kind"))}


def _check_name(name: str) -> None:
    if not registry.NAME_PATTERN.match(name or ""):
        raise not_found("model", name[:80], "model")


@router.get("/v1/models")
def list_models(request: Request, base_model: str | None = Query(None, max_length=512)) -> dict:
    ctx = request.app.state.ctx
    tuned = registry.list_models(ctx.db, base_model)
    bases = [] if base_model else sorted({*models.base_models(), *(m.base_model for m in tuned)})
    data = [_model_object(b, None, "mentor:base") for b in bases]
    data += [_model_object(m.name, epoch(m.created_at), "mentor", base_model=m.base_model, kind=m.kind,
                           job_id=m.job_id) for m in tuned]
    return {"object": "list", "data": data}


class Promote(BaseModel):
    model: str = Field(max_length=255)
    step: int = Field(ge=0)


@router.post("/v1/models/promote")
def promote(request: Request, body: Promote) -> dict:
    """A kept checkpoint of a tuned model's job, registered as a model of its own."""
    _check_name(body.model)
    try:
        row = registry.promote(request.app.state.ctx.db, body.model, body.step)
    except registry.UnknownModel:
        raise not_found("model", body.model, "model") from None
    except MentorError as err:
        raise bad(str(err), "step", "checkpoint_not_found") from None
    return _model_object(row.name, epoch(row.created_at), "mentor", **registry.model_dict(row))


@router.get("/v1/models/{name:path}")
def retrieve(request: Request, name: str) -> dict:
    _check_name(name)
    ctx = request.app.state.ctx
    if not name.startswith("ft:") and name in models.base_models():
        return _model_object(name, None, "mentor:base")
    try:
        lineage = registry.lineage(ctx.db, name)
    except registry.UnknownModel:
        raise not_found("model", name, "model") from None
    return _model_object(name, lineage.model["created_at"], "mentor", **lineage.model, lineage=lineage.as_dict())


@router.delete("/v1/models/{name:path}")
def delete(request: Request, name: str) -> dict:
    _check_name(name)
    models.delete(request.app.state.ctx, name)
    return {"id": name, "object": "model", "deleted": True}


def _registered(request: Request, name: str):
    _check_name(name)
    try:
        return registry.get_model(request.app.state.ctx.db, name)
    except registry.UnknownModel:
        raise not_found("model", name, "model") from None


@router.get("/v1/mentor/models/{name:path}/report")
def report(request: Request, name: str) -> dict:
    """The test report its job wrote (distillation: student vs teacher), as a table of results."""
    row = _registered(request, name)
    path = Path(row.job_folder) / "report" / "report.json"
    if not path.is_file():
        raise not_found("report for model", name, "model")
    return json.loads(path.read_text())


@router.get("/v1/mentor/models/{name:path}/files")
def model_files(request: Request, name: str) -> dict:
    """The files that make up the model (weights, adapter, tokenizer, card), for download."""
    folder = Path(_registered(request, name).path)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {"object": "list", "data": [{"path": str(p.relative_to(folder)), "bytes": p.stat().st_size}
                                       for p in files]}


@router.get("/v1/mentor/model_file")
def model_file(request: Request, model: str = Query(max_length=255), path: str = Query(max_length=512)):
    folder = Path(_registered(request, model).path).resolve()
    target = (folder / path).resolve()
    if folder not in target.parents or not target.is_file():
        raise not_found("file", path[:80], "path")
    return FileResponse(target, filename=target.name)
