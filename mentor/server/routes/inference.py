"""/v1/chat/completions and /v1/completions in OpenAI's shape, for every servable model: a registered
tuned model by name, a kept checkpoint (NAME:ckpt-step-N), or a base model reference.

/v1/completions also scores given tokens, as a teacher is asked to (`echo` with `logprobs` and
`max_tokens` 0: OpenAI's legacy logprobs object; vLLM's `prompt_logprobs`; a prompt of token ids):
one mentor host can be the log-prob teacher of another (`mentor.teachers.logprobs`).

POST /v1/mentor/score: a reward model's scores of answers (reward models never generate: chat and
completion requests for one are refused).

mentor's own body field `task`: a distilled step-by-step student answers its label task by default;
`"task": "rationale"` asks for its rationale (with the openai client: `extra_body={"task": "rationale"}`).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import secrets
import threading
import time
from collections.abc import Iterator

from anyio import from_thread
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from jinja2 import TemplateError
from pydantic import BaseModel, ConfigDict, Field

from mentor.errors import MentorError
from mentor.server.errors import ApiError, bad
from mentor.server.services.models import servable
from mentor.serving.engine import Ticket
from mentor.serving.generate import GeneratedText, SamplingParams, context_length
from mentor.serving.openai_api import (
    ChatRequest,
    CompletionRequest,
    Message,
    RequestProblem,
    chat_prompt,
    chat_response,
    completion_response,
    echo_logprobs,
    text_messages,
    vllm_prompt_logprobs,
)
from mentor.serving.openai_api import usage as _usage
from mentor.serving.predict import Predictor, reward_model_refusal
from mentor.serving.scoring import PromptScores, encode_text

log = logging.getLogger("mentor")
router = APIRouter()
DISCONNECT_POLL_SECONDS = 0.5


def prompter(ctx, name: str) -> Predictor:
    try:
        model = servable(ctx, name)
        if model.is_reward_model:  # a scorer: never generated from
            raise bad(reward_model_refusal(name), "model", "model_is_a_reward_model")
        return Predictor(model, pool=ctx.pool)
    except ApiError:
        raise
    except MentorError as err:
        raise ApiError(404, f"model '{name}' cannot be served: {err}", "model", "model_not_found") from None
    except OSError as err:
        raise ApiError(404, f"no model '{name}' ({type(err).__name__})", "model", "model_not_found") from None


def _fitted(p: Predictor, prompts: list[str], params: SamplingParams, asked: bool) -> SamplingParams:
    """`params`, refused if prompt and answer overflow the model's context. Without an asked
    max_tokens the default shrinks to the room the prompt leaves, as OpenAI's API does."""
    room = None if asked else p.room(prompts)
    if room is not None and 0 < room < params.max_new_tokens:
        params = dataclasses.replace(params, max_new_tokens=room)
    if problem := p.overflow(prompts, params.max_new_tokens):
        raise bad(problem, "messages", "context_length_exceeded")
    return params


def _answer(ctx, p: Predictor, prompts: list[str], params: SamplingParams, stream: bool) -> list[Ticket]:
    tickets = [Ticket(p.servable, prompt, params, max_input_tokens=None, stream=stream) for prompt in prompts]
    for t in tickets:
        ctx.engine.submit(t)
    return tickets


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _waited(ticket: Ticket, request: Request | None = None) -> None:
    """Wait for the ticket's first event; a client that leaves meanwhile (a queue, a slow prompt)
    is noticed within a second, and its request is dropped before it costs anything."""
    while not ticket.ready.wait(DISCONNECT_POLL_SECONDS):
        if request is not None and from_thread.run(request.is_disconnected):
            ticket.gone.set()
            raise ApiError(400, "the client closed the request", code="client_closed_request")


def _started(ticket: Ticket, request: Request | None = None) -> Iterator:
    """The ticket's deltas with the first one awaited here: a request that fails before its first
    token is answered with an error status, not with a stream that just stops."""
    _waited(ticket, request)
    deltas = ticket.deltas()
    return itertools.chain([next(deltas)], deltas)


