"""Jobs, events and checkpoints in OpenAI's shapes (and the cloud's job shape), read from the
database row and the job folder's own records (state.json, events.jsonl, metrics.jsonl)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from mentor.jobs import read_events, read_state
from mentor.server.db import JobRow, epoch

CLOUD_STATES = {"validating_files": "JOB_STATE_PENDING", "queued": "JOB_STATE_QUEUED", "running": "JOB_STATE_RUNNING",
                "succeeded": "JOB_STATE_SUCCEEDED", "failed": "JOB_STATE_FAILED", "cancelled": "JOB_STATE_CANCELLED",
                "paused": "JOB_STATE_PAUSED"}
# the cloud's six metric names -> OpenAI's checkpoint metric names
OPENAI_METRICS = {"train_total_loss": "train_loss", "train_fraction_of_correct_next_step_preds": "train_mean_token_accuracy",
                  "eval_total_loss": "valid_loss", "eval_fraction_of_correct_next_step_preds": "valid_mean_token_accuracy"}
CLOUD_METRICS = ("train_total_loss", "train_fraction_of_correct_next_step_preds", "train_num_predictions",
                 "eval_total_loss", "eval_fraction_of_correct_next_step_preds", "eval_num_predictions")


def _ts(text: str | None) -> int | None:
    if not text:
        return None
    return int(dt.datetime.fromisoformat(text).timestamp())


def method_of(job: JobRow) -> dict:
    cfg = job.config
    hyper = {k: cfg.get(k) for k in ("batch_size", "learning_rate_multiplier", "train_steps") if k in cfg}
    if job.kind == "tune":
        return {"type": "supervised", "supervised": {"hyperparameters": hyper}}
    if job.kind == "dpo":
        return {"type": "dpo", "dpo": {"hyperparameters": {**hyper, "beta": cfg.get("beta")}}}
    return {"type": "distillation", "distillation": {"method": job.kind, "teacher": cfg.get("teacher"),
                                                     "hyperparameters": hyper}}


def progress(job: JobRow) -> dict:
    state = read_state(job.folder)
    return {"step": state.get("step", 0), "total_steps": state.get("total_steps"),
            "train_seconds": state.get("train_seconds"), "state": state.get("state")}


def estimated_finish(job: JobRow, prog: dict) -> int | None:
    step, total, seconds = prog.get("step") or 0, prog.get("total_steps"), prog.get("train_seconds")
    if job.status != "running" or not step or not total or not seconds:
        return None
    return int(dt.datetime.now(dt.UTC).timestamp() + seconds / step * (total - step))


def job_object(job: JobRow) -> dict:
    cfg, prog = job.config, progress(job)
    error = None
    if job.error:
        error = {"code": job.error.get("code") or "job_failed", "message": job.error.get("message", ""),
                 "param": job.error.get("param")}
        if job.error.get("file"):
            error["file"], error["line"] = job.error["file"], job.error.get("line")
    return {
        "object": "fine_tuning.job", "id": job.id, "model": job.base_model, "created_at": epoch(job.created_at),
        "finished_at": epoch(job.finished_at), "fine_tuned_model": job.fine_tuned_model,
        "organization_id": "mentor", "result_files": [], "status": job.status,
        "validation_file": job.validation_file, "training_file": job.training_file,
        "hyperparameters": {"batch_size": cfg.get("batch_size"), "learning_rate_multiplier":
                            cfg.get("learning_rate_multiplier"), "n_epochs": "auto"},
        "trained_tokens": job.trained_tokens, "error": error, "seed": job.seed,
        "estimated_finish": estimated_finish(job, prog), "integrations": [], "metadata": job.job_metadata or None,
        "method": method_of(job), "user_provided_suffix": job.suffix,
        # mentor's own: the job kind, its whole config, and progress
        "kind": job.kind, "config": cfg, "progress": prog, "started_at": epoch(job.started_at),
        "display_name": job.display_name, "api": job.api, "request": job.request,
    }


def cloud_object(job: JobRow, project: str, location: str) -> dict:
    def iso(t):
        return None if t is None else t.replace(tzinfo=dt.UTC).isoformat().replace("+00:00", "Z")

    body = {"name": f"projects/{project}/locations/{location}/pipelineJobs/{job.id}",
            "displayName": job.display_name or job.id, "state": CLOUD_STATES[job.status],
            "createTime": iso(job.created_at), "startTime": iso(job.started_at), "endTime": iso(job.finished_at),
            "runtimeConfig": {"parameterValues": job.request.get("parameterValues", {})},
            "jobDetail": {"kind": job.kind, "progress": progress(job)}}
    if job.error:
        body["error"] = {"code": 3 if job.error.get("file") else 13, "message": job.error.get("message", "")}
    if job.fine_tuned_model:
        body["tunedModel"] = {"model": job.fine_tuned_model}
    return body


def events(job: JobRow) -> list[dict]:
    """The job's events, newest first, as OpenAI's fine_tuning.job.event objects."""
    out = []
    for n, e in enumerate(read_events(job.folder)):
        data = {k: v for k, v in e.items() if k not in ("time", "type", "message")}
        kind = e.get("type", "message")
        if kind == "evaluation":
            metrics = data.get("metrics", {})
            data = {"step": data.get("step"), **{OPENAI_METRICS.get(k, k): v for k, v in metrics.items()}}
            message = f"step {data['step']}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()
                                                            if isinstance(v, float))
        else:
            message = e.get("message") or kind.replace("_", " ")
        out.append({"object": "fine_tuning.job.event", "id": f"ftevent-{job.id.removeprefix('ftjob-')}-{n:06d}",
                    "created_at": _ts(e.get("time")), "level": "error" if kind == "failed" else "info",
                    "message": message, "type": "metrics" if kind == "evaluation" else "message",
                    "data": {"event": kind, **data}})
    return out[::-1]


def metric_rows(job: JobRow) -> list[dict]:
    """The job's metrics.jsonl rows, oldest first; a line being written is skipped, not an error."""
    rows = []
    path = Path(job.folder) / "metrics.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


