"""OpenAI's job requests mapped to mentor's kinds and fields (mentor.server.job_requests): n_epochs
as optimizer steps, the reinforcement hyperparameters under the reinforcement kind's names, the
method type a kind answers to."""

from __future__ import annotations

import pytest

from mentor.jobs import get_kind
from mentor.reinforce.config import generations_for
from mentor.server.errors import ApiError
from mentor.server.job_requests import _epochs_to_steps, _reinforcement_hyperparameters, openai_method


def steps(kind: str, lines: int, **fields) -> dict:
    _epochs_to_steps(fields, lines, get_kind(kind))
    return fields


def refused(call, *args, **kwargs) -> ApiError:
    with pytest.raises(ApiError) as info:
        call(*args, **kwargs)
    assert info.value.status == 400
    return info.value


def test_n_epochs_are_the_steps_that_read_the_file_that_many_times_rounded_up():
    assert steps("tune", 100, n_epochs=3, batch_size=8) == {"batch_size": 8, "train_steps": 38}  # 300 / 8 = 37.5
    assert steps("tune", 100, n_epochs=0.5, batch_size=10) == {"batch_size": 10, "train_steps": 5}
    assert steps("tune", 3, n_epochs=0.1, batch_size=8)["train_steps"] == 1  # at least one step
    default = get_kind("tune").config.model_fields["batch_size"].default
    assert steps("tune", 10 * default, n_epochs=2) == {"train_steps": 20}  # the kind's own batch size
    assert steps("reinforcement", 64, n_epochs=1, batch_size=32)["train_steps"] == 2
    assert steps("tune", 100, train_steps=7) == {"train_steps": 7}  # no n_epochs: the steps as given


@pytest.mark.parametrize("fields, param", [
    ({"n_epochs": 0}, "hyperparameters.n_epochs"),
    ({"n_epochs": "3"}, "hyperparameters.n_epochs"),
    ({"n_epochs": 1, "batch_size": -1}, "hyperparameters.batch_size"),
    ({"n_epochs": 1, "batch_size": 2.5}, "hyperparameters.batch_size"),
])
def test_a_bad_n_epochs_or_batch_size_is_refused_naming_it(fields, param):
    assert refused(steps, "tune", 100, **fields).param == param


def test_n_epochs_of_a_kind_without_steps_is_refused():
    error = refused(steps, "batch", 100, n_epochs=1, batch_size=4)
    assert "n_epochs does not apply to batch jobs" in str(error)


def test_reinforcement_hyperparameters_take_the_kinds_names():
    assert _reinforcement_hyperparameters({"eval_interval": 5, "eval_samples": 3, "batch_size": 8, "n_epochs": 2}) == \
        {"evaluation_interval": 5, "eval_samples": 3, "batch_size": 8, "n_epochs": 2}
    assert _reinforcement_hyperparameters({"compute_multiplier": 2}) == {"num_generations": generations_for(2)}
    assert _reinforcement_hyperparameters({"compute_multiplier": "auto", "reasoning_effort": "default"}) == {}
    assert _reinforcement_hyperparameters({"reasoning_effort": "auto"}) == {}


def test_compute_multiplier_is_answers_per_prompt_and_never_fewer_than_two():
    assert generations_for(1) == 4 and generations_for(2) == 8
    assert generations_for(0.01) == 2  # GRPO compares a prompt's answers: one alone teaches nothing


@pytest.mark.parametrize("hyper, param", [
    ({"reasoning_effort": "high"}, "reasoning_effort"),
    ({"compute_multiplier": 0}, "compute_multiplier"),
    ({"compute_multiplier": 65}, "compute_multiplier"),
    ({"compute_multiplier": True}, "compute_multiplier"),
    ({"compute_multiplier": "2"}, "compute_multiplier"),
])
def test_reinforcement_hyperparameters_mentor_cannot_honour_are_refused_naming_them(hyper, param):
    assert refused(_reinforcement_hyperparameters, hyper).param == f"method.reinforcement.hyperparameters.{param}"


def test_each_kind_answers_to_the_openai_method_that_creates_it():
    assert openai_method("tune") == "supervised" and openai_method("dpo") == "dpo"
    assert openai_method("reinforcement") == "reinforcement"
    assert openai_method("step-by-step") == "distillation" and openai_method("logit") == "distillation"
    assert openai_method("rlhf") is None and openai_method("batch") is None and openai_method("no-such-kind") is None


def test_a_pruned_model_is_resolved_by_the_rules_of_the_model_it_prunes(tmp_path):
    """`prune:REF:layers=...` names a model folder too: REF is held to the allowed folders and
    registered names like any model field (it once passed through as a hub id, so any folder on the
    server could be trained from)."""
    from types import SimpleNamespace

    from mentor.server.job_requests import Resolver

    allowed = tmp_path / "allowed"
    (allowed / "model").mkdir(parents=True)
    settings = SimpleNamespace(data_dir=tmp_path / "data", allowed_data_roots=[allowed.resolve()])
    resolver = Resolver(db=None, settings=settings)
    assert resolver.model("prune:tiny:llama:layers=0") == "prune:tiny:llama:layers=0"
    assert resolver.model(f"prune:{allowed / 'model'}:layers=0-1") == f"prune:{(allowed / 'model').resolve()}:layers=0-1"
    for outside in ("prune:/etc:layers=0", "prune:../x:layers=0", "prune:~/.cache:layers=0",
                    f"prune:prune:{tmp_path}:layers=0:layers=0"):
        assert refused(resolver.model, outside).code == "path_not_allowed", outside
    assert "is not prune:REF:layers=SPEC" in refused(resolver.model, "prune:tiny:llama").message
