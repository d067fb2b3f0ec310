"""/v1/chat/completions and /v1/completions in OpenAI's shape, for every servable model: a registered
tuned model by name, a kept checkpoint (NAME:ckpt-step-N), or a base model reference.

mentor's own body field `task`: a distilled step-by-step student answers its label task by default;
`"task": "rationale"` asks for its rationale (with the openai client: `extra_body={"task": "rationale"}`).
"""

from __future__ import annotations

import json
import re
import secrets
import time
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from mentor.errors import MentorError
from mentor.server import registry
from mentor.server.errors import ApiError, bad, not_found
from mentor.serving.engine import Ticket
from mentor.serving.generate import SamplingParams
from mentor.serving.pool import Servable
from mentor.serving.predict import Predictor

router = APIRouter()
CHECKPOINT = re.compile(r"^(?P<name>.+):ckpt-step-(?P<step>\d+)$")


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class Common(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1, max_length=512)
    max_tokens: int | None = Field(None, ge=1, le=32768)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    task: Literal["label", "rationale"] = Field("label", description="mentor: a step-by-step student's task")

    def params(self, default_max: int = 256) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        if len(stop) > 4:
            raise bad("at most 4 stop sequences", "stop")
        return SamplingParams(max_new_tokens=self.max_tokens or default_max, temperature=self.temperature,
                              top_p=self.top_p, stop=tuple(stop), n=self.n, seed=self.seed,
                              top_k=0 if self.temperature > 0 else None)


class ChatRequest(Common):
    messages: list[Message] = Field(min_length=1, max_length=256)
    max_completion_tokens: int | None = Field(None, ge=1, le=32768)


class CompletionRequest(Common):
    prompt: str | list[str] = Field(max_length=64)


def servable(ctx, name: str) -> Servable:
    """What a `model` field names, or a 404 naming it."""
    if not registry.NAME_PATTERN.match(name):
        raise not_found("model", name[:80], "model")
    try:
        row = registry.get_model(ctx.db, name)
        return Servable.of(row.path, name=name)
    except registry.UnknownModel:
        pass
    if match := CHECKPOINT.match(name):  # a checkpoint the job kept, not promoted
        try:
            row = registry.get_model(ctx.db, match["name"])
        except registry.UnknownModel:
            raise not_found("model", name, "model") from None
        folder = Path(row.job_folder) / "checkpoints" / f"checkpoint-{match['step']}"
        if not folder.is_dir():
            raise not_found("model", name, "model")
        own = Servable.of(row.path)
        return Servable(name, own.base, str(folder.resolve()) if own.adapter else str(folder), own.meta)
    if name.startswith(("/", ".", "~")) or name.startswith("ft:"):
        raise not_found("model", name, "model")
    try:
        return Servable.of(name)
    except MentorError:
        raise not_found("model", name, "model") from None


def prompter(ctx, name: str) -> Predictor:
    try:
        return Predictor(servable(ctx, name), pool=ctx.pool)
    except ApiError:
        raise
    except MentorError as err:
        raise ApiError(404, f"model '{name}' cannot be served: {err}", "model", "model_not_found") from None
    except OSError as err:
        raise ApiError(404, f"no model '{name}' ({type(err).__name__})", "model", "model_not_found") from None


def _context_check(p: Predictor, prompts: list[str], max_new: int) -> None:
    config = p.loaded.model.config
    context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if not context:
        return
    for prompt in prompts:
        n = len(p.tokenizer(prompt, add_special_tokens=False).input_ids)
        if n + max_new > context:
            raise bad(f"the prompt is {n} tokens and max_tokens {max_new}: {n + max_new - context} more than the "
                      f"model's context of {context} tokens", "messages", "context_length_exceeded")


def _usage(outputs_per_prompt) -> dict:
    prompt = sum(outs[0].prompt_tokens for outs in outputs_per_prompt if outs)
    completion = sum(o.completion_tokens for outs in outputs_per_prompt for o in outs)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _answer(ctx, p: Predictor, prompts: list[str], params: SamplingParams, stream: bool) -> list[Ticket]:
    tickets = [Ticket(p.servable, prompt, params, max_input_tokens=None, stream=stream) for prompt in prompts]
    for t in tickets:
        ctx.engine.submit(t)
    return tickets


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


