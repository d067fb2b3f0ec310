"""/v1/fine_tuning/alpha/graders: run a grader on one sample, or validate a grader, answering as
OpenAI's endpoints do (the openai package's `GraderRunResponse` and `GraderValidateResponse`)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from mentor.errors import MentorError
from mentor.graders import ERROR_KINDS, GradeResult, GraderSettings, build_grader, parse_grader
from mentor.server.errors import bad
from mentor.server.settings import grader_settings

router = APIRouter()


class GraderRun(BaseModel):
    grader: dict[str, Any] = Field(description="the grader (OpenAI's shapes, or mentor's task_metric)")
    model_sample: str = Field(description="the answer graded: the sample's output_text (output_json when it is JSON)")
    item: Any = Field(None, description="the dataset line the grader's {{item.*}} templates read")


class GraderValidate(BaseModel):
    grader: dict[str, Any]


def _settings(request: Request) -> GraderSettings:
    """The server's rule for judges (its allowed_teacher_urls), as its jobs' graders have it."""
    return grader_settings(request.app.state.ctx.settings)


def _spec(grader: dict, settings: GraderSettings):
    try:
        return parse_grader(grader, where="grader", settings=settings)
    except MentorError as err:
        raise bad(str(err), "grader") from None


def _metadata_errors(result: GradeResult) -> dict:
    errors: dict[str, Any] = {kind: kind in result.error_kinds for kind in ERROR_KINDS}
    errors["model_grader_server_error_details"] = result.details.get("model_grader_server_error")
    errors["python_grader_runtime_error_details"] = result.details.get("python_grader_runtime_error")
    errors["python_grader_server_error_type"] = None
    if result.errors and not result.error_kinds:
        errors["other_error"] = True
    return errors


@router.post("/v1/fine_tuning/alpha/graders/run")
def run(request: Request, body: GraderRun) -> dict:
    """The grader's reward for `model_sample` against `item` (a sample it cannot grade scores 0, and
    `metadata.errors` says why, as OpenAI's does)."""
    settings = _settings(request)
    spec = _spec(body.grader, settings)
    item = body.item if body.item is not None else {}
    start = time.perf_counter()
    with build_grader(spec, settings) as grader:
        result = grader.grade({"output_text": body.model_sample}, item)
    tokens = sum(result.token_usage.values())
    return {
        "reward": result.reward,
        "metadata": {
            "name": spec.name,
            "type": spec.type,
            "errors": _metadata_errors(result),
            "execution_time": time.perf_counter() - start,
            "scores": dict(result.sub_rewards) if result.sub_rewards else {spec.name: result.reward},
            "token_usage": tokens if result.token_usage else None,
            "sampled_model_name": None,
        },
        "sub_rewards": result.sub_rewards,
        "model_grader_token_usage_per_model": result.token_usage,
    }


@router.post("/v1/fine_tuning/alpha/graders/validate")
def validate(request: Request, body: GraderValidate) -> dict:
    """The grader as it will be used, or a 400 naming the field that is wrong."""
    return {"grader": _spec(body.grader, _settings(request)).model_dump(exclude_none=True)}
