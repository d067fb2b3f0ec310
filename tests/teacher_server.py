"""A real OpenAI-compatible HTTP server on loopback for teacher tests, with faults to order.

FastAPI + uvicorn in a background thread on 127.0.0.1 and a free port. It answers
`/v1/chat/completions` and `/v1/completions` either with deterministic text derived from the
prompt (backend "echo"), with greedy generation from `tiny:llama` (backend "tiny"), or with worked
chain-of-thought answers to "what is A + B?" questions (backend "sums"), as one JSON
body or, when asked (`stream: true`), as server-sent events word by word. It counts requests per
prompt, in-flight requests (also per prompt) and requests whose client left before the answer was
sent, and injects faults per prompt: the first N requests of each prompt can get a 500, a 429 with
Retry-After, a delay longer than the client timeout, a malformed body or a stream cut short; some
prompts can fail forever or hang; a wrong key gets 401, an unknown model 404.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

MALFORMED_BODIES = ['{"choices": [', '{"object": "chat.completion", "choices": "nope"}', "<html>bad gateway</html>"]


@dataclass
class ServerState:
    """Faults to inject and what was seen; tests set fields directly, `reset` between tests."""

    backend: str = "echo"
    models: set = field(default_factory=lambda: {"echo", "tiny", "sums"})
    api_key: str | None = None  # when set, requests must carry it as a Bearer token
    fail_first: int = 0  # first N requests of each prompt: HTTP 500
    rate_limit_first: int = 0  # first N requests of each prompt: HTTP 429 with Retry-After
    retry_after: str = "1"
    slow_first: int = 0  # first N requests of each prompt: sleep `slow_seconds` before answering
    slow_seconds: float = 0.0
    malformed_first: int = 0  # first N requests of each prompt: 200 with a body that is not a completion
    fail_always: set = field(default_factory=set)  # prompts answered 500 forever
    hang: set = field(default_factory=set)  # prompts that wait while listed here (up to 30 s)
    delay: float = 0.0  # every request takes this long (to see concurrency)
    word_delay: float = 0.0  # streamed answers: seconds between words (an answer that progresses slowly)
    serial_seconds: float = 0.0  # each answer holds one server-wide lock this long: one request at a time
    serial_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    cut_first: int = 0  # first N streamed requests of each prompt: the stream stops mid-answer
    send_done: bool = True  # end streams with `data: [DONE]` (transformers serve does not)
    streamed: int = 0  # requests answered as a stream
    abandoned: int = 0  # requests whose client went away before the whole answer was sent
    prompt_in_flight: Counter = field(default_factory=Counter)
    max_prompt_in_flight: int = 0  # the most requests of one prompt the server had at once
    requests: Counter = field(default_factory=Counter)  # per prompt, every request received
    answered: Counter = field(default_factory=Counter)  # per prompt, completions sent
    rejected: int = 0  # requests refused with 401 or 404
    in_flight: int = 0
    max_in_flight: int = 0

    def reset(self) -> None:
        fresh = ServerState()
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(fresh, name))

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "code": status}}, status_code=status, headers=headers)


class _Tiny:
    """tiny:llama, loaded on first use, greedy (the server's own code, independent of the teacher)."""

    loaded = None
    lock = threading.Lock()

    @classmethod
    def generate(cls, prompt: str, chat: bool, max_tokens: int) -> tuple[str, int, int]:
        import torch

        from mentor.models import load_model

        with cls.lock:
            if cls.loaded is None:
                cls.loaded = load_model("tiny:llama")
            model, tok = cls.loaded.model, cls.loaded.tokenizer
            text = (
                tok.apply_chat_template(
                    [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
                )
                if chat
                else prompt
            )
            enc = tok([text], return_tensors="pt", add_special_tokens=not chat)
            with torch.inference_mode():
                out = model.generate(**enc, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
            new = out[0, enc["input_ids"].shape[1] :].tolist()
            if tok.eos_token_id in new:
                new = new[: new.index(tok.eos_token_id) + 1]
            return tok.decode(new, skip_special_tokens=True), enc["input_ids"].shape[1], len(new)


def make_app(state: ServerState) -> FastAPI:
    app = FastAPI()

    async def handle(request: Request, chat: bool):
        if state.api_key and request.headers.get("authorization") != f"Bearer {state.api_key}":
            state.rejected += 1
            return _error(401, "Incorrect API key provided.")
        body = await request.json()
        model = body.get("model")
        if model not in state.models:
            state.rejected += 1
            return _error(404, f"The model `{model}` does not exist.")
        prompt = body["messages"][-1]["content"] if chat else body["prompt"]
        state.requests[prompt] += 1
        k = state.requests[prompt]
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        state.prompt_in_flight[prompt] += 1
        state.max_prompt_in_flight = max(state.max_prompt_in_flight, state.prompt_in_flight[prompt])
        streaming = False

        def done() -> None:
            state.in_flight -= 1
            state.prompt_in_flight[prompt] -= 1

        try:
            if state.delay:
                await asyncio.sleep(state.delay)
            deadline = time.monotonic() + 30
            while prompt in state.hang and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if prompt in state.fail_always or k <= state.fail_first:
                return _error(500, "internal error (injected)")
            if k <= state.rate_limit_first:
                return _error(429, "rate limited (injected)", headers={"Retry-After": state.retry_after})
            if k <= state.malformed_first:
                return Response(MALFORMED_BODIES[(k - 1) % len(MALFORMED_BODIES)], media_type="application/json")
            if body.get("stream"):
                streaming = True
                return StreamingResponse(_events(state, body, prompt, chat, k, done), media_type="text/event-stream")
            if k <= state.slow_first:
                await asyncio.sleep(state.slow_seconds)
            await _serial(state)
            answer = _answer(state, body, prompt, chat)
            if await request.is_disconnected():
                state.abandoned += 1
            return JSONResponse(answer)
        finally:
            if not streaming:  # a stream counts as in flight until its last event is sent
                done()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await handle(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await handle(request, chat=False)

    return app


def _worked_sum(prompt: str) -> str:
    """Backend "sums": a chain-of-thought answer to the last "what is A + B?" the prompt asks (a few-shot
    prompt ends with the question to answer), in the CoT exemplars' style; a question it cannot read
    (or one marked "unclear") gets a rambling answer with no answer statement, as real teachers give."""
    asked = re.findall(r"what is (\d+) \+ (\d+)\?", prompt)
    question = prompt.rsplit("Q:", 1)[-1]
    if not asked or "unclear" in question:
        return "Let us think about this. There are several ways to read the question, and it depends on them."
    a, b = map(int, asked[-1])
    return f"We start with {a} and add {b}. {a} + {b} = {a + b}. The answer is {a + b}."


def _answer(state: ServerState, body: dict, prompt: str, chat: bool) -> dict:
    n, max_tokens, stop = body.get("n", 1), body.get("max_tokens", 16), body.get("stop") or []
    texts, reasons, tokens_in, tokens_out = [], [], len(prompt.split()), 0
    for i in range(n):
        reason = "stop"
        if state.backend == "tiny":
            text, tokens_in, used = _Tiny.generate(prompt, chat, max_tokens)
            reason = "length" if used >= max_tokens else "stop"
        else:
            # a word is a token here: an answer longer than max_tokens is cut, as a real server cuts it
            text = _worked_sum(prompt) if state.backend == "sums" else (
                f"{'sample ' + str(i) + ' ' if n > 1 else ''}answer to: {prompt}")
            words = text.split()
            if len(words) > max_tokens:
                words, reason = words[:max_tokens], "length"
            text, used = " ".join(words), len(words)
        for s in stop:
            if s in text:
                text, reason = text.split(s)[0], "stop"
        texts.append(text)
        reasons.append(reason)
        tokens_out += used
    state.answered[prompt] += 1
    if chat:
        choices = [
            {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": r}
            for i, (t, r) in enumerate(zip(texts, reasons))
        ]
    else:
        choices = [{"index": i, "text": t, "finish_reason": r} for i, (t, r) in enumerate(zip(texts, reasons))]
    usage = {"prompt_tokens": tokens_in, "completion_tokens": tokens_out, "total_tokens": tokens_in + tokens_out}
    return {
        "id": "x",
        "object": "chat.completion" if chat else "text_completion",
        "model": body["model"],
        "choices": choices,
        "usage": usage,
    }


async def _serial(state: ServerState) -> None:
    if state.serial_seconds:
        async with state.serial_lock:
            await asyncio.sleep(state.serial_seconds)


async def _events(state: ServerState, body: dict, prompt: str, chat: bool, k: int, done):
    """The answer as server-sent events: a role event at once (as servers send while a request
    waits its turn), then the words, `word_delay` apart, then the finish and usage."""
    kind = "chat.completion.chunk" if chat else "text_completion"
    model = body["model"]

    def event(choices: list, **extra) -> str:
        return "data: " + json.dumps({"id": "x", "object": kind, "model": model, "choices": choices, **extra}) + "\n\n"

    def piece(index: int, text: str, finish: str | None = None) -> dict:
        if chat:
            return {"index": index, "delta": {"content": text} if text else {}, "finish_reason": finish}
        return {"index": index, "text": text, "finish_reason": finish}

    finished = False
    try:
        if chat:
            yield event([{"index": i, "delta": {"role": "assistant"}} for i in range(body.get("n", 1))])
        if k <= state.slow_first:
            await asyncio.sleep(state.slow_seconds)  # silence longer than the client's timeout
        await _serial(state)
        answer = _answer(state, body, prompt, chat)
        texts = [c["message"]["content"] if chat else c["text"] for c in answer["choices"]]
        reasons = [c["finish_reason"] for c in answer["choices"]]
        for i, text in enumerate(texts):
            words = text.split(" ")
            for j, word in enumerate(words):
                if state.word_delay:
                    await asyncio.sleep(state.word_delay)
                yield event([piece(i, word if j == 0 else " " + word)])
                if k <= state.cut_first and j == len(words) // 2:
                    finished = True  # the server's part ends here: a stream cut short, not a client gone
                    return
        for i in range(len(texts)):
            yield event([piece(i, "", reasons[i])])
        yield event([], usage=answer["usage"])
        if state.send_done:
            yield "data: [DONE]\n\n"
        finished = True
        state.streamed += 1
    finally:
        if not finished:
            state.abandoned += 1
        done()


class TeacherServer:
    """The app served by uvicorn in a daemon thread; `base_url` ends in /v1 like real servers."""

    def __init__(self):
        self.state = ServerState()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        config = uvicorn.Config(make_app(self.state), log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def __enter__(self) -> TeacherServer:
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("test teacher server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.state.hang.clear()
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()
