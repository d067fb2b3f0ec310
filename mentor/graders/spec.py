"""The grader definitions: OpenAI's grader shapes field for field (the `openai` package's
`types/graders`), plus mentor's task metrics, as pydantic models over one discriminated union on
`type`. This module owns them; `parse_grader` is the one way in from JSON, and it refuses a bad
grader naming the field that is wrong (a python source that does not compile, a template that
names no value, a judge URL not allowed, a formula naming no grader).
"""

from __future__ import annotations

import ast
import json
import logging
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mentor.errors import MentorError
from mentor.graders import templates
from mentor.graders.formula import Formula
from mentor.tasks import TaskName

log = logging.getLogger("mentor")

MAX_SOURCE_BYTES = 256 * 1024  # OpenAI's limit on a python grader's source


class GraderSettings(BaseSettings):
    """How graders run; each is also an environment variable MENTOR_GRADERS_<NAME> (lists as JSON)."""

    model_config = SettingsConfigDict(env_prefix="MENTOR_GRADERS_", extra="forbid")

    allowed_judge_urls: list[str] = Field(default_factory=list, description="base URLs of OpenAI-compatible servers "
                                          "a score_model grader may name (MODEL@URL) and send answers to, loopback "
                                          "too only when listed; $OPENAI_API_KEY goes to them. Under mentor server: "
                                          "its --allowed-teacher-urls")
    judge_base_url: str | None = Field(default=None, description="the judge server of a score_model whose model names none "
                                       "(MODEL without @URL); default $OPENAI_BASE_URL")
    judge_cache: str | None = Field(default=None, description="SQLite file of judge answers (default: the teacher cache "
                                    "under $MENTOR_HOME); 'off' for none")
    judge_concurrency: int = Field(default=8, ge=1, description="judge requests in flight at most (fewer while the server "
                                   "queues them)")
    judge_timeout: float = Field(default=120.0, gt=0, description="seconds of judge server silence before a retry")
    judge_attempts: int = Field(default=4, ge=1, description="tries per judge request")
    python_cpu_seconds: float = Field(default=10.0, gt=0, description="CPU time a python grader may use per sample")
    python_wall_seconds: float = Field(default=20.0, gt=0, description="seconds a python grader may take per sample")
    python_memory_mb: int = Field(default=2048, ge=64, description="address space of a python grader's process")
    python_output_bytes: int = Field(default=64 * 1024, ge=1024, description="what a python grader may print per sample")


class _Grader(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=256, description="the grader's name (a multi grader's formula uses "
                                                                "the keys of its `graders`)")

    def templates(self) -> list[tuple[str, str]]:
        """(field, template) of every templated field."""
        return []


class StringCheckGrader(_Grader):
    """1 when `input` and `reference` compare as `operation` says, else 0: eq and ne exactly, like
    (reference contained in input) with case, ilike without."""

    type: Literal["string_check"]
    input: str = Field(description="the text checked; a template")
    reference: str = Field(description="the text it is checked against; a template")
    operation: Literal["eq", "ne", "like", "ilike"]

    def templates(self):
        return [("input", self.input), ("reference", self.reference)]


SIMILARITY_METRICS = ("cosine", "fuzzy_match", "bleu", "gleu", "meteor", "rouge_1", "rouge_2", "rouge_3", "rouge_4",
                      "rouge_5", "rouge_l")


class TextSimilarityGrader(_Grader):
    """How close `input` is to `reference`, 0 to 1, by `evaluation_metric`."""

    type: Literal["text_similarity"]
    input: str = Field(description="the text graded; a template")
    reference: str = Field(description="the text it is graded against; a template")
    evaluation_metric: Literal["cosine", "fuzzy_match", "bleu", "gleu", "meteor", "rouge_1", "rouge_2", "rouge_3",
                               "rouge_4", "rouge_5", "rouge_l"]
    pass_threshold: float | None = Field(None, description="score from which a sample passes (evals' shape); the "
                                         "reward is the score itself")

    @field_validator("evaluation_metric")
    @classmethod
    def _available(cls, metric: str) -> str:
        if metric == "cosine":
            raise ValueError("cosine compares embeddings, and mentor's graders have no embedding model; use "
                             "rouge_l, bleu, gleu or fuzzy_match")
        if metric == "meteor":
            from mentor.graders.similarity import has_wordnet

            if not has_wordnet():
                raise ValueError("meteor needs NLTK's WordNet data, which is not installed here "
                                 "(python -m nltk.downloader wordnet); use rouge_l, bleu, gleu or fuzzy_match")
        return metric

    def templates(self):
        return [("input", self.input), ("reference", self.reference)]


