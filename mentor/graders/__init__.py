"""Graders: one definition, in OpenAI's grader shapes, that scores answers for evaluation and
gives reinforcement fine-tuning its rewards.

    from mentor.graders import GraderSpec, parse_grader, build_grader, GraderError
    spec = parse_grader(dict_or_json, where="grader.json")   # MentorError naming the field that is wrong
    with build_grader(spec) as grader:
        result = grader.grade({"output_text": "Paris"}, {"answer": "Paris"})   # GradeResult
        results = grader.grade_many(samples, items)                            # batched; never raises

Types: string_check, text_similarity, python (sandboxed), score_model (an LLM judge on any
OpenAI-compatible server), multi (a formula over named graders), and task_metric (mentor's task
metrics). Modules: `spec` (the definitions, `parse_grader`, settings), `templates`, `formula`,
`similarity`, `sandbox` (+ `sandbox_child`, the worker), `judge`, `grade` (the graders).
"""

from __future__ import annotations

from mentor.graders.grade import (
    ERROR_KINDS,
    Grader,
    GraderError,
    GradeResult,
    Summary,
    build_grader,
    summarize,
)
from mentor.graders.spec import (
    GRADER_TYPES,
    GraderSettings,
    GraderSpec,
    MultiGrader,
    PythonGrader,
    ScoreModelGrader,
    StringCheckGrader,
    TaskMetricGrader,
    TextSimilarityGrader,
    parse_grader,
)

__all__ = [
    "ERROR_KINDS",
    "GRADER_TYPES",
    "GradeResult",
    "Grader",
    "GraderError",
    "GraderSettings",
    "GraderSpec",
    "MultiGrader",
    "PythonGrader",
    "ScoreModelGrader",
    "StringCheckGrader",
    "Summary",
    "TaskMetricGrader",
    "TextSimilarityGrader",
    "build_grader",
    "parse_grader",
    "summarize",
]