@router.post("/v1/chat/completions")
def chat(request: Request, body: ChatRequest):
    ctx = request.app.state.ctx
    p = prompter(ctx, body.model)
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": _text(m.content)}
                for m in body.messages]
    if messages[-1]["role"] != "user":
        raise bad("the last message must be the user's", "messages")
    prefix = p.rationale_prefix if body.task == "rationale" else None
    if body.task == "rationale" and not prefix:
        raise bad(f"model '{body.model}' has no rationale task (only step-by-step students do)", "task")
    item = messages if len(messages) > 1 else messages[0]["content"]
    prompt = p.render(item, prefix)
    params = body.model_copy(update={"max_tokens": body.max_completion_tokens or body.max_tokens}).params()
    _context_check(p, [prompt], params.max_new_tokens)
    [ticket] = _answer(ctx, p, [prompt], params, body.stream)
    rid, created = "chatcmpl-" + secrets.token_hex(12), int(time.time())
    if not body.stream:
        outputs = ticket.result()
        return {"id": rid, "object": "chat.completion", "created": created, "model": body.model,
                "choices": [{"index": i, "message": {"role": "assistant", "content": o.text}, "logprobs": None,
                             "finish_reason": o.finish_reason} for i, o in enumerate(outputs)],
                "usage": _usage([outputs])}

    def events():
        base = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": body.model}
        for i in range(body.n):
            yield _sse({**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                             "finish_reason": None}]})
        for copy, delta in ticket.deltas():
            if copy == "done":
                for i, o in enumerate(delta):
                    yield _sse({**base, "choices": [{"index": i, "delta": {}, "finish_reason": o.finish_reason}]})
                if body.stream_options and body.stream_options.include_usage:
                    yield _sse({**base, "choices": [], "usage": _usage([delta])})
            else:
                yield _sse({**base, "choices": [{"index": copy, "delta": {"content": delta}, "finish_reason": None}]})
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


@router.post("/v1/completions")
def completions(request: Request, body: CompletionRequest):
    ctx = request.app.state.ctx
    p = prompter(ctx, body.model)
    texts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if not texts:
        raise bad("prompt must not be empty", "prompt")
    prefix = p.rationale_prefix if body.task == "rationale" else None
    prompts = [p.render(t, prefix) for t in texts]
    params = body.params(default_max=16)
    _context_check(p, prompts, params.max_new_tokens)
    tickets = _answer(ctx, p, prompts, params, body.stream and len(prompts) == 1)
    rid, created = "cmpl-" + secrets.token_hex(12), int(time.time())
    if not (body.stream and len(prompts) == 1):
        outputs = [t.result() for t in tickets]
        if body.stream:  # several prompts: streamed as whole answers
            return StreamingResponse(_whole_stream(rid, created, body, outputs), media_type="text/event-stream")
        choices = [{"index": k * body.n + i, "text": o.text, "logprobs": None, "finish_reason": o.finish_reason}
                   for k, outs in enumerate(outputs) for i, o in enumerate(outs)]
        return {"id": rid, "object": "text_completion", "created": created, "model": body.model,
                "choices": choices, "usage": _usage(outputs)}

    def events():
        base = {"id": rid, "object": "text_completion", "created": created, "model": body.model}
        for copy, delta in tickets[0].deltas():
            if copy == "done":
                for i, o in enumerate(delta):
                    yield _sse({**base, "choices": [{"index": i, "text": "", "logprobs": None,
                                                     "finish_reason": o.finish_reason}]})
                if body.stream_options and body.stream_options.include_usage:
                    yield _sse({**base, "choices": [], "usage": _usage([delta])})
            else:
                yield _sse({**base, "choices": [{"index": copy, "text": delta, "logprobs": None, "finish_reason": None}]})
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def _whole_stream(rid, created, body, outputs):
    base = {"id": rid, "object": "text_completion", "created": created, "model": body.model}
    for k, outs in enumerate(outputs):
        for i, o in enumerate(outs):
            yield _sse({**base, "choices": [{"index": k * body.n + i, "text": o.text, "logprobs": None,
                                             "finish_reason": o.finish_reason}]})
    if body.stream_options and body.stream_options.include_usage:
        yield _sse({**base, "choices": [], "usage": _usage(outputs)})
    yield "data: [DONE]\n\n"


def _text(content) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text")


@router.get("/v1/mentor/serving")
def serving_state(request: Request) -> dict:
    """What the model pool holds (models, adapters, memory) and what the engine has batched."""
    ctx = request.app.state.ctx
    return {"loaded": ctx.pool.loaded_names(), "used_bytes": ctx.pool.used_bytes, "budget_bytes": ctx.pool.budget,
            "loads": ctx.pool.loads, "evictions": ctx.pool.evictions, "batches": ctx.engine.batches,
            "requests": ctx.engine.requests}