def _guarded(events: Iterator[str], tickets: list[Ticket]) -> Iterator[str]:
    """A stream that fails midway ends with an error event, which OpenAI's client raises as an
    APIError (the status line is long sent); one whose client leaves stops its generation."""
    try:
        yield from events
    except Exception as err:  # noqa: BLE001 - the client must hear of it, in the stream's own shape
        log.exception("serving: a stream failed")
        yield _sse({"error": {"message": f"generation failed: {err}", "type": "server_error", "param": None,
                              "code": None}})
    finally:  # also when the client disconnects: the server closes this generator
        for ticket in tickets:
            ticket.gone.set()


@router.post("/v1/chat/completions")
def chat(request: Request, body: ChatRequest):
    ctx = request.app.state.ctx
    p = prompter(ctx, body.model)
    try:
        prompt, params = chat_prompt(p, body)
    except TemplateError as err:  # the model's chat template refused the conversation ("roles must alternate")
        raise bad(f"the model's chat template refused these messages: {err}", "messages") from None
    except RequestProblem as err:
        raise bad(str(err), err.param) from None
    params = _fitted(p, [prompt], params, asked=bool(body.max_completion_tokens or body.max_tokens))
    [ticket] = _answer(ctx, p, [prompt], params, body.stream)
    rid, created = "chatcmpl-" + secrets.token_hex(12), int(time.time())
    if not body.stream:
        _waited(ticket, request)
        return chat_response(rid, created, body.model, ticket.result())
    deltas = _started(ticket, request)
    watched = [ticket]

    def events():
        base = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": body.model}
        for i in range(body.n):
            yield _sse({**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                             "finish_reason": None}]})
        for copy, delta in deltas:
            if copy == "done":
                for i, o in enumerate(delta):
                    yield _sse({**base, "choices": [{"index": i, "delta": {}, "finish_reason": o.finish_reason}]})
                if body.stream_options and body.stream_options.include_usage:
                    yield _sse({**base, "choices": [], "usage": _usage([delta])})
            else:
                yield _sse({**base, "choices": [{"index": copy, "delta": {"content": delta}, "finish_reason": None}]})
        yield "data: [DONE]\n\n"

    return StreamingResponse(_guarded(events(), watched), media_type="text/event-stream")


def _scored(ctx, p: Predictor, prompts: list[list[int]], k: int, request: Request) -> list[PromptScores]:
    """The prompts' tokens scored by the engine (batched with other scoring requests, never with
    generation), each refused first if it is longer than the model's context."""
    if p.loaded.is_seq2seq:
        raise bad("scoring prompt tokens (logprobs, prompt_logprobs) is implemented for causal models only",
                  "prompt")
    context = context_length(p.loaded.model)
    for ids in prompts:
        if not ids:
            raise bad("the prompt has no tokens to score", "prompt")
        if context is not None and len(ids) > context:
            raise bad(f"the prompt has {len(ids)} tokens, {len(ids) - context} more than the model's context of "
                      f"{context}", "prompt", "context_length_exceeded")
    tickets = [ctx.engine.submit(Ticket(p.servable, "", SamplingParams(), scoring=(tuple(ids), k)))
               for ids in prompts]
    for t in tickets:
        _waited(t, request)
    return [t.result() for t in tickets]


def _prompt_ids(p: Predictor, body: CompletionRequest, texts: list[str]) -> list[list[int]]:
    """What is scored: token ids as given, a text as the model's tokenizer reads it (its BOS as
    generation adds it), never rendered through the model's prompt style: a teacher scores the
    tokens it is asked about."""
    given = body.token_prompts
    return given if given is not None else [encode_text(p.tokenizer, t) for t in texts]


