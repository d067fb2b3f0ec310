"""Graders that grade: one class per grader type, built from its definition by `build_grader`.

`grade_many(samples, items)` is the batched path RL rewards take (a python grader's worker grades
the whole batch, a judge is asked about all of it concurrently); `grade` is one sample. Neither
raises for what a grader or a sample does: a sample that cannot be graded (a template naming a
missing field, a python grader that raised or timed out, a judge that failed or said no number)
scores 0 and says why in `errors`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mentor.errors import MentorError
from mentor.graders import templates
from mentor.graders.formula import Formula, FormulaError
from mentor.graders.spec import (
    GraderSettings,
    GraderSpec,
    MultiGrader,
    PythonGrader,
    ScoreModelGrader,
    StringCheckGrader,
    TaskMetricGrader,
    TextSimilarityGrader,
    judge_endpoint,
)

log = logging.getLogger("mentor")

# OpenAI's names for what went wrong (metadata.errors of /v1/fine_tuning/alpha/graders/run)
ERROR_KINDS = ("formula_parse_error", "invalid_variable_error", "model_grader_parse_error",
               "model_grader_refusal_error", "model_grader_server_error", "other_error", "python_grader_runtime_error",
               "python_grader_server_error", "sample_parse_error", "truncated_observation_error",
               "unresponsive_reward_error")


class GraderError(MentorError):
    """A sample a grader could not grade; `kind` is one of ERROR_KINDS."""

    def __init__(self, message: str, kind: str = "other_error"):
        super().__init__(message)
        self.kind = kind


@dataclass
class GradeResult:
    """A sample's grade: `reward` (0 when it could not be graded, `errors` saying why), the named
    sub-graders' rewards of a multi grader, and what the API reports beside them."""

    reward: float
    errors: list[str] = field(default_factory=list)
    sub_rewards: dict[str, float] = field(default_factory=dict)
    error_kinds: set[str] = field(default_factory=set)
    passed: bool | None = None  # reward >= pass_threshold, where the grader has one
    token_usage: dict[str, int] = field(default_factory=dict)  # judge tokens by model
    details: dict[str, str] = field(default_factory=dict)  # error details by kind, for the API

    @classmethod
    def failed(cls, message: str, kind: str = "other_error") -> GradeResult:
        return cls(0.0, [message], error_kinds={kind}, details={kind: message})


