"""What every teacher shares: generation parameters, completions, stats, and the cached `complete`.

Teacher calls are slow and cost money, so `Teacher.complete` is written once here: it answers
what it can from the cache, asks the concrete teacher only for the prompts still missing (each
distinct prompt once), commits every answer the moment it arrives, and reports failures only
after everything that could be answered has been saved.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from mentor.errors import MentorError
from mentor.teachers.cache import TeacherCache
from mentor.teachers.completion import Completion, GenerationParams

__all__ = ["Completion", "GenerationParams", "OnAnswer", "Teacher", "TeacherError", "TeacherStats"]


@dataclass
class TeacherStats:
    """What a teacher cost so far; `calls` counts requests actually sent (retries included),
    `timeouts` those given up on for the server's silence."""

    calls: int = 0
    cache_hits: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    failures: int = 0
    retries: int = 0
    timeouts: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int | None) -> None:
        with self._lock:
            for name, value in counts.items():
                if value:
                    setattr(self, name, getattr(self, name) + value)

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            names = ("calls", "cache_hits", "tokens_in", "tokens_out", "retries", "timeouts", "failures")
            return {k: getattr(self, k) for k in names}

    def summary(self) -> str:
        return (
            f"{self.calls} calls, {self.cache_hits} cache hits, {self.tokens_in:,} tokens in, "
            f"{self.tokens_out:,} tokens out, {self.retries} retries, {self.timeouts} timeouts, {self.failures} failures"
        )


class TeacherError(MentorError):
    """Some prompts could not be answered. Those that were are saved and kept in `partial`."""

    def __init__(self, message: str, partial: dict[str, list[Completion]] | None = None):
        super().__init__(message)
        self.partial = partial or {}


OnAnswer = Callable[[str, list[Completion]], None]


class Teacher(ABC):
    """Turns prompts into completions; subclasses implement `_answer` for prompts not yet cached."""

    identity: str  # stable name used in cache keys: "openai:MODEL@URL", "hf:REF", "recorded:FILE"

    def __init__(self, identity: str, cache: TeacherCache | None = None, progress: bool | None = None):
        self.identity = identity
        self.cache = cache
        self.progress = progress  # None: a bar only when attached to a terminal
        self.stats = TeacherStats()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.identity!r})"

    def status(self) -> dict[str, object]:
        """What the progress bar shows beside the counts (an HTTP teacher: its in-flight limit)."""
        return {}

    @abstractmethod
    def _answer(self, prompts: list[str], params: GenerationParams, on_answer: OnAnswer) -> dict[str, str]:
        """Answer distinct uncached prompts, calling `on_answer(prompt, completions)` as each arrives
        (it commits to the cache at once). Return {prompt: reason} for prompts that failed; raise
        MentorError for faults that doom the whole run (bad key, unknown model)."""

    def complete(self, prompts: list[str], params: GenerationParams | None = None) -> list[Completion]:
        """`params.n` completions per prompt, in prompt order (prompt i's at [i*n, (i+1)*n))."""
        params = params or GenerationParams()
        unique = list(dict.fromkeys(prompts))
        results: dict[str, list[Completion]] = {}
        if self.cache is not None and unique:
            results.update(self.cache.get_many(self.identity, unique, params))
            self.stats.add(cache_hits=len(results))
        missing = [p for p in unique if p not in results]
        cached = len(results)
        lock = threading.Lock()

        # with the right total and the cached ones as its start, tqdm shows the rate and the time
        # left of what is still asked
        with tqdm(
            total=len(unique),
            initial=cached,
            desc=f"teacher {self.identity}",
            unit="prompt",
            # None lets tqdm decide: a bar on a terminal, none in logs
            disable=(None if missing else True) if self.progress is None else not self.progress,
        ) as bar:
            bar.set_postfix(cached=cached, **self.status(), refresh=False)

            def on_answer(prompt: str, completions: list[Completion]) -> None:
                if self.cache is not None:
                    self.cache.put(self.identity, prompt, params, completions)
                with lock:
                    results[prompt] = completions
                self.stats.add(
                    tokens_in=completions[0].tokens_in if completions else 0,
                    tokens_out=sum(c.tokens_out or 0 for c in completions),
                )
                bar.set_postfix(cached=cached, **self.status(), refresh=False)
                bar.update(1)

            failed = self._answer(missing, params, on_answer) if missing else {}

        if failed:
            self.stats.add(failures=len(failed))
            first_prompt, first_reason = next(iter(failed.items()))
            where = f"saved in {self.cache.path}; " if self.cache is not None else ""
            raise TeacherError(
                f"teacher {self.identity}: {len(failed)} of {len(unique)} prompt(s) failed; "
                f"{len(results)} answered ({where}a rerun asks only for the missing ones). "
                f"First failure, for prompt {first_prompt[:80]!r}: {first_reason}",
                partial=results,
            )
        return [c for p in prompts for c in results[p]]

    def close(self) -> None:
        """Release what the teacher holds (the cache connection)."""
        if self.cache is not None:
            self.cache.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
