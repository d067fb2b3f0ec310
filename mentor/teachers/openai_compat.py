"""A teacher behind any OpenAI-compatible endpoint: vLLM, Ollama, llama.cpp server, hosted APIs.

Spec: `openai:MODEL@BASE_URL` (chat route, the prompt sent as one user message) or
`openai-completions:MODEL@BASE_URL` (plain completions route). Without `@BASE_URL`,
$OPENAI_BASE_URL or the OpenAI API is used.

Requests run concurrently on one httpx.AsyncClient, at most `concurrency` at a time. Transient
faults (timeouts, dropped connections, 408, 429, 5xx, bodies that are not the expected JSON) are retried
with exponential backoff and jitter, honouring Retry-After; faults that no retry can fix (401, 403,
404: wrong key, URL or model) stop the whole run at once with a message naming URL and model.
"""

from __future__ import annotations

import asyncio
import email.utils
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

DEFAULT_BASE_URL = "https://api.openai.com/v1"
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
        raise MentorError(f"teacher spec {spec!r}: {url!r} is not an http(s) URL; write "
                          f"{scheme}:{model}@http://HOST:PORT/v1")
    elif os.environ.get("OPENAI_BASE_URL"):
        model, url = rest, os.environ["OPENAI_BASE_URL"]
    else:
        raise MentorError(f"teacher spec {spec!r} names no server; write {scheme}:{rest}@http://HOST:PORT/v1 (for "
                          f"OpenAI's own API: {scheme}:{rest}@{DEFAULT_BASE_URL}), or set OPENAI_BASE_URL")
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


def _run(coro):
    """Run a coroutine to the end from sync code, even when called inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(1) as pool:  # a loop is running here (Jupyter, a server): use a fresh one
        return pool.submit(asyncio.run, coro).result()


class OpenAITeacher(Teacher):
    """Completions from an OpenAI-compatible HTTP endpoint, concurrent, retried and cached."""

    def __init__(
        self,
        model: str,
        base_url: str = DEFAULT_BASE_URL,
        route: str = "chat",
        cache=None,
        concurrency: int = 8,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 120.0,
        retry: RetryPolicy | None = None,
        progress: bool | None = None,
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

    @classmethod
    def from_spec(cls, spec: str, **kwargs) -> OpenAITeacher:
        route, model, base_url = parse_spec(spec)
        return cls(model, base_url, route=route, **kwargs)

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
        return body

    def _parse(self, resp: httpx.Response, params: GenerationParams) -> list[Completion]:
        """The completions in a 200 body; ValueError if it is not what the API promises."""
        try:
            data = resp.json()
            choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
            if self.route == "chat":
                texts = [c["message"].get("content") or "" for c in choices]
            else:
                texts = [c["text"] for c in choices]
            if not all(isinstance(t, str) for t in texts):
                raise ValueError("a choice's text is not a string")
            usage = data.get("usage") or {}
            tokens_in, tokens_out = usage.get("prompt_tokens"), usage.get("completion_tokens")
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"unexpected JSON shape ({type(err).__name__}: {err})") from err
        if len(texts) < params.n:
            raise ValueError(f"{len(texts)} choice(s) for n={params.n}")
        texts = texts[: params.n]
        # usage counts all n choices together: spread it so the per-completion numbers add up
        outs = [None] * params.n
        if isinstance(tokens_out, int):
            outs = [tokens_out // params.n + (i < tokens_out % params.n) for i in range(params.n)]
        tokens_in = tokens_in if isinstance(tokens_in, int) else None
        return [Completion(apply_stop(t, params.stop), tokens_in, o) for t, o in zip(texts, outs)]

    def _fatal(self, resp: httpx.Response) -> MentorError:
        status = resp.status_code
        where = f"{self.url} answered HTTP {status} for model '{self.model}': {_detail(resp)}."
        if status == 404:
            fix = f"Check the model name (GET {self.base_url}/models lists them) and that the base URL ends in /v1."
        else:
            key_state = "set" if os.environ.get(self.api_key_env) else "unset"
            fix = f"Check the API key in ${self.api_key_env} (currently {key_state}) and its access to this model."
        return MentorError(f"{where} {fix}")

    async def _ask(self, client: httpx.AsyncClient, prompt: str, params: GenerationParams) -> list[Completion]:
        """One prompt, retried until answered, given up on, or found hopeless for every prompt."""
        body = self._body(prompt, params)
        last = ""
        for attempt in range(1, self.retry.max_attempts + 1):
            retry_after = None
            self.stats.add(calls=1)
            try:
                resp = await client.post(self.url, json=body)
            except httpx.TimeoutException as err:
                last = f"timed out after {self.timeout:g}s ({type(err).__name__})"
            except httpx.RequestError as err:
                last = f"{type(err).__name__}: {err}"
            else:
                status = resp.status_code
                if status in (401, 403, 404):
                    raise self._fatal(resp)
                if status in (408, 429) or status >= 500:
                    retry_after = _retry_after(resp)
                    last = f"HTTP {status}: {_detail(resp)}"
                elif status >= 400:  # e.g. a prompt too long for the context: retrying cannot help
                    raise _PromptFailed(f"{self.url} answered HTTP {status}: {_detail(resp)}")
                else:
                    try:
                        return self._parse(resp, params)
                    except ValueError as err:
                        last = f"malformed response body: {err}"
            if attempt < self.retry.max_attempts:
                self.stats.add(retries=1)
                await asyncio.sleep(self.retry.delay(attempt, retry_after))
        raise _PromptFailed(f"gave up after {self.retry.max_attempts} attempts at {self.url}; last error: {last}")

    async def _answer_async(self, prompts: list[str], params: GenerationParams, on_answer: OnAnswer) -> dict[str, str]:
        failed: dict[str, str] = {}
        semaphore = asyncio.Semaphore(self.concurrency)
        halt = asyncio.Event()  # set on a fatal error: a task waking on a freed slot sends nothing
        key = os.environ.get(self.api_key_env)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)

        async with httpx.AsyncClient(timeout=self.timeout, limits=limits, headers=headers) as client:

            async def one(prompt: str) -> None:
                # the slot is held through the backoff sleeps too, so a rate-limited server sees
                # fewer requests, not more
                async with semaphore:
                    if halt.is_set():
                        return
                    try:
                        completions = await self._ask(client, prompt, params)
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
