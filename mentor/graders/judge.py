"""score_model's judge: the teacher plumbing (`OpenAITeacher`: cache, adaptive concurrency,
retries, streaming) asked with a list of messages instead of one prompt, and the score read from
its reply."""

from __future__ import annotations

import json
import math
import re

from mentor.teachers import GenerationParams, OpenAITeacher, RetryPolicy, TeacherCache, default_cache_path

# "score: 0.8", "Rating = 7", "result: 3/5"-style labels that name the number meant
_LABELLED = re.compile(r"(?:score|rating|result|grade)\s*(?:is|of)?\s*[:=]?\s*\**\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.]*\d)")
_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$")


class JudgeTeacher(OpenAITeacher):
    """An OpenAI-compatible chat endpoint asked with whole conversations: each "prompt" is the JSON of
    the messages (so the cache keys on all of them), and `extra` (seed, reasoning_effort) goes into
    every request and into the cache key."""

    def __init__(self, model: str, base_url: str, extra: dict | None = None, **kwargs):
        super().__init__(model, base_url, route="chat", **kwargs)
        self.extra = {k: v for k, v in (extra or {}).items() if v is not None}
        if self.extra:  # a different seed or effort is a different answer: its own cache entries
            self.identity = f"{self.identity}#{json.dumps(self.extra, sort_keys=True)}"

    def _body(self, prompt: str, params: GenerationParams) -> dict:
        body = super()._body(prompt, params)
        body["messages"] = json.loads(prompt)
        body.update(self.extra)
        return body


def build_judge(model: str, base_url: str, extra: dict, settings) -> JudgeTeacher:
    cache = None
    if (settings.judge_cache or "").lower() != "off":
        cache = TeacherCache(settings.judge_cache or default_cache_path())
    return JudgeTeacher(model, base_url, extra=extra, cache=cache, concurrency=settings.judge_concurrency,
                        timeout=settings.judge_timeout, retry=RetryPolicy(max_attempts=settings.judge_attempts),
                        progress=False)


def parse_score(reply: str) -> float | None:
    """The score a judge's reply gives: a JSON object's "result" or "score" (OpenAI's score models
    answer {"steps": [...], "result": x}), a labelled number ("Score: 7"), or the reply's only number;
    None when none of these reads."""
    text = _FENCE.sub("", reply.strip())
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        for key in ("result", "score", "rating", "grade"):
            value = data.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        return None
    if isinstance(data, (int, float)) and not isinstance(data, bool):
        return float(data)
    labelled = _LABELLED.findall(text)
    if labelled:
        return float(labelled[-1])
    numbers = _NUMBER.findall(text)
    if len(numbers) == 1:
        value = float(numbers[0])
        return value if math.isfinite(value) else None
    return None