def _with_scores(p: Predictor, body: CompletionRequest, response: dict, scores: list[PromptScores],
                 texts: list[str]) -> dict:
    """Echoed prompts and their log-probs added to a completion response's choices."""
    for choice in response["choices"]:
        k = choice["index"] // body.n
        if body.echo:
            choice["text"] = texts[k] + choice["text"]
            if body.logprobs is not None:
                choice["logprobs"] = echo_logprobs(p.tokenizer, scores[k], body.logprobs,
                                                   bool(body.return_tokens_as_token_ids))
        if body.prompt_logprobs is not None:
            choice["prompt_logprobs"] = vllm_prompt_logprobs(p.tokenizer, scores[k], body.prompt_logprobs)
    return response


@router.post("/v1/completions")
def completions(request: Request, body: CompletionRequest):
    ctx = request.app.state.ctx
    p = prompter(ctx, body.model)
    if problem := body.scoring_problem():
        raise bad(str(problem), problem.param)
    token_prompts = body.token_prompts
    if token_prompts is not None:
        from torch.nn import Embedding  # loaded with the model already

        embeddings = p.loaded.model.get_input_embeddings()  # an Embedding (or a subclass) in transformers' models
        rows = embeddings.num_embeddings if isinstance(embeddings, Embedding) else len(p.tokenizer)
        if past := [i for ids in token_prompts for i in ids if i >= rows]:
            raise bad(f"token id {max(past)} is past the model's vocabulary of {rows}", "prompt")
        texts = p.tokenizer.batch_decode(token_prompts, skip_special_tokens=True)  # echoed as text_offset counts
    else:
        texts = [body.prompt] if isinstance(body.prompt, str) else [t for t in body.prompt if isinstance(t, str)]
    if not texts:
        raise bad("prompt must not be empty", "prompt")
    scores = None
    if body.scores:
        k = max(body.logprobs or 0, body.prompt_logprobs or 0)
        scores = _scored(ctx, p, _prompt_ids(p, body, texts), k, request)
    rid, created = "cmpl-" + secrets.token_hex(12), int(time.time())
    if body.max_tokens == 0:  # nothing generated: the prompt scored (or echoed) alone
        nothing = [[GeneratedText("", len(ids), 0, "length")] for ids in _prompt_ids(p, body, texts)]
        response = completion_response(rid, created, body.model, nothing, 1)
        return _with_scores(p, body, response, scores or [], texts)
    if body.task == "rationale" and not p.rationale_prefix:
        raise bad(f"model '{body.model}' has no rationale task (only step-by-step students do)", "task")
    prefix = p.rationale_prefix if body.task == "rationale" else None
    prompts = [p.render(t, prefix) for t in texts]
    try:
        params = body.params(default_max=16)
    except RequestProblem as err:
        raise bad(str(err), err.param) from None
    params = _fitted(p, prompts, params, asked=body.max_tokens is not None)
    tickets = _answer(ctx, p, prompts, params, body.stream and len(prompts) == 1)
    if not (body.stream and len(prompts) == 1):
        for t in tickets:
            _waited(t, request)
        outputs = [t.result() for t in tickets]
        if body.stream:  # several prompts: streamed as whole answers
            return StreamingResponse(_whole_stream(rid, created, body, outputs), media_type="text/event-stream")
        return _with_scores(p, body, completion_response(rid, created, body.model, outputs, body.n), scores or [],
                            texts)
    deltas = _started(tickets[0], request)
    watched = tickets

    def events():
        base = {"id": rid, "object": "text_completion", "created": created, "model": body.model}
        for copy, delta in deltas:
            if copy == "done":
                for i, o in enumerate(delta):
                    yield _sse({**base, "choices": [{"index": i, "text": "", "logprobs": None,
                                                     "finish_reason": o.finish_reason}]})
                if body.stream_options and body.stream_options.include_usage:
                    yield _sse({**base, "choices": [], "usage": _usage([delta])})
            else:
                yield _sse({**base, "choices": [{"index": copy, "text": delta, "logprobs": None, "finish_reason": None}]})
        yield "data: [DONE]\n\n"

    return StreamingResponse(_guarded(events(), watched), media_type="text/event-stream")


