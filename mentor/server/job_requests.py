"""Job requests in the shapes clients know, turned into one thing: a job kind and its validated
config. OpenAI's fine-tuning body (`model`, `training_file`, `hyperparameters`, `method` with
`supervised`, `dpo` and mentor's `distillation`) and the cloud's pipeline body (`parameterValues`)
both arrive here; every config field of the kind may also be given by its own name."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mentor.jobs import JobConfig, JobKind, family, get_kind, kinds
from mentor.jobs.config import validation_problems
from mentor.server.db import Database
from mentor.server.errors import bad
from mentor.server.uploads import FILE_ID, get_file

# chosen by the server, never by a client: they name files the server writes
SERVER_FIELDS = ("output", "teacher_cache", "teacher_logits_dir", "listed_models_only")
# models a job loads: a registered name, a hub id, or a folder inside the allowed roots
MODEL_FIELDS = ("model", "reward_model")
# OpenAI's method types -> the kind each creates, or the family (and its default) whose `method`
# setting picks one. A new kind reached through OpenAI's API is an entry here, its settings field in
# MethodSpec, and its hyperparameters echoed in shapes.method_of.
OPENAI_KINDS = {"supervised": "tune", "dpo": "dpo", "reinforcement": "reinforcement"}
# OpenAI's reinforcement hyperparameters -> the reinforcement kind's fields (n_epochs becomes steps;
# compute_multiplier scales the answers sampled per prompt)
REINFORCEMENT_NAMES = {"eval_interval": "evaluation_interval", "eval_samples": "eval_samples"}
OPENAI_FAMILIES = {"distillation": ("distill", "step-by-step")}


class MethodSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["supervised", "dpo", "reinforcement", "distillation"] = "supervised"
    supervised: dict[str, Any] | None = None
    dpo: dict[str, Any] | None = None
    reinforcement: dict[str, Any] | None = Field(default=None, description="OpenAI's: {grader, hyperparameters}")
    distillation: dict[str, Any] | None = Field(default=None, description="mentor's: {method, teacher, hyperparameters, ...}")


class CreateFineTuningJob(BaseModel):
    """POST /v1/fine_tuning/jobs, as OpenAI defines it (plus mentor's distillation method)."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=512)
    training_file: str = Field(max_length=64)
    validation_file: str | None = Field(None, max_length=64)
    hyperparameters: dict[str, Any] | None = None
    method: MethodSpec | None = None
    suffix: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9._-]*$")
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    metadata: dict[str, str] | None = None
    integrations: list[dict[str, Any]] | None = None


