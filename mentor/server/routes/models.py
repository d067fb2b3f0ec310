"""/v1/models: base models and every registered tuned model, with lineage; delete a tuned model."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from mentor.errors import MentorError
from mentor.model_record import REWARD_MODEL
from mentor.server import registry
from mentor.server.db import epoch
from mentor.server.errors import ApiError, bad, not_found

router = APIRouter()


def base_models() -> list[str]:
    from mentor.models.resolve import ALIASES

    return sorted(ALIASES)


GENERATES = ["/v1/chat/completions", "/v1/completions"]
SCORES = ["/v1/mentor/score"]


def endpoints(kind: str | None) -> list[str]:
    """What a model answers: a reward model scores answers and never generates."""
    return SCORES if kind == REWARD_MODEL else GENERATES


def _model_object(model_id: str, created: int | None, owner: str, **extra) -> dict:
    return {**extra, "id": model_id, "object": "model", "created": created or 0, "owned_by": owner,
            "endpoints": endpoints(extra.get("kind"))}


def _check_name(name: str) -> None:
    if not registry.NAME_PATTERN.match(name or ""):
        raise not_found("model", name[:80], "model")


@router.get("/v1/models")
def list_models(request: Request, base_model: str | None = Query(None, max_length=512)) -> dict:
    ctx = request.app.state.ctx
    tuned = registry.list_models(ctx.db, base_model)
    bases = [] if base_model else sorted({*base_models(), *(m.base_model for m in tuned)})
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
    if not name.startswith("ft:") and name in base_models():
        return _model_object(name, None, "mentor:base")
    try:
        lineage = registry.lineage(ctx.db, name)
    except registry.UnknownModel:
        raise not_found("model", name, "model") from None
    return _model_object(name, lineage.model["created_at"], "mentor", **lineage.model, lineage=lineage.as_dict())


@router.delete("/v1/models/{name:path}")
def delete(request: Request, name: str) -> dict:
    _check_name(name)
    ctx = request.app.state.ctx
    try:
        removed = registry.delete_model(ctx.db, name)
    except registry.UnknownModel:
        raise not_found("model", name, "model") from None
    except registry.ModelInUse as err:
        raise ApiError(409, str(err), "model", "model_in_use") from None
    for folder in removed:  # its weights leave memory with its files (also its kept checkpoints')
        ctx.pool.unload(folder)
        with ctx.scorers_lock:
            for path in [p for p in ctx.scorers if _inside(Path(p), folder)]:
                del ctx.scorers[path]
    return {"id": name, "object": "model", "deleted": True}


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve() == folder.resolve() or folder.resolve() in path.resolve().parents


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