class Grader:
    """A grader built from its definition; a context manager (`close` stops worker processes)."""

    def __init__(self, spec: GraderSpec):
        self.spec = spec

    @property
    def name(self) -> str:
        return self.spec.name

    def grade(self, sample: dict | str, item: dict) -> GradeResult:
        return self.grade_many([sample], [item])[0]

    def grade_many(self, samples: Sequence[dict | str], items: Sequence[dict]) -> list[GradeResult]:
        if len(samples) != len(items):
            raise ValueError(f"{len(samples)} samples but {len(items)} items")
        contexts: list[dict | GradeResult] = []
        for sample, item in zip(samples, items):
            try:
                contexts.append({"sample": templates.sample_context(sample), "item": item})
            except templates.TemplateError as err:
                contexts.append(GradeResult.failed(str(err), err.kind))
        todo = [i for i, c in enumerate(contexts) if isinstance(c, dict)]
        try:
            graded = self._grade_batch([contexts[i] for i in todo]) if todo else []
        except Exception as err:  # noqa: BLE001 - a grader's own fault must not stop the caller
            log.warning("grader %s failed on a batch of %d: %s", self.name, len(todo), err, exc_info=True)
            graded = [GradeResult.failed(f"{type(err).__name__}: {err}") for _ in todo]
        results: list[Any] = list(contexts)
        for i, result in zip(todo, graded):
            results[i] = result
        threshold = getattr(self.spec, "pass_threshold", None)
        for result in results:
            if threshold is not None:
                result.passed = result.reward >= threshold
        return results

    def _grade_batch(self, contexts: list[dict]) -> list[GradeResult]:
        """Default: one context at a time through `_grade_one`."""
        out = []
        for context in contexts:
            try:
                out.append(GradeResult(self._grade_one(context)))
            except templates.TemplateError as err:
                out.append(GradeResult.failed(str(err), err.kind))
            except GraderError as err:
                out.append(GradeResult.failed(str(err), err.kind))
        return out

    def _grade_one(self, context: dict) -> float:
        raise NotImplementedError

    def close(self) -> None:
        """Stop what the grader holds (worker processes, judge connections)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class StringCheck(Grader):
    spec: StringCheckGrader

    def _grade_one(self, context: dict) -> float:
        from mentor.graders.similarity import string_check

        return string_check(templates.render(self.spec.input, context), templates.render(self.spec.reference, context),
                            self.spec.operation)


class TextSimilarity(Grader):
    spec: TextSimilarityGrader

    def _grade_one(self, context: dict) -> float:
        from mentor.graders.similarity import similarity

        return similarity(templates.render(self.spec.input, context), templates.render(self.spec.reference, context),
                          self.spec.evaluation_metric)


class TaskMetric(Grader):
    """mentor's task metric for one answer: the answer parsed as evaluation parses it (a closing
    answer statement, else the whole text as a direct answer), scored by `mentor.tasks.metrics`."""

    spec: TaskMetricGrader

    def _grade_one(self, context: dict) -> float:
        from mentor.tasks.answers import parse_completion
        from mentor.tasks.labels import normalize_answer
        from mentor.tasks.metrics import score

        spec = self.spec
        text = templates.render(spec.input, context)
        gold = templates.render(spec.reference, context)
        choices = None
        if spec.choices:
            choices = templates.resolve(spec.choices, context)
            if not isinstance(choices, list):
                raise GraderError(f"choices {spec.choices!r} is not a list of options", "invalid_variable_error")
            choices = [str(c) for c in choices]
        parsed = parse_completion(text, spec.task, choices=choices, labels=spec.labels)
        pred = parsed.label if parsed.ok else normalize_answer(text.strip(), spec.task, choices, spec.labels)[0]
        metrics = score([pred], [gold], spec.task, choices=[choices] if spec.task == "choice" else None,
                        rel_tol=spec.rel_tol, labels=spec.labels)
        return float(metrics["f1"] if spec.task == "extract" else metrics["accuracy"])


class Python(Grader):
    """grade(sample, item) in a sandboxed worker process, started at the first batch and kept."""

    spec: PythonGrader

    def __init__(self, spec: PythonGrader, settings: GraderSettings):
        super().__init__(spec)
        from mentor.graders.sandbox import SandboxWorker

        self.worker = SandboxWorker(spec.source, cpu_seconds=settings.python_cpu_seconds,
                                    wall_seconds=settings.python_wall_seconds, memory_mb=settings.python_memory_mb,
                                    output_bytes=settings.python_output_bytes)

    def _grade_batch(self, contexts: list[dict]) -> list[GradeResult]:
        outcomes = self.worker.grade_many([(c["sample"], c["item"]) for c in contexts])
        return [GradeResult(o.score) if o.error is None else GradeResult.failed(o.error, o.kind or "other_error")
                for o in outcomes]

    def close(self) -> None:
        self.worker.close()


class ScoreModel(Grader):
    """The judge asked about every sample of a batch at once (concurrently, cached, retried)."""

    spec: ScoreModelGrader

    def __init__(self, spec: ScoreModelGrader, settings: GraderSettings):
        super().__init__(spec)
        self.settings = settings
        self.model, self.base_url = judge_endpoint(spec.model, settings)
        self._teacher = None

    def _judge(self):
        if self._teacher is None:
            from mentor.graders.judge import build_judge

            p = self.spec.sampling_params
            extra = {"seed": p.seed, "reasoning_effort": p.reasoning_effort} if p else {}
            self._teacher = build_judge(self.model, self.base_url, extra, self.settings)
        return self._teacher

    def _params(self):
        from mentor.teachers import GenerationParams

        p = self.spec.sampling_params
        return GenerationParams(max_new_tokens=(p.max_completions_tokens if p and p.max_completions_tokens else 1024),
                                temperature=p.temperature if p and p.temperature is not None else 0.0,
                                top_p=p.top_p if p and p.top_p is not None else 1.0)

    def _grade_batch(self, contexts: list[dict]) -> list[GradeResult]:
        from mentor.graders.judge import parse_score
        from mentor.teachers import TeacherError

        results: list[GradeResult | None] = [None] * len(contexts)
        prompts: dict[int, str] = {}
        for i, context in enumerate(contexts):
            try:
                messages = [{"role": m.role, "content": templates.render(m.text(), context)} for m in self.spec.input]
            except templates.TemplateError as err:
                results[i] = GradeResult.failed(str(err), err.kind)
                continue
            prompts[i] = json.dumps(messages, ensure_ascii=False)
        answers: dict[str, Any] = {}
        failure = None
        if prompts:
            teacher = self._judge()
            unique = list(dict.fromkeys(prompts.values()))
            try:
                answers = dict(zip(unique, teacher.complete(unique, self._params())))
            except TeacherError as err:  # some answered: those are kept (and cached)
                answers = {p: c[0] for p, c in err.partial.items() if c}
                failure = str(err)
            except MentorError as err:  # a wrong key, URL or model: nothing answered
                failure = str(err)
        low, high = self.spec.bounds
        for i, prompt in prompts.items():
            completion = answers.get(prompt)
            if completion is None:
                results[i] = GradeResult.failed(f"the judge gave no answer: {failure}", "model_grader_server_error")
                continue
            usage = {self.model: (completion.tokens_in or 0) + (completion.tokens_out or 0)}
            value = parse_score(completion.text)
            if value is None:
                result = GradeResult.failed(f"no score in the judge's reply {completion.text[:200]!r}",
                                            "model_grader_parse_error")
            elif not low <= value <= high:
                result = GradeResult.failed(f"the judge's score {value:g} is outside the range [{low:g}, {high:g}]",
                                            "model_grader_parse_error")
            else:
                result = GradeResult(value)
            result.token_usage = usage
            results[i] = result
        return [r if r is not None else GradeResult.failed("not graded") for r in results]

    def close(self) -> None:
        if self._teacher is not None:
            self._teacher.close()
            self._teacher = None


class Multi(Grader):
    """The named graders on the whole batch, then the formula per sample over their rewards."""

    spec: MultiGrader

    def __init__(self, spec: MultiGrader, settings: GraderSettings):
        super().__init__(spec)
        self.formula = Formula(spec.calculate_output)
        self.graders = {key: build_grader(g, settings) for key, g in spec.graders.items()}

    def _grade_batch(self, contexts: list[dict]) -> list[GradeResult]:
        samples = [c["sample"] for c in contexts]
        items = [c["item"] for c in contexts]
        by_name = {key: g.grade_many(samples, items) for key, g in self.graders.items()}
        out = []
        for i in range(len(contexts)):
            subs = {key: by_name[key][i] for key in self.graders}
            result = GradeResult(0.0, sub_rewards={key: r.reward for key, r in subs.items()})
            for key, sub in subs.items():  # a sub-grader that failed counts as 0 in the formula, and is said
                result.errors += [f"{key}: {e}" for e in sub.errors]
                result.error_kinds |= sub.error_kinds
                result.details.update({k: f"{key}: {v}" for k, v in sub.details.items()})
                for model, tokens in sub.token_usage.items():
                    result.token_usage[model] = result.token_usage.get(model, 0) + tokens
            try:
                result.reward = self.formula.evaluate(result.sub_rewards)
            except FormulaError as err:
                result.reward = 0.0
                result.errors.append(str(err))
                result.error_kinds.add("formula_parse_error")
            out.append(result)
        return out

    def close(self) -> None:
        for grader in self.graders.values():
            grader.close()


def build_grader(spec: GraderSpec | dict | str, settings: GraderSettings | None = None) -> Grader:
    """The grader a definition describes (a dict or JSON text is parsed first)."""
    from mentor.graders.spec import parse_grader

    settings = settings or GraderSettings()
    if isinstance(spec, (dict, str, bytes)):
        spec = parse_grader(spec, settings=settings)
    if isinstance(spec, StringCheckGrader):
        return StringCheck(spec)
    if isinstance(spec, TextSimilarityGrader):
        return TextSimilarity(spec)
    if isinstance(spec, TaskMetricGrader):
        return TaskMetric(spec)
    if isinstance(spec, PythonGrader):
        return Python(spec, settings)
    if isinstance(spec, ScoreModelGrader):
        return ScoreModel(spec, settings)
    if isinstance(spec, MultiGrader):
        return Multi(spec, settings)
    raise MentorError(f"no grader for {type(spec).__name__}")


@dataclass
class Summary:
    """What a run of a grader over a data set comes to."""

    n: int
    reward_mean: float
    errors: int
    error_kinds: dict[str, int]
    first_error: str | None
    pass_rate: float | None

    def line(self) -> str:
        text = f"{self.n} graded: mean reward {self.reward_mean:.4f}, {self.errors} with errors"
        if self.pass_rate is not None:
            text += f", {self.pass_rate:.1%} passed"
        if self.first_error:
            text += f" (first: {self.first_error})"
        return text


def summarize(results: Sequence[GradeResult]) -> Summary:
    n = len(results)
    kinds: dict[str, int] = {}
    for r in results:
        for k in r.error_kinds:
            kinds[k] = kinds.get(k, 0) + 1
    passes = [r.passed for r in results if r.passed is not None]
    first = next((r.errors[0] for r in results if r.errors), None)
    return Summary(n, sum(r.reward for r in results) / n if n else 0.0, sum(bool(r.errors) for r in results), kinds,
                   first, sum(passes) / len(passes) if passes else None)
