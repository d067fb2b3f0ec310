"""Teachers for distillation: turn prompts into completions, cached, concurrent and retried.

Spec strings for `build_teacher`:
- `openai:MODEL@BASE_URL`               OpenAI-compatible chat route (vLLM, Ollama, llama.cpp, hosted)
- `openai-completions:MODEL@BASE_URL`   the same server's plain completions route
- `hf:REF` / `hf-completions:REF`       a local model (`load_model` ref), chat template / raw prompt
- `recorded:FILE.jsonl`                 completions already written, keyed by input
- `recorded:field=NAME`                 completions in field NAME of the dataset rows (pass `rows=`)
(`openai-chat:` and `hf-chat:` are accepted as the explicit names of the chat forms.)

Log-prob teachers (`build_logprob_teacher`, `mentor.teachers.logprobs`): the top-k log-probs of given
tokens, from `openai:MODEL@BASE_URL` (vLLM's prompt_logprobs, or echo with logprobs) or in process.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from mentor.errors import MentorError
from mentor.teachers.base import (
    Completion,
    GenerationParams,
    Teacher,
    TeacherError,
    TeacherStats,
)
from mentor.teachers.cache import CACHE_FILENAME, TeacherCache, cache_key
from mentor.teachers.hf_local import ROUTES as HF_ROUTES
from mentor.teachers.hf_local import HFTeacher
from mentor.teachers.logprobs import LogprobTeacher, TokenLogprobs, build_logprob_teacher
from mentor.teachers.openai_compat import DEFAULT_TIMEOUT, OpenAITeacher, RetryPolicy, parse_spec
from mentor.teachers.openai_compat import ROUTES as OPENAI_ROUTES
from mentor.teachers.recorded import RecordedTeacher

__all__ = [
    "CACHE_FILENAME",
    "Completion",
    "GenerationParams",
    "HFTeacher",
    "LogprobTeacher",
    "OpenAITeacher",
    "RecordedTeacher",
    "RetryPolicy",
    "Teacher",
    "TeacherCache",
    "TeacherError",
    "TeacherStats",
    "TokenLogprobs",
    "build_logprob_teacher",
    "build_teacher",
    "cache_key",
    "default_cache_path",
]

SPEC_HELP = (
    "openai:MODEL@BASE_URL, openai-completions:MODEL@BASE_URL, hf:MODEL_REF, hf-completions:MODEL_REF, "
    "recorded:FILE.jsonl, recorded:field=NAME"
)


def default_cache_path(output_dir: str | Path | None = None) -> Path:
    """`<output_dir>/teacher_cache.sqlite`, else the one under the mentor cache root ($MENTOR_HOME)."""
    if output_dir is not None:
        return Path(output_dir) / CACHE_FILENAME
    from mentor.models import cache_root  # imported late: it pulls in torch

    return cache_root() / CACHE_FILENAME


def build_teacher(
    spec: str,
    cache_path: str | Path | None = None,
    concurrency: int = 8,
    api_key_env: str = "OPENAI_API_KEY",
    *,
    output_dir: str | Path | None = None,
    use_cache: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    retry: RetryPolicy | None = None,
    batch_size: int = 8,
    rows: Iterable[Mapping] | None = None,
    progress: bool | None = None,
    adaptive: bool = True,
    stream: bool = True,
) -> Teacher:
    """The teacher a spec string names, with its cache at `cache_path` (default: see
    `default_cache_path`). `rows` feeds `recorded:field=NAME`; recorded teachers use no cache.
    For a server: at most `concurrency` requests in flight, fewer while it queues them (exactly
    `concurrency` with `adaptive=False`); see `OpenAITeacher` for `timeout` and `stream`."""
    scheme, sep, rest = spec.partition(":")
    if sep and not rest and scheme in ("recorded", *HF_ROUTES, *OPENAI_ROUTES):
        raise MentorError(f"teacher spec {spec!r} names no model; write one of: {SPEC_HELP}")
    if not sep or not rest:
        raise MentorError(
            f"teacher spec {spec!r} has no kind; write one of: {SPEC_HELP} "
            f"(for a local model try 'hf:{spec}', for a server 'openai:{spec}@http://localhost:8000/v1')"
        )
    if scheme == "recorded":
        if rest.startswith("field="):
            field = rest.removeprefix("field=")
            if rows is None:
                raise MentorError(
                    f"teacher {spec!r} reads completions from field '{field}' of the dataset rows, but no rows "
                    f"were given; pass rows= (or use RecordedTeacher.from_rows)"
                )
            return RecordedTeacher.from_rows(rows, field, progress=progress)
        return RecordedTeacher.from_file(rest, progress=progress)

    def cache() -> TeacherCache | None:
        return TeacherCache(cache_path or default_cache_path(output_dir)) if use_cache else None

    if scheme in OPENAI_ROUTES:
        route, model, base_url = parse_spec(spec)  # before opening the cache: a bad spec opens nothing
        return OpenAITeacher(
            model,
            base_url,
            route=route,
            cache=cache(),
            concurrency=concurrency,
            api_key_env=api_key_env,
            timeout=timeout,
            retry=retry,
            progress=progress,
            adaptive=adaptive,
            stream=stream,
        )
    if scheme in HF_ROUTES:
        return HFTeacher(rest, chat=HF_ROUTES[scheme], cache=cache(), batch_size=batch_size, progress=progress)
    raise MentorError(f"unknown teacher kind {scheme!r} in {spec!r}; write one of: {SPEC_HELP}")
