"""Uploaded files: stored once under the data folder, validated as `mentor tune` validates data
(every bad line reported with its line and field), named by an id that is never a path."""

from __future__ import annotations

import hashlib
import re
import secrets
from pathlib import Path

from mentor.errors import DataValidationError, MentorError
from mentor.files import atomic_path
from mentor.server.db import Database, FileRow
from mentor.server.errors import ApiError, bad, not_found

FILE_ID = re.compile(r"^file-[a-z0-9]{24}$")
PURPOSES = ("fine-tune", "batch", "evals", "user_data")


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def check_dataset(path: Path) -> None:
    """A fine-tuning file is validated as what its first row is: tuning examples (text, chat, Gemini
    chat), preference pairs, reinforcement prompts (a conversation ending with a user turn, OpenAI's
    reinforcement files), or distillation inputs (rows with input_text and no output), so a later row
    that does not match is reported with its line and field as `mentor tune` would."""
    import json

    from mentor.data.formats import load_examples
    from mentor.data.rows import read_rows
    from mentor.reinforce.data import load_items
    from mentor.rlhf.data import load_preferences

    first: dict = {}
    with path.open("rb") as f:
        for line in f:
            if line.strip():
                try:
                    first = json.loads(line)
                except ValueError:
                    first = {}
                break
    if not isinstance(first, dict):
        first = {}
    messages = first.get("messages")
    last = messages[-1] if isinstance(messages, list) and messages and isinstance(messages[-1], dict) else {}
    if {"chosen", "rejected"} & first.keys() or {"candidate_0", "candidate_1"} & first.keys():
        load_preferences(path, 10**9)
    elif last.get("role") in ("user", "developer", "system"):
        load_items(path, 10**9)
    elif "input_text" in first and not {"output_text", "messages", "contents"} & first.keys():
        read_rows(path)
    else:
        load_examples(path, max_examples=10**9)


def store_upload(db: Database, files_dir: Path, filename: str, purpose: str, chunks, limit: int) -> FileRow:
    """Write the upload (at most `limit` bytes), validate it, and record it; nothing is kept if it is bad."""
    if purpose not in PURPOSES:
        raise bad(f"purpose must be one of {', '.join(PURPOSES)}", "purpose")
    files_dir.mkdir(parents=True, exist_ok=True)
    file_id = new_id("file")
    final = files_dir / f"{file_id}.jsonl"
    digest, size = hashlib.sha256(), 0
    with atomic_path(final) as tmp:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, f"the file is larger than the limit of {limit} bytes", "file", "file_too_large")
                digest.update(chunk)
                f.write(chunk)
        if size == 0:
            raise bad("the file is empty", "file", "empty_file")
        if purpose == "fine-tune":
            try:
                check_dataset(tmp)
            except DataValidationError as err:
                first = err.problems[0] if err.problems else None
                message = str(err).replace(str(tmp), filename)
                raise ApiError(400, message, param=f"file:{first.line}:{first.field}" if first else "file",
                               code="invalid_file") from None
            except MentorError as err:
                raise bad(str(err).replace(str(tmp), filename), "file", "invalid_file") from None
    lines = sum(1 for line in final.open("rb") if line.strip())
    row = FileRow(id=file_id, filename=Path(filename).name[:255] or "upload.jsonl", purpose=purpose, bytes=size,
                  lines=lines, sha256=digest.hexdigest(), path=str(final))
    with db.begin() as s:
        s.add(row)
    return row


def get_file(db: Database, file_id: str, param: str = "file_id") -> FileRow:
    if not FILE_ID.match(file_id or ""):
        raise not_found("file", str(file_id)[:80], param)
    with db.session() as s:
        row = s.get(FileRow, file_id)
    if row is None:
        raise not_found("file", file_id, param)
    return row


def file_object(row: FileRow) -> dict:
    from mentor.server.db import epoch

    return {"object": "file", "id": row.id, "bytes": row.bytes, "created_at": epoch(row.created_at),
            "filename": row.filename, "purpose": row.purpose, "status": "processed", "expires_at": None,
            "status_details": None}