def _metrics_by_step(job: JobRow) -> dict[int, dict]:
    rows: dict[int, dict] = {}
    for row in metric_rows(job):
        rows.setdefault(row.get("step", 0), {}).update(row)
    return rows


def checkpoints(job: JobRow) -> list[dict]:
    """Every checkpoint the job saved, newest first, with OpenAI's and the cloud's metric names."""
    folder = Path(job.folder)
    by_step = _metrics_by_step(job)
    seen, out = set(), []
    name = job.fine_tuned_model or f"ft:{job.base_model}:{job.suffix or 'mentor'}:{job.id.removeprefix('ftjob-')[:12]}"
    for e in read_events(folder):
        step = e.get("step")
        if e.get("type") != "checkpoint" or step in seen:
            continue
        seen.add(step)
        row = by_step.get(step, {})
        metrics = {"step": step, **{OPENAI_METRICS[k]: row[k] for k in OPENAI_METRICS if k in row},
                   **{k: row[k] for k in CLOUD_METRICS if k in row}}
        if "valid_loss" in metrics:
            metrics["full_valid_loss"] = metrics["valid_loss"]
            metrics["full_valid_mean_token_accuracy"] = metrics.get("valid_mean_token_accuracy")
        out.append({"object": "fine_tuning.job.checkpoint", "id": f"ftckpt-{job.id.removeprefix('ftjob-')}-{step}",
                    "created_at": _ts(e.get("time")), "fine_tuned_model_checkpoint": f"{name}:ckpt-step-{step}",
                    "step_number": step, "metrics": metrics, "fine_tuning_job_id": job.id})
    return out[::-1]


def job_page(db, query, after: str | None, limit: int, to_object) -> dict:
    """A page of jobs, newest first, cut in SQL: a list call reads the folders of one page's jobs,
    not of every job the server ever ran."""
    from sqlalchemy import and_, or_

    query = query.order_by(JobRow.created_at.desc(), JobRow.id.desc())
    with db.session() as s:
        cursor = s.get(JobRow, after) if after else None
        if after and cursor is None:
            rows = []
        else:
            if cursor is not None:
                query = query.where(or_(JobRow.created_at < cursor.created_at,
                                        and_(JobRow.created_at == cursor.created_at, JobRow.id < cursor.id)))
            rows = list(s.scalars(query.limit(limit + 1)))
    chunk = [to_object(r) for r in rows[:limit]]
    return {"object": "list", "data": chunk, "has_more": len(rows) > limit,
            "first_id": chunk[0]["id"] if chunk else None, "last_id": chunk[-1]["id"] if chunk else None}


def page(items: list[dict], after: str | None, limit: int) -> dict:
    """OpenAI's cursor pagination over a list already in order: the items after the one named."""
    start = 0
    if after:
        ids = [i["id"] for i in items]
        start = ids.index(after) + 1 if after in ids else len(items)
    chunk = items[start:start + limit]
    return {"object": "list", "data": chunk, "has_more": start + limit < len(items),
            "first_id": chunk[0]["id"] if chunk else None, "last_id": chunk[-1]["id"] if chunk else None}
