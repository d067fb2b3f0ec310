"""A teacher behind any OpenAI-compatible endpoint: vLLM, Ollama, llama.cpp server, hosted APIs.

Spec: `openai:MODEL@BASE_URL` (chat route, the prompt sent as one user message) or
`openai-completions:MODEL@BASE_URL` (plain completions route). Without `@BASE_URL`,
$OPENAI_BASE_URL or the OpenAI API is used.

Requests run concurrently on one httpx.AsyncClient. How many are in flight adapts to the server
(`concurrency.AdaptiveLimit`): from 1, up to `concurrency`, down when answers wait in the server's
queue or the server is overloaded, so a server that answers one request at a time is not flooded.
Transient faults (timeouts, dropped connections, 408, 429, 5xx, bodies that are not the expected
JSON) are retried with exponential backoff and jitter, honouring Retry-After; faults that no retry
can fix (401, 403, 404: wrong key, URL or model) stop the whole run at once with a message naming
URL and model.

Answers are streamed (`stream: true`), for two reasons. The read timeout then bounds the server's
silence, not the length of an answer: a slow answer that is progressing is never cut off, and a
hung server is still found out. And a request the client gives up on is closed mid-stream, which
servers notice and stop generating for, whereas some keep computing an unstreamed request whose
client has gone (`transformers serve` does; that is the flood short timeouts with many requests
in flight cause). The stream is read to its end before anything is kept, so the cache only ever
holds whole answers; a server that ignores `stream` and sends one JSON body is understood too.
A prompt has at most one request open at a time, and its retry is sent only after the attempt
before it was closed (and, streamed, stopped by the server): never the same prompt twice in
flight from this client.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import random
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from mentor.errors import MentorError
from mentor.serving.stop import apply_stop
from mentor.teachers.base import Completion, GenerationParams, OnAnswer, Teacher
from mentor.teachers.concurrency import AdaptiveLimit, FixedLimit, Slots

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_TIMEOUT = 300.0  # seconds of silence from the server before a request is given up
MAX_TIMEOUT_GROWTH = 4  # an unstreamed answer that timed out is retried with up to 4 times the timeout
CONNECT_TIMEOUT = 10.0  # a server that does not accept a connection in this long is down or swamped
OVERLOADED = (408, 429, 503, 504)  # statuses that say "fewer requests, please"
ROUTES = {"openai": "chat", "openai-chat": "chat", "openai-completions": "completions"}
_SPEC = re.compile(r"^(?P<model>.+?)@(?P<url>https?://\S+)$")


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: `max_attempts` tries per prompt, waits doubling from `backoff_base` seconds."""

    max_attempts: int = 6
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    max_retry_after: float = 300.0  # never sleep longer than this on a server's say-so

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        cap = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
        return cap / 2 + random.uniform(0, cap / 2)  # jitter keeps concurrent retries from bunching


class _PromptFailed(Exception):
    """This prompt gets no answer; the others go on."""


def parse_spec(spec: str) -> tuple[str, str, str]:
    """`openai[-completions]:MODEL@BASE_URL` -> (route, model, base_url).

    The server is always one the user named: in the spec, or in OPENAI_BASE_URL. A spec whose
    URL does not parse is an error, never a reason to fall back to a default remote endpoint
    (that would send the user's data to a third party they did not name)."""
    scheme, _, rest = spec.partition(":")
    if scheme not in ROUTES or not rest:
        raise MentorError(f"not an OpenAI-compatible teacher spec: {spec!r}; write openai:MODEL@http://HOST:PORT/v1")
    if match := _SPEC.match(rest):
        model, url = match["model"], match["url"]
    elif "@" in rest:
        model, _, url = rest.rpartition("@")
        if not model:
            raise MentorError(f"teacher spec {spec!r} names no model; write {scheme}:MODEL@{url}")
        raise MentorError(
            f"teacher spec {spec!r}: {url!r} is not an http(s) URL; write {scheme}:{model}@http://HOST:PORT/v1"
        )
    elif os.environ.get("OPENAI_BASE_URL"):
        model, url = rest, os.environ["OPENAI_BASE_URL"]
    else:
        raise MentorError(
            f"teacher spec {spec!r} names no server; write {scheme}:{rest}@http://HOST:PORT/v1 (for "
            f"OpenAI's own API: {scheme}:{rest}@{DEFAULT_BASE_URL}), or set OPENAI_BASE_URL"
        )
    if not model:
        raise MentorError(f"teacher spec {spec!r} names no model; write {scheme}:MODEL@{url}")
    return ROUTES[scheme], model, url.rstrip("/")


