"""The batch-prediction job's parameters (OpenAI's batch API runs these jobs)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from mentor.jobs.config import JobConfig


class BatchConfig(JobConfig):
    """Answer every request line of a JSONL file ({custom_id, method, url, body}) as OpenAI's batch API does."""

    input_fields: ClassVar[tuple[str, ...]] = ("input",)

    input: str = Field(description="JSONL of requests: {custom_id, method: POST, url, body}")
    endpoint: Literal["/v1/chat/completions", "/v1/completions"] = Field(
        "/v1/chat/completions", description="the endpoint every line calls")
    models: dict[str, str] = Field(default_factory=dict, description="model names in the lines -> model references "
                                                                     "(a name not listed is a reference itself)")
    listed_models_only: bool = Field(False, description="answer only the models named in `models` (a line naming "
                                                        "another fails); the server sets it")
    batch_size: int = Field(16, ge=1, description="requests answered in one generate call")
    memory_mb: float | None = Field(None, gt=0, description="memory for the models and adapters the lines name")