def _whole_stream(rid, created, body, outputs):
    base = {"id": rid, "object": "text_completion", "created": created, "model": body.model}
    for k, outs in enumerate(outputs):
        for i, o in enumerate(outs):
            yield _sse({**base, "choices": [{"index": k * body.n + i, "text": o.text, "logprobs": None,
                                             "finish_reason": o.finish_reason}]})
    if body.stream_options and body.stream_options.include_usage:
        yield _sse({**base, "choices": [], "usage": _usage(outputs)})
    yield "data: [DONE]\n\n"


@router.get("/v1/mentor/serving")
def serving_state(request: Request) -> dict:
    """What the model pool holds (models, adapters, memory) and what the engine has batched."""
    ctx = request.app.state.ctx
    return {"loaded": ctx.pool.loaded_names(), "used_bytes": ctx.pool.used_bytes, "budget_bytes": ctx.pool.budget,
            "loads": ctx.pool.loads, "evictions": ctx.pool.evictions, "batches": ctx.engine.batches,
            "requests": ctx.engine.requests, "abandoned": ctx.engine.abandoned}


class ScoreRequest(BaseModel):
    """/v1/completions also scores given tokens, as a teacher is asked to (`echo` with `logprobs` and
`max_tokens` 0: OpenAI's legacy logprobs object; vLLM's `prompt_logprobs`; a prompt of token ids):
one mentor host can be the log-prob teacher of another (`mentor.teachers.logprobs`).

POST /v1/mentor/score: a reward model's scores of answers to one prompt (a text or a chat)."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=512)
    prompt: str | None = Field(None, description="the prompt as text; or give `messages`")
    messages: list[Message] | None = Field(None, min_length=1, max_length=256, description="the conversation, "
                                           "ending with the user's turn")
    response: str | None = Field(None, description="one answer to score; or give `responses`")
    responses: list[str] | None = Field(None, min_length=1, max_length=64)


def scorer(ctx, name: str):
    """The reward model a `model` field names, loaded once and kept until the model is deleted."""
    from mentor.rlhf.reward import RewardModel

    model = servable(ctx, name)
    if not model.is_reward_model:
        raise bad(f"model '{name}' is not a reward model; only reward models score (`mentor reward-model`)",
                  "model", "model_is_not_a_reward_model")
    with ctx.scorers_lock:
        if model.base not in ctx.scorers:
            try:
                ctx.scorers[model.base] = (RewardModel(model.base), threading.Lock())
            except (MentorError, OSError) as err:
                raise ApiError(404, f"model '{name}' cannot be loaded: {str(err).splitlines()[0][:300]}", "model",
                               "model_not_found") from None
        return ctx.scorers[model.base]


@router.post("/v1/mentor/score")
def score(request: Request, body: ScoreRequest) -> dict:
    """Scores of answers to a prompt by a reward model, exactly as it scores them in RLHF: higher is
    preferred. {"model", "prompt" | "messages", "response" | "responses"} -> one score per answer."""
    if (body.prompt is None) == (body.messages is None):
        raise bad("give the prompt once: as `prompt` (a text) or as `messages` (a conversation)", "prompt")
    if (body.response is None) == (body.responses is None):
        raise bad("give the answers to score once: as `response` (one) or `responses` (a list)", "responses")
    prompt = body.prompt
    if body.messages is not None:
        try:
            prompt = text_messages(body.messages)
        except RequestProblem as err:
            raise bad(str(err), err.param) from None
        if prompt[-1]["role"] != "user":
            raise bad("the last message must be the user's", "messages")
    answers = [body.response] if body.response is not None else body.responses or []  # one is given: checked above
    reward_model, busy = scorer(request.app.state.ctx, body.model)
    with busy:  # one forward pass at a time on a model shared by every request thread
        scores = reward_model.score([prompt] * len(answers), answers)
    return {"object": "list", "model": body.model,
            "data": [{"object": "score", "index": i, "score": s} for i, s in enumerate(scores)]}
