"""Jobs, events and checkpoints in OpenAI's shapes (and the cloud's job shape), read from the
database row and the job folder's own records (state.json, events.jsonl, metrics.jsonl)."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

from mentor.jobs import read_events, read_state
from mentor.jobs.lifecycle import process_gone
from mentor.server.db import JobRow, epoch
from mentor.server.job_requests import openai_method
from mentor.server.scheduler import after_worker_death, worker_gone

CLOUD_STATES = {"validating_files": "JOB_STATE_PENDING", "queued": "JOB_STATE_QUEUED", "running": "JOB_STATE_RUNNING",
                "succeeded": "JOB_STATE_SUCCEEDED", "failed": "JOB_STATE_FAILED", "cancelled": "JOB_STATE_CANCELLED",
                "paused": "JOB_STATE_PAUSED"}
# the cloud's six metric names -> OpenAI's checkpoint metric names
OPENAI_METRICS = {"train_total_loss": "train_loss", "train_fraction_of_correct_next_step_preds": "train_mean_token_accuracy",
                  "eval_total_loss": "valid_loss", "eval_fraction_of_correct_next_step_preds": "valid_mean_token_accuracy",
                  # a reinforcement job's, as OpenAI's reinforcement jobs name them
                  "train_reward_mean": "train_reward_mean", "eval_reward_mean": "valid_reward_mean"}
CLOUD_METRICS = ("train_total_loss", "train_fraction_of_correct_next_step_preds", "train_num_predictions",
                 "eval_total_loss", "eval_fraction_of_correct_next_step_preds", "eval_num_predictions")


def _ts(text: str | None) -> int | None:
    if not text:
        return None
    return int(dt.datetime.fromisoformat(text).timestamp())


def method_of(job: JobRow) -> dict:
    cfg = job.config
    hyper = {k: cfg.get(k) for k in ("batch_size", "learning_rate_multiplier", "train_steps") if k in cfg}
    method = openai_method(job.kind)
    if method == "supervised":
        return {"type": "supervised", "supervised": {"hyperparameters": hyper}}
    if method == "dpo":
        return {"type": "dpo", "dpo": {"hyperparameters": {**hyper, "beta": cfg.get("beta")}}}
    if method == "reinforcement":
        from mentor.reinforce.config import GENERATIONS_AT_MULTIPLIER_1

        generations = cfg.get("num_generations") or GENERATIONS_AT_MULTIPLIER_1
        return {"type": "reinforcement", "reinforcement": {"grader": cfg.get("grader"), "hyperparameters": {
            **hyper, "eval_interval": cfg.get("evaluation_interval"), "eval_samples": cfg.get("eval_samples"),
            "compute_multiplier": generations / GENERATIONS_AT_MULTIPLIER_1, "reasoning_effort": "default"}}}
    # distillation, and (as before) mentor's own kinds, which OpenAI's method types do not name
    return {"type": "distillation", "distillation": {"method": job.kind, "teacher": cfg.get("teacher"),
                                                     "hyperparameters": hyper}}


@dataclass(frozen=True)
class Seen:
    """A job as its views show it: its row, unless its folder says its worker is gone."""
    status: str
    error: dict | None
    state: dict  # the job folder's state


def seen(job: JobRow, settings) -> Seen:
    """Never a dead process shown running: a running job whose worker died (seen from its folder,
    when the scheduler has not noticed yet) is shown as the scheduler will record it, resumed or
    failed; the views record nothing, so the death is recorded once, by the scheduler. Only the
    folder's `running` is read so: a job whose folder says it succeeded is never shown failed. The
    folder's own state (progress) is what `mentor status` says of it: failed, interrupted."""
    state = read_state(job.folder)
    if not process_gone(state):
        return Seen(job.status, job.error, state)
    if worker_gone(job, state):
        status, error = after_worker_death(job, job.worker_deaths + 1, settings.max_worker_restarts, None)
        return Seen(status, error, {**state, "state": "failed"})
    if job.status == "running":  # a worker just started on it: the record is still its dead predecessor's
        return Seen(job.status, job.error, {**state, "state": "pending"})
    return Seen(job.status, job.error, {**state, "state": "failed"})


def progress(state: dict) -> dict:
    return {"step": state.get("step", 0), "total_steps": state.get("total_steps"),
            "train_seconds": state.get("train_seconds"), "state": state.get("state")}


def estimated_finish(status: str, prog: dict) -> int | None:
    step, total, seconds = prog.get("step") or 0, prog.get("total_steps"), prog.get("train_seconds")
    if status != "running" or not step or not total or not seconds:
        return None
    return int(dt.datetime.now(dt.UTC).timestamp() + seconds / step * (total - step))


def job_object(job: JobRow, settings) -> dict:
    now = seen(job, settings)
    cfg, prog = job.config, progress(now.state)
    error = None
    if now.error:
        error = {"code": now.error.get("code") or "job_failed", "message": now.error.get("message", ""),
                 "param": now.error.get("param")}
        if now.error.get("file"):
            error["file"], error["line"] = now.error["file"], now.error.get("line")
    return {
        "object": "fine_tuning.job", "id": job.id, "model": job.base_model, "created_at": epoch(job.created_at),
        "finished_at": epoch(job.finished_at), "fine_tuned_model": job.fine_tuned_model,
        "organization_id": "mentor", "result_files": [], "status": now.status,
        "validation_file": job.validation_file, "training_file": job.training_file,
        "hyperparameters": {"batch_size": cfg.get("batch_size"), "learning_rate_multiplier":
                            cfg.get("learning_rate_multiplier"), "n_epochs": "auto"},
        "trained_tokens": job.trained_tokens, "error": error, "seed": job.seed,
        "estimated_finish": estimated_finish(now.status, prog), "integrations": [], "metadata": job.job_metadata or None,
        "method": method_of(job), "user_provided_suffix": job.suffix,
        # mentor's own: the job kind, its whole config, and progress
        "kind": job.kind, "config": cfg, "progress": prog, "started_at": epoch(job.started_at),
        "display_name": job.display_name, "api": job.api, "request": job.request,
    }


def cloud_object(job: JobRow, project: str, location: str, settings) -> dict:
    def iso(t):
        return None if t is None else t.replace(tzinfo=dt.UTC).isoformat().replace("+00:00", "Z")

    now = seen(job, settings)
    body = {"name": f"projects/{project}/locations/{location}/pipelineJobs/{job.id}",
            "displayName": job.display_name or job.id, "state": CLOUD_STATES[now.status],
            "createTime": iso(job.created_at), "startTime": iso(job.started_at), "endTime": iso(job.finished_at),
            "runtimeConfig": {"parameterValues": job.request.get("parameterValues", {})},
            "jobDetail": {"kind": job.kind, "progress": progress(now.state)}}
    if now.error:
        body["error"] = {"code": 3 if now.error.get("file") else 13, "message": now.error.get("message", "")}
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
        if e.get("type") != "checkpoint" or not isinstance(step, int) or step in seen:
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
