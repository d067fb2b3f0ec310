"""/v1/files: upload JSONL (validated as `mentor tune` validates data), list, get, content, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import FileResponse
from sqlalchemy import select

from mentor.server.db import FileRow
from mentor.server.errors import ApiError
from mentor.server.registry import active_jobs_naming
from mentor.server.uploads import file_object, get_file, store_upload

router = APIRouter()
CHUNK = 1 << 20


@router.post("/v1/files")
def upload(request: Request, file: Annotated[UploadFile, File()], purpose: Annotated[str, Form(max_length=32)]) -> dict:
    ctx = request.app.state.ctx

    def chunks():
        while chunk := file.file.read(CHUNK):
            yield chunk

    row = store_upload(ctx.db, ctx.settings.files_dir, file.filename or "upload.jsonl", purpose, chunks(),
                       ctx.settings.max_upload_bytes)
    return file_object(row)


@router.get("/v1/files")
def list_files(request: Request, purpose: str | None = None) -> dict:
    with request.app.state.ctx.db.session() as s:
        q = select(FileRow).order_by(FileRow.created_at.desc())
        if purpose:
            q = q.where(FileRow.purpose == purpose)
        rows = list(s.scalars(q))
    return {"object": "list", "data": [file_object(r) for r in rows], "has_more": False}


@router.get("/v1/files/{file_id}")
def retrieve(request: Request, file_id: str) -> dict:
    return file_object(get_file(request.app.state.ctx.db, file_id))


@router.get("/v1/files/{file_id}/content")
def content(request: Request, file_id: str):
    row = get_file(request.app.state.ctx.db, file_id)
    return FileResponse(row.path, media_type="application/jsonl", filename=row.filename)


@router.delete("/v1/files/{file_id}")
def delete(request: Request, file_id: str) -> dict:
    ctx = request.app.state.ctx
    row = get_file(ctx.db, file_id)
    with ctx.db.begin() as s:
        waiting = active_jobs_naming(s, file_id, row.path)
        if waiting:
            raise ApiError(409, f"{file_id} is still read by {', '.join(waiting)}; cancel those jobs first or "
                           "delete the file once they end", "file_id", "file_in_use")
        s.delete(s.get(FileRow, row.id))
    from pathlib import Path

    Path(row.path).unlink(missing_ok=True)
    return {"id": row.id, "object": "file", "deleted": True}
