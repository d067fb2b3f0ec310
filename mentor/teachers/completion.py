"""What a teacher is asked (generation parameters) and what it answers (completions): the two
things the cache keys and stores."""

from __future__ import annotations

import json
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field


class GenerationParams(BaseModel):
    """How to generate; all of it is part of the cache key, since each field changes the answer."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_new_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0.0)  # 0 means greedy
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: list[str] | None = None
    n: int = Field(1, ge=1)  # completions per prompt

    def __hash__(self) -> int:  # the stop list would make pydantic's frozen hash fail
        return hash(self.canonical_json())

    def canonical_json(self) -> str:
        """Same params, same string: sorted keys, no whitespace, an empty stop list equals none."""
        data = self.model_dump()
        data["stop"] = sorted(set(data["stop"])) if data["stop"] else None
        return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# finish reasons that say the text stops where generation was stopped, not where the answer ended
CUT_OFF = frozenset({"length", "content_filter"})


@dataclass(frozen=True)
class Completion:
    """One teacher answer. Token counts are None when the teacher did not report them;
    `finish_reason` is the server's ("stop", "length", ...), None when unknown."""

    text: str
    tokens_in: int | None = None
    tokens_out: int | None = None
    cached: bool = False
    finish_reason: str | None = None

    @property
    def cut_off(self) -> bool:
        """Whether generation stopped before the answer did (the token limit, a content filter)."""
        return self.finish_reason in CUT_OFF

    def to_json(self) -> dict:
        return {"text": self.text, "tokens_in": self.tokens_in, "tokens_out": self.tokens_out,
                "finish_reason": self.finish_reason}

    @classmethod
    def from_json(cls, data: dict, cached: bool) -> Completion:
        return cls(data["text"], data.get("tokens_in"), data.get("tokens_out"), cached, data.get("finish_reason"))
