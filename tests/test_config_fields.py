"""Every kind's --help is its own: a field is declared on a kind only if that kind's run reads it.

Two checks. The generic one reads the source of each built-in kind's run path (its recipe, the
method class a white-box config names, the kinds it runs as stages, and every mentor module they
import, at the top or inside functions) and asks that each field of the kind's config is read
there as an attribute (`cfg.NAME`, `self.cfg.NAME`); reads inside the configs' own validators do
not count. Its limit: a field name read anywhere in that code counts, so a field shared by several
kinds (`packing`, `offline_logits`) read in a module they share is not caught. The table pins
those: which kind must not have which field, and the RLHF job being exactly its two stages.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
from pathlib import Path

import pytest

import mentor  # noqa: F401  (registers the built-in kinds)
from mentor.jobs import kinds
from mentor.rlhf.config import REWARD_STAGE_FIELDS, RL_STAGE_FIELDS, RewardModelConfig, RLHFConfig

VALIDATORS = {"model_validator", "field_validator"}


def _source(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    return Path(spec.origin) if spec and spec.origin and spec.origin.endswith(".py") else None


def _imports(tree: ast.AST, module: str) -> set[str]:
    found = set()
    package = module if _source(module) and _source(module).name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            if base.startswith("mentor"):  # `from mentor.rlhf import curves` names a module
                found |= {f"{base}.{a.name}" for a in node.names if _is_module(f"{base}.{a.name}")}
    return {m for m in found if m == "mentor" or m.startswith("mentor.")}


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _stage_kinds(tree: ast.AST) -> set[str]:
    """Kinds a recipe runs as stages of its own job: `jobs.run("reward-model", ...)`."""
    return {node.args[0].value for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "run"
            and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
            and node.args[0].value in kinds()}


def _reads(tree: ast.AST) -> set[str]:
    """Attribute names read in a module, leaving out the bodies of pydantic validators."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and any(
                isinstance(d, ast.Call) and getattr(d.func, "id", getattr(d.func, "attr", None)) in VALIDATORS
                for d in node.decorator_list):
            skipped |= {id(n) for n in ast.walk(node)}
    return {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and id(n) not in skipped}


def run_path_reads(kind_name: str, seen_kinds: set[str] | None = None) -> set[str]:
    kind = kinds()[kind_name]
    seen_kinds = (seen_kinds or set()) | {kind_name}
    roots = [kind.run.partition(":")[0]]
    named = getattr(kind.config, "method_class", None)  # a white-box method's loss
    if named is not None:
        roots.append(named.partition(":")[0] if isinstance(named, str) else named.__module__)
    todo, seen, reads = list(roots), set(), set()
    while todo:
        module = todo.pop()
        path = _source(module) if module not in seen else None
        seen.add(module)
        if path is None:
            continue
        tree = ast.parse(path.read_text())
        reads |= _reads(tree)
        todo += [m for m in _imports(tree, module) if m not in seen]
        for stage in _stage_kinds(tree) - seen_kinds:
            reads |= run_path_reads(stage, seen_kinds)
    return reads


BUILT_IN = sorted(name for name, kind in kinds().items() if kind.config.__module__.startswith("mentor."))


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_field_of_a_kind_is_read_by_its_run(name):
    config = kinds()[name].config
    unread = sorted(set(config.model_fields) - run_path_reads(name))
    assert not unread, f"{name}: --help lists {unread}, which its run never reads"


def _help(argv: list[str]) -> str:
    from mentor.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main([*argv, "--help"])
    return out.getvalue()


WHITEBOX_OWN = {
    "logit": {"divergence", "beta", "temperature", "on_policy_fraction", "max_new_tokens", "offline_logits", "top_k",
              "teacher_logits_dir", "shard_examples"},
    "feature": {"layer_map", "feature_loss"},
    "relation": {"layer_map", "relation_level", "relation_max_tokens"},
    "self": {"divergence", "beta", "temperature", "on_policy_fraction", "max_new_tokens", "ema_decay"},
}


@pytest.mark.parametrize("method", sorted(WHITEBOX_OWN))
def test_a_whitebox_methods_help_lists_its_own_settings_only(method):
    others = set().union(*WHITEBOX_OWN.values()) - WHITEBOX_OWN[method]
    fields = set(kinds()[method].config.model_fields)
    assert WHITEBOX_OWN[method] <= fields and not others & fields, sorted(others & fields)
    assert "packing" not in fields
    text = _help(["distill", "--method", method])
    flags = {"--" + f.replace("_", "-") for f in WHITEBOX_OWN[method]}
    assert all(f in text for f in flags)
    assert not [f for f in others if f"--{f.replace('_', '-')} " in text]


