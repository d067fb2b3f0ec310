"""Names: job kinds in the kind registry (mentor.jobs.registry), and the server's model names
(mentor.server.registry: OpenAI's ft:BASE:SUFFIX:ID, the names a request may give, checkpoints)."""

from __future__ import annotations

import pytest

from mentor.errors import MentorError
from mentor.jobs import JobConfig, JobKind, family, kinds, produces, register_kind
from mentor.jobs.registry import _KINDS, get_kind
from mentor.server.registry import NAME_PATTERN, model_name
from mentor.server.services.models import CHECKPOINT


class _Config(JobConfig):
    pass


@pytest.fixture
def registered():
    """Kinds registered by a test are gone after it."""
    before = dict(_KINDS)
    yield
    _KINDS.clear()
    _KINDS.update(before)


def test_a_kind_says_what_it_produces_and_a_family_kind_names_its_method():
    with pytest.raises(ValueError, match="produces 'weights'; one of model, reward-model, predictions"):
        JobKind("k", _Config, "m:f", "s", produces="weights")
    with pytest.raises(ValueError, match="a family kind names its method"):
        JobKind("k", _Config, "m:f", "s", family="tune")
    with pytest.raises(ValueError, match="a family kind names its method"):
        JobKind("k", _Config, "m:f", "s", method="k")


def test_a_name_is_registered_once_and_a_family_lists_its_kinds_by_method(registered):
    kind = JobKind("unit-kind", _Config, "m:f", "s", family="unit-family", method="one")
    assert register_kind(kind) is kind and register_kind(kind) is kind  # the same registration again: a no-op
    with pytest.raises(ValueError, match="'unit-kind' is registered already"):
        register_kind(JobKind("unit-kind", _Config, "m:g", "s"))
    register_kind(JobKind("unit-kind", _Config, "m:g", "s"), replace=True)
    register_kind(JobKind("unit-two", _Config, "m:f", "s", family="unit-family", method="two"))
    assert list(family("unit-family")) == ["two"] and family("no-such-family") == {}
    assert get_kind("unit-two").method == "two"
    with pytest.raises(MentorError, match="unknown job kind 'nope'; known: .*unit-kind"):
        get_kind("nope")


def test_the_built_in_kinds_and_what_they_produce():
    names = kinds()
    assert {"tune", "dpo", "reward-model", "rlhf", "reinforcement", "step-by-step", "logit", "batch"} <= set(names)
    assert set(family("tune")) == {"supervised", "dpo"}
    assert {"step-by-step", "standard", "finetune", "logit", "feature", "relation", "self"} <= set(family("distill"))
    assert produces("tune") == "model" and produces("reward-model") == "reward-model"
    assert produces("batch") == "predictions"
    assert produces("a-plugin-kind-no-longer-registered") == "model"  # what an older or plug-in kind made


def test_a_tuned_models_name_is_openais_shape():
    assert model_name("tiny:llama", "math", "ftjob-0123456789abcdef") == "ft:tiny:llama:math:0123456789ab"
    assert model_name("org/base", None, "ftjob-abc") == "ft:org/base:mentor:abc"
    assert NAME_PATTERN.match(model_name("org/base", "v1.2_x-y", "ftjob-0123456789abcdef"))


@pytest.mark.parametrize("name", ["ft:tiny:llama:mentor:0123456789ab", "gpt2", "org/model@v1+x", "a" * 255,
                                  "ft:x:y:z:ckpt-step-20"])
def test_names_a_request_may_give(name):
    assert NAME_PATTERN.match(name)


@pytest.mark.parametrize("name", ["", "-leading-dash", ".hidden", "/abs/path", "a b", "a" * 256, "x\n", "naïve",
                                  "a;rm -rf", "ft:x?y"])
def test_names_a_request_may_not_give(name):
    assert not NAME_PATTERN.match(name)


def test_a_kept_checkpoint_is_named_after_its_model_and_step():
    match = CHECKPOINT.match("ft:tiny:llama:mentor:0123456789ab:ckpt-step-40")
    assert match and match["name"] == "ft:tiny:llama:mentor:0123456789ab" and match["step"] == "40"
    assert not CHECKPOINT.match("ft:tiny:llama:mentor:0123456789ab:ckpt-step-") and not CHECKPOINT.match("x:ckpt-40")