def _retry_after(resp: httpx.Response) -> float | None:
    """Retry-After in seconds, from either of its forms (delta-seconds or an HTTP date)."""
    value = resp.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _detail(resp: httpx.Response) -> str:
    """The server's own words about an error, short."""
    try:
        error = resp.json().get("error")
        message = error.get("message") if isinstance(error, dict) else error
        if message:
            return str(message)[:300]
    except (ValueError, AttributeError):
        pass
    return resp.text[:300] or resp.reason_phrase


def _timeout(read: float) -> httpx.Timeout:
    """`read` seconds of server silence; waiting for a pooled connection is our own queue, not the
    server's silence: no pool timeout."""
    return httpx.Timeout(read, connect=min(read, CONNECT_TIMEOUT), pool=None)


def _run(coro):
    """Run a coroutine to the end from sync code, even when called inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(1) as pool:  # a loop is running here (Jupyter, a server): use a fresh one
        return pool.submit(asyncio.run, coro).result()


class OpenAITeacher(Teacher):
    """Completions from an OpenAI-compatible HTTP endpoint: streamed, concurrent (adaptively, up to
    `concurrency` in flight; `adaptive=False` keeps exactly `concurrency`), retried and cached.
    `timeout` is how long the server may stay silent (for an unstreamed answer: take) before the
    request is given up and retried."""

    def __init__(
        self,
        model: str,
        base_url: str = DEFAULT_BASE_URL,
        route: str = "chat",
        cache=None,
        concurrency: int = 8,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        progress: bool | None = None,
        adaptive: bool = True,
        stream: bool = True,
    ):
        if route not in ("chat", "completions"):
            raise MentorError(f"unknown route {route!r}; use 'chat' or 'completions'")
        if concurrency < 1:
            raise MentorError(f"concurrency must be at least 1, got {concurrency}")
        base_url = base_url.rstrip("/")
        scheme = "openai" if route == "chat" else "openai-completions"
        super().__init__(f"{scheme}:{model}@{base_url}", cache=cache, progress=progress)
        self.model, self.base_url, self.route = model, base_url, route
        self.url = f"{base_url}/{'chat/completions' if route == 'chat' else 'completions'}"
        self.concurrency = concurrency
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.stream = stream
        # one limiter for the teacher's life: what it learnt about the server holds for the next call
        self.limiter = AdaptiveLimit(concurrency) if adaptive else FixedLimit(concurrency)

    @classmethod
    def from_spec(cls, spec: str, **kwargs) -> OpenAITeacher:
        route, model, base_url = parse_spec(spec)
        return cls(model, base_url, route=route, **kwargs)

    def status(self) -> dict[str, object]:
        return {"limit": self.limiter.limit}

    def _body(self, prompt: str, params: GenerationParams) -> dict:
        body: dict = {
            "model": self.model,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "n": params.n,
        }
        if params.stop:
            body["stop"] = params.stop
        if self.route == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        if self.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}  # token counts in the last event
        return body

    def _parse(self, resp: httpx.Response, params: GenerationParams) -> list[Completion]:
        """The completions in a 200 JSON body; ValueError if it is not what the API promises."""
        try:
            data = resp.json()
            choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
            if self.route == "chat":
                texts = [c["message"].get("content") or "" for c in choices]
            else:
                texts = [c["text"] for c in choices]
            reasons = [c.get("finish_reason") for c in choices]
            usage = data.get("usage") or {}
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"unexpected JSON shape ({type(err).__name__}: {err})") from err
        return self._completions(texts, usage, params, reasons)

    async def _read_stream(
        self, resp: httpx.Response, start: float
    ) -> tuple[list[str], list[str | None], dict, float | None]:
        """Texts, finish reasons, usage and seconds from `start` to the first token of a server-sent
        event stream; ValueError if the stream is malformed, reports an error or ends before the
        answer does."""
        parts: dict[int, list[str]] = {}
        finished: dict[int, str] = {}
        usage, first, done = {}, None, False
        try:
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators, comments (keep-alives), event names
                data = line[5:].strip()
                if not data:
                    continue
                if data == "[DONE]":
                    done = True
                    break
                event = json.loads(data)
                if event.get("error"):
                    raise ValueError(f"error event in the stream: {str(event['error'])[:300]}")
                for choice in event.get("choices") or []:
                    index = choice.get("index", 0)
                    piece = (choice.get("delta") or {}).get("content") if self.route == "chat" else choice.get("text")
                    if piece is not None and not isinstance(piece, str):
                        raise TypeError(f"a text of type {type(piece).__name__}")
                    parts.setdefault(index, [])
                    if piece:
                        parts[index].append(piece)
                        first = first if first is not None else time.monotonic() - start
                    if choice.get("finish_reason"):
                        finished[index] = choice["finish_reason"]
                usage = event.get("usage") or usage
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"unexpected event shape ({type(err).__name__}: {err})") from err
        # not every server sends [DONE] (transformers serve does not); a finish reason per choice is as good
        if not done and not (parts and finished.keys() >= parts.keys()):
            raise ValueError("the stream ended before the answer did")
        order = sorted(parts)
        return ["".join(parts[i]) for i in order], [finished.get(i) for i in order], usage, first

    def _completions(
        self, texts: list, usage: dict, params: GenerationParams, reasons: list[str | None]
    ) -> list[Completion]:
        if not all(isinstance(t, str) for t in texts):
            raise ValueError("a choice's text is not a string")
        if len(texts) < params.n:
            raise ValueError(f"{len(texts)} choice(s) for n={params.n}")
        texts = texts[: params.n]
        usage = usage if isinstance(usage, dict) else {}
        tokens_in, tokens_out = usage.get("prompt_tokens"), usage.get("completion_tokens")
        # usage counts all n choices together: spread it so the per-completion numbers add up
        outs = [None] * params.n
        if isinstance(tokens_out, int):
            outs = [tokens_out // params.n + (i < tokens_out % params.n) for i in range(params.n)]
        tokens_in = tokens_in if isinstance(tokens_in, int) else None
        completions = []
        for text, out, reason in zip(texts, outs, reasons):
            kept = apply_stop(text, params.stop)
            # a stop sequence found here ends the answer, whatever cut the server's text after it
            reason = "stop" if kept != text else reason if isinstance(reason, str) else None
            completions.append(Completion(kept, tokens_in, out, finish_reason=reason))
        return completions

    async def _send(
        self, client: httpx.AsyncClient, body: dict, params: GenerationParams, start: float, read_timeout: float
    ) -> tuple[httpx.Response, list[Completion] | None, float | None]:
        """One request: the response (its body read), and for a 200 its completions and the seconds to
        the first token (None when not streamed). ValueError if a 200's body is not a completion."""
        async with client.stream("POST", self.url, json=body, timeout=_timeout(read_timeout)) as resp:
            if resp.status_code == 200 and resp.headers.get("content-type", "").startswith("text/event-stream"):
                texts, reasons, usage, first = await self._read_stream(resp, start)
                return resp, self._completions(texts, usage, params, reasons), first
            await resp.aread()
        return resp, (self._parse(resp, params) if resp.status_code == 200 else None), None

    def _fatal(self, resp: httpx.Response) -> MentorError:
        status = resp.status_code
        where = f"{self.url} answered HTTP {status} for model '{self.model}': {_detail(resp)}."
        if status == 404:
            fix = f"Check the model name (GET {self.base_url}/models lists them) and that the base URL ends in /v1."
        else:
            key_state = "set" if os.environ.get(self.api_key_env) else "unset"
            fix = f"Check the API key in ${self.api_key_env} (currently {key_state}) and its access to this model."
        return MentorError(f"{where} {fix}")

    async def _ask(
        self, client: httpx.AsyncClient, prompt: str, params: GenerationParams, slots: Slots
    ) -> list[Completion]:
        """One prompt, retried until answered, given up on, or found hopeless for every prompt; the
        limiter hears how each attempt went."""
        body = self._body(prompt, params)
        last = ""
        read_timeout = self.timeout
        for attempt in range(1, self.retry.max_attempts + 1):
            retry_after = None
            self.stats.add(calls=1)
            ticket = slots.ticket()
            try:
                resp, completions, first = await self._send(client, body, params, ticket.sent, read_timeout)
            except httpx.TimeoutException as err:
                self.stats.add(timeouts=1)
                self.limiter.on_overload(ticket)
                if not self.stream:  # the whole answer took too long, and would again: allow it longer
                    read_timeout = min(read_timeout * 2, self.timeout * MAX_TIMEOUT_GROWTH)
                last = f"timed out after {time.monotonic() - ticket.sent:.1f}s ({type(err).__name__})"
            except httpx.RequestError as err:
                last = f"{type(err).__name__}: {err}"
            except ValueError as err:
                last = f"malformed response body: {err}"
            else:
                status = resp.status_code
                if completions is not None:
                    self.limiter.on_answer(ticket, time.monotonic() - ticket.sent, first)
                    return completions
                if status in (401, 403, 404):
                    raise self._fatal(resp)
                if status in OVERLOADED or status >= 500:
                    if status in OVERLOADED:
                        self.limiter.on_overload(ticket)
                    retry_after = _retry_after(resp)
                    last = f"HTTP {status}: {_detail(resp)}"
                else:  # e.g. a prompt too long for the context: retrying cannot help
                    raise _PromptFailed(f"{self.url} answered HTTP {status}: {_detail(resp)}")
            if attempt < self.retry.max_attempts:
                self.stats.add(retries=1)
                await asyncio.sleep(self.retry.delay(attempt, retry_after))
        raise _PromptFailed(f"gave up after {self.retry.max_attempts} attempts at {self.url}; last error: {last}")

    async def _answer_async(self, prompts: list[str], params: GenerationParams, on_answer: OnAnswer) -> dict[str, str]:
        failed: dict[str, str] = {}
        slots = Slots(self.limiter)
        halt = asyncio.Event()  # set on a fatal error: a task waking on a freed slot sends nothing
        key = os.environ.get(self.api_key_env)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        async with httpx.AsyncClient(timeout=_timeout(self.timeout), limits=limits, headers=headers) as client:

            async def one(prompt: str) -> None:
                # the slot is held through the backoff sleeps too, so a rate-limited server sees
                # fewer requests, not more
                async with slots.hold():
                    if halt.is_set():
                        return
                    try:
                        completions = await self._ask(client, prompt, params, slots)
                    except _PromptFailed as err:
                        failed[prompt] = str(err)
                        return
                    except MentorError:
                        halt.set()
                        raise
                on_answer(prompt, completions)

            try:
                async with asyncio.TaskGroup() as group:  # one fatal error cancels the rest
                    for prompt in prompts:
                        group.create_task(one(prompt))
            except BaseExceptionGroup as errors:
                fatal = [e for e in errors.exceptions if isinstance(e, MentorError)]
                if fatal:
                    raise fatal[0] from None
                raise
        return failed

    def _answer(self, prompts: list[str], params: GenerationParams, on_answer: OnAnswer) -> dict[str, str]:
        return _run(self._answer_async(prompts, params, on_answer))