def test_rlhf_is_its_two_stages():
    rlhf, reward_model = set(RLHFConfig.model_fields), set(RewardModelConfig.model_fields)
    assert rlhf == reward_model | RL_STAGE_FIELDS
    assert not reward_model & RL_STAGE_FIELDS  # the reward-model job lists no RL flag
    assert REWARD_STAGE_FIELDS <= reward_model
    assert "--kl-coeff" not in _help(["reward-model"]) and "--kl-coeff" in _help(["rlhf"])
    # each stage trains at its own rate
    cfg = RLHFConfig(model="m", output="o", prompt_dataset="p", preference_dataset="pairs", tuning="full")
    assert cfg.learning_rate == cfg.rl_learning_rate == pytest.approx(1e-6)
    assert cfg.reward_model_config("o/rm").learning_rate == pytest.approx(1e-5)


@pytest.mark.parametrize("name,absent", [
    ("dpo", {"teacher", "kd_ratio", "alpha", "packing", "kl_coeff", "num_generations"}),
    ("reward-model", {"train_steps", "learning_rate_multiplier", "early_stopping", "checkpoint_selection", "packing",
                      "merge_adapter", "data"}),
    ("rlhf", {"train_steps", "learning_rate_multiplier", "early_stopping", "packing", "data"}),
    ("tune", {"teacher", "beta", "kd_ratio", "instruction"}),
])
def test_a_kind_lacks_what_it_never_uses(name, absent):
    assert not absent & set(kinds()[name].config.model_fields)


def _declared_in(cls: type, field: str) -> list[type]:
    """The classes of `cls`'s MRO whose own body declares `field`, nearest first."""
    return [c for c in cls.__mro__ if field in vars(c).get("__annotations__", {})]


def test_a_default_differs_from_its_groups_only_where_a_comment_says_why():
    """A field has the default of the group that declares it; a kind (or a group of its own) that needs
    another overrides that one field, with the reason in a comment right above it."""
    import inspect

    from mentor.training.config import FieldGroup

    for name in BUILT_IN:
        config = kinds()[name].config
        if not issubclass(config, FieldGroup):  # not composed from the groups
            continue
        for field, info in config.model_fields.items():  # `method` names the kind: each fixes its own
            declared = _declared_in(config, field)
            nearest, origin = declared[0], declared[-1]
            if field == "method" or nearest is origin or info.is_required() or info.default == origin.model_fields[field].default:
                continue
            lines, _ = inspect.getsourcelines(nearest)
            at = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{field}:"))
            assert lines[at - 1].strip().startswith("#"), \
                f"{name}: {nearest.__name__}.{field} overrides {origin.__name__}'s default without saying why"


def test_an_old_job_folders_fields_of_other_methods_are_dropped_at_their_defaults(tmp_path):
    """A white-box job's config.yaml from before one config per method holds every method's fields."""
    from mentor.errors import MentorError
    from mentor.jobs.config import build_config
    from mentor.rlhf.config import DPOConfig
    from mentor.whitebox.config import LogitConfig

    old = dict(model="s", teacher="t", data="d", output="o", method="logit", feature_loss="mse", layer_map=None,
               relation_level="token", relation_max_tokens=256, ema_decay=0.99, packing=False)
    assert build_config(LogitConfig, old).method == "logit"
    with pytest.raises(MentorError, match="feature_loss: method 'logit' does not read it"):
        build_config(LogitConfig, {**old, "feature_loss": "cosine"})
    assert build_config(DPOConfig, dict(model="m", data="d", output="o", packing=False)).method == "dpo"


def test_a_job_folder_holding_fields_since_retired_is_still_its_job(tmp_path):
    """Rerunning a white-box job whose folder an earlier mentor wrote (every method's fields in its
    config.yaml) resumes it instead of refusing it as a different job."""
    from mentor.jobs import Job, read_job_config, write_job_config
    from mentor.whitebox.config import LogitConfig

    out = tmp_path / "o"
    cfg = LogitConfig(model="tiny:llama", teacher="tiny:llama", data=str(tmp_path / "d.jsonl"), output=str(out))
    Job.open("logit", cfg).close()
    saved = read_job_config(out)
    saved.pop("kind")
    write_job_config(out, "logit", {**saved, "feature_loss": "mse", "relation_level": "token", "packing": False})
    (out / "checkpoints" / "checkpoint-1").mkdir(parents=True)  # it trained: a different job would be refused
    Job.open("logit", cfg).close()
    assert "feature_loss" not in read_job_config(out)  # rewritten as this mentor's config