class RuntimeConfig(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    parameter_values: dict[str, Any] | None = Field(None, alias="parameterValues")


class CloudPipelineJob(BaseModel):
    """POST /v1/projects/P/locations/L/pipelineJobs: the cloud's tuning and distillation pipelines."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    display_name: str | None = Field(None, alias="displayName", max_length=256)
    runtime_config: RuntimeConfig | None = Field(None, alias="runtimeConfig")
    parameter_values: dict[str, Any] | None = Field(None, alias="parameterValues")

    def parameters(self) -> dict[str, Any]:
        values = dict(self.parameter_values or {})
        values.update((self.runtime_config.parameter_values if self.runtime_config else None) or {})
        return values


# the cloud's parameter names -> mentor's fields
CLOUD_NAMES = {"dataset_uri": "data", "evaluation_data_uri": "evaluation_data", "student_model_reference": "model",
               "teacher_model_reference": "teacher", "large_model_reference": "model", "model_reference": "model",
               "base_model": "model", "enable_early_stopping": "early_stopping",
               "enable_checkpoint_selection": "checkpoint_selection", "adapter_size": "adapter_size",
               "epoch_count": "n_epochs", "reward_grader": "grader"}
# a cloud body with a grader (`grader` or `reward_grader`) is a reinforcement job, as is one whose method says so
CLOUD_REINFORCEMENT = "reinforcement"
CLOUD_IGNORED = ("project", "location", "accelerator_type", "api_endpoint", "encryption_spec_key_name",
                 "service_account", "model_display_name", "tuned_model_display_name")


class Resolver:
    """Turns what a client names (file ids, paths, model names) into what a job reads, and refuses
    paths outside the allowed roots (no reading arbitrary files through a job)."""

    def __init__(self, db: Database, settings):
        self.db, self.settings = db, settings

    def data(self, value: Any, param: str) -> str:
        if not isinstance(value, str) or not value:
            raise bad(f"{param} must be an uploaded file id or a path", param)
        if FILE_ID.match(value):
            return get_file(self.db, value, param).path
        if value.startswith("file-"):
            raise bad(f"no file '{value[:80]}'", param, "file_not_found")
        path = Path(value.removeprefix("file://")).expanduser()
        try:
            real = path.resolve(strict=False)
        except (OSError, RuntimeError):
            raise bad(f"{param}: not a usable path", param) from None
        roots = [self.settings.files_dir.resolve(), *self.settings.allowed_data_roots]
        if not any(real == root or root in real.parents for root in roots):
            raise bad(f"{param}: {value!r} is outside the folders this server may read; upload the file (POST "
                      "/v1/files) or start the server with --allowed-data-roots", param, "path_not_allowed")
        if not real.is_file():
            raise bad(f"{param}: file not found: {value}", param, "file_not_found")
        return str(real)

    def teacher(self, value: Any) -> str:
        if not isinstance(value, str) or not value:
            raise bad("teacher must be a model reference or a teacher spec", "teacher")
        scheme, sep, rest = value.partition(":")
        if sep and scheme == "recorded":
            return value if rest.startswith("field=") else f"recorded:{self.data(rest, 'teacher')}"
        if sep and scheme in ("hf", "hf-chat", "hf-completions"):
            return f"{scheme}:{self.model(rest, 'teacher')}"
        if sep and scheme in ("openai", "openai-chat", "openai-completions"):
            return self.teacher_server(value)
        return f"hf:{self.model(value, 'teacher')}"  # a bare model reference is a local teacher

    def teacher_server(self, spec: str) -> str:
        """An OpenAI-compatible teacher, if its server is one the server's owner allowed: the worker
        sends it the server's API key and the job's data."""
        from mentor.errors import MentorError
        from mentor.teachers.allowed import is_allowed
        from mentor.teachers.openai_compat import parse_spec

        if "@" not in spec.partition(":")[2]:
            return spec  # OPENAI_BASE_URL: the server's owner chose it
        try:
            url = parse_spec(spec)[2]
        except MentorError as err:
            raise bad(str(err), "teacher") from None
        if not is_allowed(url, self.settings.allowed_teacher_urls):  # the rule judges follow too
            raise bad(f"teacher: {url!r} is not a teacher server this server may call (it would get the server's "
                      "API key); start the server with --allowed-teacher-urls", "teacher", "url_not_allowed")
        return spec

    def model(self, value: Any, param: str = "model") -> str:
        """A registered tuned model's name stands for its folder; a path must lie inside the allowed
        roots; anything else is a hub id or a built-in name."""
        from mentor.server import registry

        if not isinstance(value, str) or not value:
            raise bad(f"{param} must be a model name", param)
        if value.startswith("prune:"):  # the model pruned is resolved by the same rules (allowed folders, ft: names)
            from mentor.errors import MentorError
            from mentor.models.prune import PREFIX, parse

            try:
                inner, layers = parse(value)
            except MentorError as err:
                raise bad(str(err), param) from None
            return f"{PREFIX}{self.model(inner, param)}:layers={layers}"
        if value.startswith("ft:"):
            try:
                return registry.get_model(self.db, value).path
            except registry.UnknownModel:
                raise bad(f"no tuned model named '{value}'", param, "model_not_found") from None
        path = Path(value).expanduser()
        if value.startswith((".", "/", "~")) or ".." in path.parts or path.exists():
            return self.data_folder(value, param)  # a folder on this machine, even one spelt like a hub id
        return value

    def data_folder(self, value: str, param: str) -> str:
        real = Path(value).expanduser().resolve()
        roots = [self.settings.data_dir, *self.settings.allowed_data_roots]
        if not any(real == root or root in real.parents for root in roots):
            raise bad(f"{param}: {value!r} is outside the folders this server may read", param, "path_not_allowed")
        return str(real)


def validate_config(kind: JobKind, fields: dict[str, Any]) -> JobConfig:
    if "keep_checkpoints" in kind.config.model_fields:
        fields.setdefault("keep_checkpoints", True)  # each checkpoint can be promoted to a model of its own
    try:
        return kind.config(**fields)
    except ValidationError as err:
        problems = validation_problems(err)
        field, message = problems[0]
        raise bad("; ".join(f"{f}: {m}" for f, m in problems), field) from None


def resolve_fields(kind: JobKind, fields: dict[str, Any], resolver: Resolver,
                   grader_param: str = "grader") -> dict[str, Any]:
    for name in SERVER_FIELDS:
        if name in fields:
            raise bad(f"'{name}' is chosen by the server", name)
    out = dict(fields)
    for name in kind.config.input_fields:
        if out.get(name) is not None:
            out[name] = resolver.data(out[name], name)
    if out.get("teacher") is not None:
        # a white-box teacher is loaded with its weights, unless it is served (openai:MODEL@URL)
        served = isinstance(out["teacher"], str) and out["teacher"].partition(":")[0] in ("openai", "openai-chat",
                                                                                         "openai-completions")
        loaded = getattr(kind.config, "teacher_is_a_model", False) and not served
        out["teacher"] = resolver.model(out["teacher"], "teacher") if loaded else resolver.teacher(out["teacher"])
    for name in MODEL_FIELDS:
        if out.get(name) is not None:
            out[name] = resolver.model(out[name], name)
    if out.get("grader") is not None:  # inlined: the job never reads a grader file the client named again
        first = _first_row(out["data"], fields["data"]) if isinstance(out.get("data"), str) else None
        out["grader"] = _grader(out["grader"], resolver, grader_param, first)
    if kind.produces == "predictions":  # a batch: its lines name models through `models` only
        if out.get("models") is not None and not isinstance(out["models"], dict):
            raise bad("models must map the names the lines use to model references", "models")
        out["models"] = {k: resolver.model(v, f"models.{k}") for k, v in (out.get("models") or {}).items()}
        out["listed_models_only"] = True
    return out


def _epochs_to_steps(fields: dict[str, Any], lines: int, kind: JobKind) -> None:
    """OpenAI's n_epochs, as optimizer steps over this many examples."""
    epochs = fields.pop("n_epochs", None)
    if epochs is None:
        return
    if not isinstance(epochs, (int, float)) or epochs <= 0:
        raise bad("n_epochs must be a positive number", "hyperparameters.n_epochs")
    batch = fields.get("batch_size") or kind.config.model_fields["batch_size"].default
    if not isinstance(batch, int) or batch < 1:
        raise bad("batch_size must be a positive integer", "hyperparameters.batch_size")
    steps_field = "train_steps" if "train_steps" in kind.config.model_fields else None
    if steps_field is None:
        raise bad(f"n_epochs does not apply to {kind.name} jobs", "hyperparameters.n_epochs")
    fields[steps_field] = max(1, math.ceil(epochs * lines / batch))


def openai_method(kind_name: str) -> str | None:
    """The OpenAI method type a job of this kind was (or would be) created by; None: mentor's own kind."""
    for method, name in OPENAI_KINDS.items():
        if name == kind_name:
            return method
    kind = kinds().get(kind_name)
    for method, (family_name, _) in OPENAI_FAMILIES.items():
        if kind is not None and kind.family == family_name:
            return method
    return None


def from_openai(body: CreateFineTuningJob, resolver: Resolver, job_folder: Path) -> tuple[JobKind, JobConfig]:
    method = body.method or MethodSpec()
    spec = getattr(method, method.type) or {}
    if not isinstance(spec, dict):
        raise bad("method settings must be an object", f"method.{method.type}")
    spec = dict(spec)
    inner = spec.pop("hyperparameters", None) or {}
    if not isinstance(inner, dict):
        raise bad("hyperparameters must be an object", f"method.{method.type}.hyperparameters")
    hyper = {**(body.hyperparameters or {}), **inner}
    if method.type in OPENAI_KINDS:
        kind = get_kind(OPENAI_KINDS[method.type])
    else:
        family_name, default = OPENAI_FAMILIES[method.type]
        name = spec.pop("method", default)
        methods = family(family_name)
        if not isinstance(name, str) or name not in methods:
            raise bad(f"{method.type} method must be one of {', '.join(methods)}", f"method.{method.type}.method")
        kind = methods[name]
    if method.type == "reinforcement":
        hyper = _reinforcement_hyperparameters(hyper)
        if "grader" not in spec:
            raise bad("a reinforcement job needs a grader", "method.reinforcement.grader")
        hyper["grader"] = spec.pop("grader")  # checked with the other fields, against the training file
    if spec and method.type not in OPENAI_FAMILIES:  # a family's kinds take their own fields here
        raise bad(f"unknown settings in method.{method.type}: {', '.join(spec)}", f"method.{method.type}")
    fields = {k: v for k, v in {**spec, **hyper}.items() if v != "auto"}
    training = get_file(resolver.db, body.training_file, "training_file")
    fields["data"] = body.training_file
    if body.validation_file:
        fields["evaluation_data"] = body.validation_file
    if body.seed is not None:
        fields["seed"] = body.seed
    fields["model"] = body.model
    _epochs_to_steps(fields, training.lines, kind)
    fields = resolve_fields(kind, fields, resolver, grader_param=f"method.{method.type}.grader")
    return kind, validate_config(kind, {**fields, "output": str(job_folder)})


def _reinforcement_hyperparameters(hyper: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's reinforcement hyperparameters under the reinforcement kind's names."""
    from mentor.reinforce.config import generations_for

    hyper = {REINFORCEMENT_NAMES.get(k, k): v for k, v in hyper.items()}
    effort = hyper.pop("reasoning_effort", "default")
    if effort not in ("default", "auto"):
        raise bad(f"reasoning_effort {effort!r} sets how long OpenAI's reasoning models think; the open models mentor "
                  "tunes have no such setting: leave it out or give 'default'",
                  "method.reinforcement.hyperparameters.reasoning_effort")
    multiplier = hyper.pop("compute_multiplier", "auto")
    if multiplier != "auto":
        if isinstance(multiplier, bool) or not isinstance(multiplier, (int, float)) or not 0 < multiplier <= 64:
            raise bad("compute_multiplier must be a number above 0 (at most 64)",
                      "method.reinforcement.hyperparameters.compute_multiplier")
        hyper["num_generations"] = generations_for(multiplier)
    return hyper


def _first_row(path: str, named: Any) -> dict | None:
    """The first line of a data file (what the grader's templates are checked against): an upload is
    validated already, a path mentor's own API names is not, so a line that is no JSON is a 400 naming
    the file (`named`, as the client gave it) and the line."""
    with open(path, "rb") as f:  # closed at once: a server runs for weeks
        for number, line in enumerate(f, start=1):
            if line.strip():
                try:
                    row = json.loads(line.decode("utf-8-sig" if number == 1 else "utf-8"))
                except ValueError as err:  # UnicodeDecodeError is one too
                    raise bad(f"data: {str(named)[:200]!r} line {number}: not a JSON object ({str(err)[:120]})",
                              "data") from None
                return row if isinstance(row, dict) else None
    return None


def _grader(value: Any, resolver: Resolver, param: str, item: dict | None) -> dict[str, Any]:
    """A grader as the job will run it, refused now when it is wrong (the field named), when a template
    names a field the training file's lines lack, or when its judge is a server this one may not call."""
    from mentor.errors import MentorError
    from mentor.graders import parse_grader
    from mentor.server.settings import grader_settings

    if isinstance(value, str) and not value.lstrip().startswith("{"):  # an uploaded file, or one the server may read
        with open(resolver.data(value, param), "rb") as f:
            value = f.read().decode("utf-8", errors="replace")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as err:
            raise bad(f"the grader is not JSON ({err})", param) from None
    if not isinstance(value, dict):
        raise bad("a grader is a JSON object with a 'type'", param)
    try:
        parse_grader(value, where=param, item=item, settings=grader_settings(resolver.settings))
    except MentorError as err:
        raise bad(str(err), param) from None
    return value


def from_cloud(body: CloudPipelineJob, resolver: Resolver, job_folder: Path) -> tuple[JobKind, JobConfig, str | None]:
    """(kind, config, TensorBoard folder to link the job's logs into)."""
    values = body.parameters()
    if not values:
        raise bad("parameterValues (or runtimeConfig.parameterValues) is required", "parameterValues")
    fields: dict[str, Any] = {}
    for key, value in values.items():
        if key in CLOUD_IGNORED:
            continue
        fields[CLOUD_NAMES.get(key, key)] = value
    tensorboard = fields.pop("tensorboard_resource_id", None)
    method = fields.pop("distillation_method", None) or fields.pop("method", None)
    grader_param = next((k for k in ("grader", "reward_grader") if k in values), "grader")
    if "grader" in fields or method == CLOUD_REINFORCEMENT:
        if "teacher" in fields:
            raise bad("a reinforcement job (a body with a grader) learns from its grader, not from a teacher: "
                      "leave teacher_model_reference out", "teacher_model_reference")
        if method not in (None, CLOUD_REINFORCEMENT):
            raise bad(f"a body with a grader is a reinforcement job; method {str(method)[:40]!r} takes no grader",
                      grader_param)
        if fields.get("grader") is None:
            raise bad("a reinforcement job needs a grader (grader or reward_grader)", "grader")
        kind = get_kind("reinforcement")
    elif "teacher" in fields:
        kinds = family("distill")
        method = method or "step-by-step"
        if not isinstance(method, str) or method not in kinds:
            raise bad(f"method must be one of {', '.join(kinds)}", "method")
        kind = kinds[method]
    else:
        kind = get_kind("dpo" if method == "dpo" else "tune")
    lines = 0
    if isinstance(fields.get("data"), str):
        with open(resolver.data(fields["data"], "dataset_uri"), "rb") as data:  # closed at once: a server runs for weeks
            lines = sum(1 for line in data if line.strip())
    _epochs_to_steps(fields, lines, kind)
    fields = resolve_fields(kind, fields, resolver, grader_param=grader_param)
    if tensorboard is not None:
        tensorboard = resolver.data_folder(str(tensorboard), "tensorboard_resource_id")
    return kind, validate_config(kind, {**fields, "output": str(job_folder)}), tensorboard
