"""Batch prediction recipe (OpenAI's batch API): every request line of a file answered, in batches.

setup: read every line; a line that is not a valid request (bad JSON, wrong url, unknown model,
       bad body) becomes an error record, the rest are answered;
run:   lines grouped by model and sampling settings, answered in batches through the model pool
       (adapters of one base batched together); each answer is appended to a partial file the
       moment it exists, so a killed job resumes with only the missing lines; progress in events;
save:  output.jsonl and errors.jsonl, in input order, written whole (never a half file).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections import defaultdict
from pathlib import Path

from pydantic import ValidationError

from mentor.errors import MentorError
from mentor.files import atomic_file, cut_torn_line
from mentor.jobs import Job, TunedModel
from mentor.jobs.config import validation_problems
from mentor.recipes.batch_config import BatchConfig
from mentor.serving.generate import generate_stream
from mentor.serving.openai_api import ChatRequest, CompletionRequest, chat_prompt, chat_response, completion_response
from mentor.serving.pool import ModelPool, Servable, adapter_names
from mentor.serving.predict import Predictor

log = logging.getLogger("mentor")
PARTIAL = "answers.partial.jsonl"


def _error(line: int, custom_id, code: str, message: str) -> dict:
    return {"id": f"batch_req_{secrets.token_hex(8)}", "custom_id": custom_id, "response": None,
            "error": {"code": code, "message": f"line {line}: {message}"}}


def read_requests(cfg: BatchConfig):
    """(line, custom_id, request body) of every good line, and an error record for every bad one."""
    good, errors, seen = [], {}, set()
    body_type = ChatRequest if cfg.endpoint == "/v1/chat/completions" else CompletionRequest
    with open(cfg.input, "rb") as f:
        for line, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8-sig" if line == 1 else "utf-8"))
            except (UnicodeDecodeError, ValueError) as err:
                errors[line] = _error(line, None, "invalid_json", f"not a JSON object ({str(err)[:120]})")
                continue
            custom_id = row.get("custom_id") if isinstance(row, dict) else None
            if not isinstance(row, dict) or not isinstance(custom_id, str) or not custom_id:
                errors[line] = _error(line, None, "invalid_request", "field 'custom_id': missing or not a string")
            elif custom_id in seen:
                errors[line] = _error(line, custom_id, "duplicate_custom_id", f"custom_id {custom_id!r} repeats")
            elif row.get("method", "POST") != "POST" or row.get("url") != cfg.endpoint:
                errors[line] = _error(line, custom_id, "invalid_url", f"field 'url': must be {cfg.endpoint}")
            else:
                try:
                    good.append((line, custom_id, body_type(**(row.get("body") or {}))))
                    seen.add(custom_id)
                except (ValidationError, TypeError) as err:
                    problems = validation_problems(err) if isinstance(err, ValidationError) else [("body", str(err))]
                    field, message = problems[0]
                    errors[line] = _error(line, custom_id, "invalid_request", f"field 'body.{field}': {message}")
    return good, errors


def _read_partial(path: Path) -> dict[int, dict]:
    done = {}
    cut_torn_line(path)  # else the next answer is appended onto it, and lost with it
    if path.exists():
        for raw in path.read_text(encoding="utf-8").split("\n"):
            try:
                record = json.loads(raw)
            except ValueError:
                continue  # a line cut short by a kill
            done[record["line"]] = record["record"]
    return done


def run(cfg: BatchConfig, job: Job) -> TunedModel:
    good, errors = read_requests(cfg)
    partial = job.folder / PARTIAL
    done = _read_partial(partial)
    total = len(good) + len(errors)
    todo = [(line, cid, body) for line, cid, body in good if line not in done]
    if done:
        job.event("resumed", f"{len(done)} of {len(good)} requests were answered already", answered=len(done))
    job.update(step=len(done) + len(errors), total_steps=total)
    log.info("batch: %d requests, %d bad lines, %d answered already", len(good), len(errors), len(done))

    pool = ModelPool(int(cfg.memory_mb * 2**20) if cfg.memory_mb else None)
    predictors: dict[str, Predictor] = {}
    groups: dict[tuple, list] = defaultdict(list)
    for line, cid, body in todo:
        try:
            if cfg.listed_models_only and body.model not in cfg.models:
                raise MentorError(f"unknown model '{body.model[:200]}'")
            p = predictors.get(body.model) or Predictor(Servable.of(cfg.models.get(body.model, body.model),
                                                                    name=body.model), pool=pool)
            predictors[body.model] = p
            if isinstance(body, ChatRequest):
                prompt, params = chat_prompt(p, body)
                prompts = [prompt]
            else:
                texts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
                prompts, params = [p.render(t) for t in texts], body.params(default_max=16)
        except Exception as err:  # noqa: BLE001 - an unknown model or a bad request is this line's error
            errors[line] = _error(line, cid, "invalid_request", str(err).splitlines()[0][:300])
            continue
        if problem := p.overflow(prompts, params.max_new_tokens):  # refused, as the online API refuses it
            errors[line] = _error(line, cid, "context_length_exceeded", problem)
            continue
        groups[(p.servable.base, params)].append((line, cid, body, p, prompts))

    with partial.open("a", encoding="utf-8") as out:
        for (_, params), items in groups.items():
            for start in range(0, len(items), cfg.batch_size):
                if job.cancel_requested:
                    raise job.cancelled()
                chunk = items[start:start + cfg.batch_size]
                rows = [(k, prompt) for k, item in enumerate(chunk) for prompt in item[4]]
                servables = [chunk[k][3].servable for k, _ in rows]
                loaded, names = pool.acquire(servables)
                try:
                    outputs = dict(generate_stream(loaded, [prompt for _, prompt in rows], params,
                                                   batch_size=len(rows), adapter_names=adapter_names(loaded, names)))
                finally:
                    pool.release(servables)
                for k, (line, cid, body, _, _) in enumerate(chunk):
                    per_prompt = [outputs[i] for i, (owner, _) in enumerate(rows) if owner == k]
                    created, rid = int(time.time()), secrets.token_hex(12)
                    response = (chat_response(f"chatcmpl-{rid}", created, body.model, per_prompt[0])
                                if isinstance(body, ChatRequest)
                                else completion_response(f"cmpl-{rid}", created, body.model, per_prompt, body.n))
                    record = {"id": f"batch_req_{rid}", "custom_id": cid, "error": None,
                              "response": {"status_code": 200, "request_id": rid, "body": response}}
                    out.write(json.dumps({"line": line, "record": record}, ensure_ascii=False) + "\n")
                    done[line] = record
                out.flush()
                os.fsync(out.fileno())
                job.update(step=len(done) + len(errors))
                job.event("progress", f"{len(done)} of {len(good)} answered", answered=len(done), failed=len(errors))

    with atomic_file(job.folder / "output.jsonl") as f:
        for line in sorted(done):
            f.write(json.dumps(done[line], ensure_ascii=False) + "\n")
    with atomic_file(job.folder / "errors.jsonl") as f:
        for line in sorted(errors):
            f.write(json.dumps(errors[line], ensure_ascii=False) + "\n")
    partial.unlink(missing_ok=True)
    log.info("batch done: %d answered, %d failed; %s", len(done), len(errors), job.folder / "output.jsonl")
    return TunedModel(output=str(job.folder), model_path=str(job.folder / "output.jsonl"),
                      base_model=", ".join(sorted(predictors)) or "-", method="batch", best_step=None,
                      steps_run=total, metrics={"completed": len(done), "failed": len(errors), "total": total},
                      extra={"output": str(job.folder / "output.jsonl"), "errors": str(job.folder / "errors.jsonl")})