class PythonGrader(_Grader):
    """`source` defines `grade(sample, item) -> float`, run in a sandboxed worker process."""

    type: Literal["python"]
    source: str = Field(description="Python source defining grade(sample: dict, item: dict) -> float")
    image_tag: str | None = Field(None, description="OpenAI's runtime image; accepted and not used (the worker "
                                  "runs mentor's own Python)")
    pass_threshold: float | None = Field(None, description="score from which a sample passes (evals' shape)")

    @field_validator("source")
    @classmethod
    def _compiles(cls, source: str) -> str:
        if len(source.encode("utf-8")) > MAX_SOURCE_BYTES:
            raise ValueError(f"the source is larger than {MAX_SOURCE_BYTES // 1024} KB")
        try:
            tree = compile(source, "<grader>", "exec", flags=ast.PyCF_ONLY_AST, dont_inherit=True)
            compile(tree, "<grader>", "exec", dont_inherit=True)
        except SyntaxError as err:
            raise ValueError(f"line {err.lineno}: {err.msg} (the source does not compile)") from None
        except ValueError as err:  # a null byte
            raise ValueError(f"the source does not compile: {err}") from None
        defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        assigned = {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
        imported = {(a.asname or a.name) for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
        if "grade" not in defined | assigned | imported:
            raise ValueError("the source defines no function grade(sample, item)")
        return source


class Message(BaseModel):
    """One message to the judge; `content` is a template, or a list of text parts."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[dict[str, Any] | str]
    type: Literal["message"] | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _one_part(cls, content):
        # OpenAI's Input.content may be a single part ({"type": "input_text", "text": ...}): a list of one
        if isinstance(content, dict):
            return [content]
        # said here, or the error would name a member of the union ('content.str')
        if not isinstance(content, (str, list)) or not all(isinstance(p, (str, dict)) for p in content):
            raise ValueError("write a text, a text part ({'type': 'input_text', 'text': ...}) or a list of them")
        return content

    def text(self) -> str:
        """The content as one text (text parts joined; an image or audio part is refused at validation)."""
        if isinstance(self.content, str):
            return self.content
        return "".join(p if isinstance(p, str) else p["text"] for p in self.content)

    @field_validator("content")
    @classmethod
    def _text_only(cls, content):
        for part in content if isinstance(content, list) else []:
            if isinstance(part, dict) and part.get("type") not in ("input_text", "output_text"):
                raise ValueError(f"a {part.get('type')!r} part: mentor's judges read text parts only "
                                 "(input_text, output_text)")
            if isinstance(part, dict) and not isinstance(part.get("text"), str):
                raise ValueError(f"a {part['type']!r} part without a 'text' string")
        return content


class SamplingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_completions_tokens: int | None = Field(None, ge=1, description="longest judge reply (default 1024)")
    reasoning_effort: str | None = Field(None, description="sent to the judge server as it is")
    seed: int | None = None
    temperature: float | None = Field(None, ge=0, description="default 0 (greedy)")
    top_p: float | None = Field(None, gt=0, le=1)


class ScoreModelGrader(_Grader):
    """An LLM judge: the `input` messages (templates) go to `model` on an OpenAI-compatible server,
    and the number in its reply, within `range`, is the score."""

    type: Literal["score_model"]
    model: str = Field(min_length=1, description="MODEL@http://HOST:PORT/v1 (or MODEL alone, on "
                                                 "MENTOR_GRADERS_JUDGE_BASE_URL or OPENAI_BASE_URL)")
    input: list[Message] = Field(min_length=1)
    range: list[float] | None = Field(None, description="[lowest, highest] score; default [0, 1]")
    sampling_params: SamplingParams | None = None
    pass_threshold: float | None = Field(None, description="score from which a sample passes (evals' shape)")

    @field_validator("range")
    @classmethod
    def _range(cls, value):
        if value is not None and (len(value) != 2 or not value[0] < value[1]):
            raise ValueError("write two numbers, the lowest score first, as in [0, 1]")
        return value

    @property
    def bounds(self) -> tuple[float, float]:
        return (self.range[0], self.range[1]) if self.range else (0.0, 1.0)

    def templates(self):
        return [(f"input.{i}.content", m.text()) for i, m in enumerate(self.input)]


class TaskMetricGrader(_Grader):
    """mentor's task metric as a reward: the answer read from `input` as `task` reads answers
    (math: a number, compared within a tolerance; choice: an option letter or text; nli, classify: a
    label; extract: token F1) against `reference`."""

    type: Literal["task_metric"]
    task: TaskName
    reference: str = Field(description="the gold answer; a template, as '{{item.answer}}'")
    input: str = Field("{{sample.output_text}}", description="the answer graded; a template")
    labels: list[str] | None = Field(None, description="the label set (classify; nli has a default)")
    choices: str | None = Field(None, description="a template naming the item's option list, as "
                                                  "'{{item.choices}}' (choice)")
    rel_tol: float = Field(1e-4, ge=0, description="math: relative tolerance of equal numbers")

    @model_validator(mode="after")
    def _labels(self):
        from mentor.tasks.labels import check_labels

        check_labels(self.task, self.labels)
        return self

    def templates(self):
        out = [("input", self.input), ("reference", self.reference)]
        return out + ([("choices", self.choices)] if self.choices else [])


SubGrader = Annotated[StringCheckGrader | TextSimilarityGrader | PythonGrader | ScoreModelGrader | TaskMetricGrader,
                      Field(discriminator="type")]


class MultiGrader(_Grader):
    """Named graders and a formula over their scores (`calculate_output`)."""

    type: Literal["multi"]
    graders: dict[str, SubGrader] = Field(description="the graders by the names the formula uses")
    calculate_output: str = Field(description="a formula over the graders' names: + - * / ^, min, max, abs, floor, "
                                              "ceil, exp, sqrt, log")

    @model_validator(mode="before")
    @classmethod
    def _one_grader(cls, data):
        # the openai package types `graders` as one grader object: it stands under its own name
        if isinstance(data, dict) and isinstance(data.get("graders"), dict) and "type" in data["graders"]:
            one = data["graders"]
            data = {**data, "graders": {str(one.get("name", "grader")): one}}
        return data

    @model_validator(mode="after")
    def _formula(self):
        if not self.graders:
            raise ValueError("graders: name at least one grader")
        try:
            formula = Formula(self.calculate_output)
        except MentorError as err:
            raise ValueError(f"calculate_output: {err}") from None
        unknown = sorted(formula.names - set(self.graders))
        if unknown:
            raise ValueError(f"calculate_output: {', '.join(map(repr, unknown))} is no grader's name; the graders "
                             f"are {', '.join(map(repr, self.graders))}")
        return self

    def templates(self):
        return [(f"graders.{key}.{field}", t) for key, g in self.graders.items() for field, t in g.templates()]


GraderSpec = Annotated[StringCheckGrader | TextSimilarityGrader | PythonGrader | ScoreModelGrader | MultiGrader
                       | TaskMetricGrader, Field(discriminator="type")]
_ADAPTER: TypeAdapter = TypeAdapter(GraderSpec)
GRADER_TYPES = ("string_check", "text_similarity", "python", "score_model", "multi", "task_metric")


def _drop_tags(loc: tuple) -> tuple:
    out, skip_next = [], loc[:1] and loc[0] in GRADER_TYPES
    for i, part in enumerate(loc):
        if i == 0 and skip_next:
            continue
        if part in GRADER_TYPES and i > 0 and out and out[-2:-1] == ["graders"]:
            continue
        out.append(str(part))
    return tuple(out)


def parse_grader(data: dict | str | bytes | BaseModel, where: str = "grader", item: dict | None = None,
                 settings: GraderSettings | None = None) -> GraderSpec:
    """A grader definition from its JSON (a dict, a JSON text, or a model already parsed), checked
    whole: MentorError '<where>: field 'X': what is wrong' otherwise. With an example `item` (a
    dataset line), templates naming a field it lacks are refused too."""
    if isinstance(data, BaseModel):
        data = data.model_dump(exclude_none=True)
    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except ValueError as err:
            raise MentorError(f"{where}: not JSON ({err})") from None
    if not isinstance(data, dict):
        raise MentorError(f"{where}: a grader is a JSON object with a 'type', not {type(data).__name__}")
    kind = data.get("type")
    if kind == "label_model":
        raise MentorError(f"{where}: field 'type': label_model graders are not supported; use a score_model grader")
    if kind not in GRADER_TYPES:
        raise MentorError(f"{where}: field 'type': {kind!r} is no grader type; the types are {', '.join(GRADER_TYPES)}")
    try:
        spec = _ADAPTER.validate_python(data)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(_drop_tags(tuple(first["loc"])))
        message = str(first["msg"]).removeprefix("Value error, ")
        named = re.match(r"([a-z_]+): ", message)
        if named and first["type"] == "value_error":  # a check of the whole grader that names its field
            field, message = ".".join(filter(None, (field, named[1]))), message[named.end():]
        field = field or "type"
        if first["type"] == "extra_forbidden":
            message = "no such field"
        raise MentorError(f"{where}: field '{field}': {message}") from None
    check(spec, where, item=item, settings=settings)
    return spec


def check(spec: GraderSpec, where: str, item: dict | None = None, settings: GraderSettings | None = None) -> None:
    """What a model's validation cannot see alone: template syntax, the judge URL, and the example item."""
    for field, template in spec.templates():
        try:
            templates.references(template)
        except MentorError as err:
            raise MentorError(f"{where}: field '{field}': {err}") from None
    settings = settings or GraderSettings()
    judges = [(f"graders.{k}.model", g) for k, g in spec.graders.items()] if isinstance(spec, MultiGrader) else [
        ("model", spec)]
    for field, grader in judges:
        if isinstance(grader, ScoreModelGrader):
            try:
                judge_endpoint(grader.model, settings)
            except MentorError as err:
                raise MentorError(f"{where}: field '{field}': {err}") from None
    if item is not None:
        templates.check_item(iter(spec.templates()), item, where)


def judge_endpoint(model: str, settings: GraderSettings) -> tuple[str, str]:
    """(model, base URL) of a score_model's `model`; MentorError when it names no server, or a server
    that is not one of `settings.allowed_judge_urls` (the rule teachers follow: loopback only when
    listed). A MODEL alone goes to the server whoever runs mentor chose (MENTOR_GRADERS_JUDGE_BASE_URL or
    OPENAI_BASE_URL), not checked."""
    import os

    from mentor.teachers.allowed import check_allowed

    name, at, url = model.removeprefix("openai:").rpartition("@")
    named = bool(at) and url.startswith(("http://", "https://"))
    if not named:
        name, url = model.removeprefix("openai:"), settings.judge_base_url or os.environ.get("OPENAI_BASE_URL")
        if not url:
            raise MentorError(f"{model!r} names no judge server; write {model}@http://HOST:PORT/v1 (or set "
                              "MENTOR_GRADERS_JUDGE_BASE_URL)")
    if not name:
        raise MentorError(f"{model!r} names no model; write MODEL@{url}")
    if not named:
        return name, url.rstrip("/")
    return name, check_allowed(url, settings.allowed_judge_urls, "the judge server",
                               "List it in MENTOR_GRADERS_ALLOWED_JUDGE_URLS (a JSON list), or under mentor server in "
                               "--allowed-teacher-urls.")
