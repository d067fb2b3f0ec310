"""Batch prediction recipe (OpenAI's batch API): every request line of a file answered, in batches.

setup: read every line; a line that is not a valid request (bad JSON, wrong url, unknown model,
       bad body) becomes an error record, the rest are answered;
run:   lines grouped by model and sampling settings, answered in batches through the model pool
       (adapters of one base batched together); each batch of answers is kept in the answer log
       (`mentor.serving.answer_log`, the one `mentor predict --input` keeps too) before the next is
       generated, so a killed job resumes with only the missing lines; progress in events;
save:  output.jsonl and errors.jsonl, in input order, written whole (never a half file).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections import defaultdict
from pathlib import Path

from pydantic import ValidationError

from mentor.errors import MentorError
from mentor.jobs import Job, TunedModel
from mentor.jobs.config import validation_problems
from mentor.recipes.batch_config import BatchConfig
from mentor.serving.answer_log import AnswerLog, answer_key, log_path
from mentor.serving.generate import generate_stream
from mentor.serving.openai_api import (
    ChatRequest,
    CompletionRequest,
    RequestProblem,
    chat_prompt,
    chat_response,
    completion_response,
)
from mentor.serving.pool import ModelPool, Servable, adapter_names
from mentor.serving.predict import Predictor

log = logging.getLogger("mentor")
OUTPUT, ERRORS = "output.jsonl", "errors.jsonl"


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
                    body = body_type(**(row.get("body") or {}))
                except (ValidationError, TypeError) as err:
                    problems = validation_problems(err) if isinstance(err, ValidationError) else [("body", str(err))]
                    field, message = problems[0]
                    errors[line] = _error(line, custom_id, "invalid_request", f"field 'body.{field}': {message}")
                    continue
                if problem := scoring_problem(body):
                    errors[line] = _error(line, custom_id, "invalid_request", f"field 'body.{problem.param}': {problem}")
                    continue
                good.append((line, custom_id, body))
                seen.add(custom_id)
    return good, errors


def scoring_problem(body: ChatRequest | CompletionRequest) -> RequestProblem | None:
    """What a batch line asks of a completion that the batch kind does not do: scoring the prompt
    (logprobs, prompt_logprobs, max_tokens 0, a prompt of token ids; the online /v1/completions scores,
    a batch generates), refused naming the field rather than answered with 16 generated tokens and no
    log-probs. echo alone (the prompt before the answer) is answered."""
    if not isinstance(body, CompletionRequest):
        return None
    online = " (/v1/completions scores prompts online)"
    if body.logprobs is not None:
        return RequestProblem("log-probs are not implemented by batches" + online, "logprobs")
    if body.prompt_logprobs is not None:
        return RequestProblem("prompt log-probs are not implemented by batches" + online, "prompt_logprobs")
    if body.max_tokens == 0:
        return RequestProblem("a batch line generates: max_tokens must be at least 1" + online, "max_tokens")
    if body.token_prompts is not None:
        return RequestProblem("a prompt of token ids is not implemented by batches: give the prompt as text",
                              "prompt")
    return body.scoring_problem()


def run(cfg: BatchConfig, job: Job) -> TunedModel:
    good, errors = read_requests(cfg)
    answers = AnswerLog(log_path(job.folder / OUTPUT), _answer_key(cfg), {"input": cfg.input})
    todo = [(line, cid, body) for line, cid, body in good if line not in answers.answers]
    if answers.answers:
        job.event("resumed", f"{len(answers.answers)} of {len(good)} requests were answered already",
                  answered=len(answers.answers))
    job.update(step=len(answers.answers) + len(errors), total_steps=len(good) + len(errors))
    log.info("batch: %d requests, %d bad lines, %d answered already", len(good), len(errors), len(answers.answers))
    pool = ModelPool(int(cfg.memory_mb * 2**20) if cfg.memory_mb else None)
    groups, models = _prepare(cfg, todo, pool, errors)
    _answer(cfg, job, pool, groups, answers, errors, len(good))
    return _save(job, answers, errors, models)


def _answer_key(cfg: BatchConfig) -> str:
    """The input's bytes and what decides which model answers a line how: a rerun of the same job keeps
    its answers, a log left by other settings is not taken for them."""
    return answer_key(Path(cfg.input), {"endpoint": cfg.endpoint, "models": cfg.models,
                                        "listed_models_only": cfg.listed_models_only})


def _prepare(cfg: BatchConfig, todo: list, pool: ModelPool, errors: dict[int, dict]) -> tuple[dict, set[str]]:
    """The lines to answer grouped by base model and sampling settings (adapters of one base answer in one
    batch), each with its predictor and rendered prompts; a line refused here becomes an error record."""
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
    return groups, set(predictors)


def _answer(cfg: BatchConfig, job: Job, pool: ModelPool, groups: dict[tuple, list], answers: AnswerLog,
            errors: dict[int, dict], requests: int) -> None:
    """Every group answered in batches of `batch_size` requests, each batch kept in the answer log before
    the next starts (a cancel is honoured between batches)."""
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
            answers.add((line, _response(cid, body, [outputs[i] for i, (owner, _) in enumerate(rows) if owner == k]))
                        for k, (line, cid, body, _, _) in enumerate(chunk))
            done = len(answers.answers)
            job.update(step=done + len(errors))
            job.event("progress", f"{done} of {requests} answered", answered=done, failed=len(errors))


def _response(cid: str, body: ChatRequest | CompletionRequest, outputs: list) -> dict:
    """A batch output line: the response the online endpoint gives this request."""
    created, rid = int(time.time()), secrets.token_hex(12)
    response = (chat_response(f"chatcmpl-{rid}", created, body.model, outputs[0]) if isinstance(body, ChatRequest)
                else completion_response(f"cmpl-{rid}", created, body.model, outputs, body.n))
    if isinstance(body, CompletionRequest) and body.echo:  # the prompt before the answer, as online
        texts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        for choice in response["choices"]:
            choice["text"] = str(texts[choice["index"] // body.n]) + choice["text"]
    return {"id": f"batch_req_{rid}", "custom_id": cid, "error": None,
            "response": {"status_code": 200, "request_id": rid, "body": response}}


def _save(job: Job, answers: AnswerLog, errors: dict[int, dict], models: set[str]) -> TunedModel:
    done, output = answers.answers, job.folder / OUTPUT
    answers.finish({output: (done[line] for line in sorted(done)),
                    job.folder / ERRORS: (errors[line] for line in sorted(errors))})
    log.info("batch done: %d answered, %d failed; %s", len(done), len(errors), output)
    total = len(done) + len(errors)
    return TunedModel(output=str(job.folder), model_path=str(output), base_model=", ".join(sorted(models)) or "-",
                      method="batch", best_step=None, steps_run=total,
                      metrics={"completed": len(done), "failed": len(errors), "total": total},
                      extra={"output": str(output), "errors": str(job.folder / ERRORS)})
