"""Preference tuning on real tiny models: reward model, RLHF (RLOO with a KL penalty) and DPO.

The synthetic preference is one a program can check: answers that contain the word "yes" are
preferred. The starting policy is tiny:llama tuned (supervised) to answer "yes ..." or "no ..."
about half of the time each; every measurement below is made by this file's own code on
held-out data, not read back from the recipes.
"""

import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import mentor
from conftest import write_jsonl
from mentor import dpo
from mentor.cli import main as cli_main
from mentor.errors import DataValidationError, MentorError
from mentor.rlhf import RewardModel, load_preferences, load_prompts

# The same openings on both sides, so the word that decides is not always the first one.
YES = ["yes", "oh yes", "i think yes", "well yes sure"]
NO = ["no", "oh no", "i think not", "well no thanks"]


def preferred(answer: str) -> bool:
    return "yes" in answer


def word(rng) -> str:
    return "".join(rng.choice("abcdefgh") for _ in range(rng.randint(3, 6)))


def sft_rows(n, seed):
    rng = random.Random(seed)
    return [{"input_text": f"answer {word(rng)}", "output_text": rng.choice(YES if i % 2 else NO)} for i in range(n)]


def preference_lines(n, seed, cloud=True):
    """Half in the cloud format (choice alternating), half as prompt/chosen/rejected."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        prompt, good, bad = f"answer {word(rng)}", rng.choice(YES), rng.choice(NO)
        if cloud and i % 2 == 0:
            choice = (i // 2) % 2
            rows.append({"input_text": prompt, "candidate_0": good if choice == 0 else bad,
                         "candidate_1": bad if choice == 0 else good, "choice": choice})
        else:
            rows.append({"prompt": prompt, "chosen": good, "rejected": bad})
    return rows


def prompt_rows(n, seed):
    rng = random.Random(seed)
    return [{"input_text": f"answer {word(rng)}"} for _ in range(n)]


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    d = tmp_path_factory.mktemp("prefs")
    files = {
        "sft": write_jsonl(d / "sft.jsonl", sft_rows(400, 0)),
        "pairs": write_jsonl(d / "pairs.jsonl", preference_lines(200, 1)),
        "eval_pairs": write_jsonl(d / "eval_pairs.jsonl", preference_lines(40, 2)),
        "prompts": write_jsonl(d / "prompts.jsonl", prompt_rows(100, 3)),
        "eval_prompts": write_jsonl(d / "eval_prompts.jsonl", prompt_rows(16, 4)),
        "held_out_prompts": [r["input_text"] for r in prompt_rows(24, 5)],
    }
    # the starting policy: says "yes ..." about half of the time
    mentor.tune(model="tiny:llama", data=str(files["sft"]), output=str(d / "start"), tuning="full", train_steps=200,
                batch_size=16, learning_rate_multiplier=100, early_stopping=False, checkpoint_selection=False)
    files["start"] = str(d / "start")
    return files


# -- measurements made here, with plain transformers ---------------------------------------

def preferred_rate(model_ref: str, prompts: list[str], samples: int = 8, seed: int = 0) -> float:
    from mentor.serving.predict import Predictor

    p = Predictor(model_ref)
    torch.manual_seed(seed)
    answers = p.predict([x for x in prompts for _ in range(samples)], temperature=1.0, max_new_tokens=12,
                        batch_size=64)
    return sum(map(preferred, answers)) / len(answers)


@torch.inference_mode()
def logprob_margin(model_ref: str, pairs_file: Path) -> float:
    """Mean over held-out pairs of log p(chosen | prompt) - log p(rejected | prompt), answer tokens only."""
    from mentor.models import load_model

    loaded = load_model(model_ref)
    model, tok = loaded.model.eval(), loaded.tokenizer

    def logp(prompt: str, answer: str) -> float:
        ctx = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        p_ids = tok(ctx, add_special_tokens=False).input_ids
        a_ids = tok(answer + tok.eos_token, add_special_tokens=False).input_ids
        ids = torch.tensor([p_ids + a_ids])
        logits = model(ids).logits[0, len(p_ids) - 1:-1]
        return F.log_softmax(logits.float(), -1).gather(1, torch.tensor(a_ids)[:, None]).sum().item()

    pairs = load_preferences(pairs_file)
    return sum(logp(p.prompt.messages[-1]["content"], p.chosen) - logp(p.prompt.messages[-1]["content"], p.rejected)
               for p in pairs) / len(pairs)


def rows(path: Path) -> list[dict]:
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def tb_tags(folder: Path) -> set:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return set(acc.Tags()["scalars"])


LAYOUT = ("model/config.json", "metrics.jsonl", "tensorboard", "curves.png", "config.yaml", "README.md", "result.json")


# -- data validation -------------------------------------------------------------------------

def test_preference_and_prompt_data_are_validated_with_file_line_and_field(tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [
        {"input_text": "q", "candidate_0": "a", "candidate_1": "b", "choice": 0},  # fine
        {"input_text": "q", "candidate_0": "a", "candidate_1": "b", "choice": 2},
        {"input_text": "q", "candidate_0": "a", "choice": 1},
        {"input_text": "", "candidate_0": 3, "candidate_1": "b", "choice": True},
        {"input_text": "q", "candidate_0": "same", "candidate_1": "same", "choice": 0},
        {"prompt": "q", "chosen": "a"},
        {"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}], "chosen": "a", "rejected": "b"},
        {"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"},
        {"chosen": "a", "rejected": "b"},
        "not json {",
        {"output_text": "x"},
    ])
    with pytest.raises(DataValidationError) as err:
        load_preferences(bad)
    text, f = str(err.value), str(bad)
    for line, fld in [(2, "choice"), (3, "candidate_1"), (4, "input_text"), (4, "candidate_0"), (4, "choice"),
                      (5, "candidate_1"), (6, "rejected"), (7, "prompt"), (8, "chosen[0].role"), (9, "prompt"),
                      (10, "(line)"), (11, "(line)")]:
        assert f"{f}:{line}: field '{fld}'" in text, (line, fld, text)
    assert f"{f}:1:" not in text
    assert all(p.file == f and p.line and p.field for p in err.value.problems)

    good = write_jsonl(tmp_path / "good.jsonl", [
        {"input_text": "q1", "candidate_0": "worse", "candidate_1": "better", "choice": 1, "id": 7},
        {"prompt": [{"role": "system", "content": "be kind"}, {"role": "user", "content": "q2"}],
         "chosen": [{"role": "assistant", "content": "good"}], "rejected": "bad"},
    ])
    a, b = load_preferences(good)
    assert (a.chosen, a.rejected, a.prompt.kind, a.line, a.prompt.extra) == ("better", "worse", "text", 1, {"id": 7})
    assert (b.chosen, b.rejected, b.prompt.kind, b.prompt.messages[0]["role"]) == ("good", "bad", "chat", "system")
    assert a.prompt.with_instruction("Say yes.").messages[0]["content"] == "Say yes.\nq1"

    prompts = write_jsonl(tmp_path / "prompts.jsonl", [
        {"input_text": "fine"}, {"input_text": ""}, {"text": "x"},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
        {"prompt": [{"role": "robot", "content": "x"}]},
    ])
    with pytest.raises(DataValidationError) as err:
        load_prompts(prompts)
    text, f = str(err.value), str(prompts)
    for line, fld in [(2, "input_text"), (3, "input_text"), (4, "messages"), (5, "prompt[0].role")]:
        assert f"{f}:{line}: field '{fld}'" in text, (line, fld, text)
    with pytest.raises(MentorError, match="not found"):
        load_prompts(tmp_path / "missing.jsonl")


def test_config_names_and_defaults_are_the_clouds(tmp_path):
    from mentor.rlhf import DPOConfig, RLHFConfig

    cfg = RLHFConfig(model="m", output="o", preference_dataset="p", prompt_dataset="q")
    assert (cfg.kl_coeff, cfg.reward_model_train_steps, cfg.reinforcement_learning_train_steps,
            cfg.reward_model_learning_rate_multiplier, cfg.reinforcement_learning_rate_multiplier,
            cfg.prompt_sequence_length, cfg.target_sequence_length, cfg.instruction) == (0.1, 1000, 1000, 1.0, 1.0, 512, 64, None)
    with pytest.raises(ValueError, match="reward_model"):
        RLHFConfig(model="m", output="o", prompt_dataset="q")
    reuse = RLHFConfig(model="m", output="o", prompt_dataset="q", reward_model="r", eval_dataset="e",
                       reward_model_train_steps=5)
    assert reuse.unused_reward_fields() == ["eval_dataset", "reward_model_train_steps"]  # said, not refused
    assert RLHFConfig(**reuse.model_dump()).unused_reward_fields() == reuse.unused_reward_fields()
    assert DPOConfig(model="m", output="o", data="d").beta == 0.1
    assert DPOConfig(model="m", output="o", data="d").tuning == "lora"
    assert DPOConfig(model="m", output="o", data="d", tuning="full").learning_rate == 1e-6


# -- RLHF: reward model, then RL ---------------------------------------------------------------

@pytest.fixture(scope="module")
def rlhf_job(task, tmp_path_factory):
    out = tmp_path_factory.mktemp("rlhf") / "job"
    result = mentor.run("rlhf", model=task["start"], output=str(out), tuning="full",
                  preference_dataset=str(task["pairs"]), eval_dataset=str(task["eval_pairs"]),
                  prompt_dataset=str(task["prompts"]), eval_prompt_dataset=str(task["eval_prompts"]),
                  reward_model_train_steps=40, reward_model_learning_rate_multiplier=100,
                  reinforcement_learning_train_steps=80, reinforcement_learning_rate_multiplier=1000,
                  kl_coeff=0.1, batch_size=4, num_generations=4, target_sequence_length=12, evaluation_interval=40)
    return out, result


def test_reward_model_ranks_held_out_pairs_well_above_chance(task, rlhf_job):
    out, _ = rlhf_job
    rm_out = out / "reward_model"
    for name in LAYOUT:
        assert (rm_out / name).exists(), name
    reported = json.loads((rm_out / "result.json").read_text())["metrics"]
    assert reported["eval_reward_model_accuracy"] >= 0.8

    # measured here: the saved reward model, reloaded, scores held-out pairs
    reward = RewardModel(str(rm_out))
    pairs = load_preferences(task["eval_pairs"])
    chosen = reward.score([p.prompt for p in pairs], [p.chosen for p in pairs])
    rejected = reward.score([p.prompt for p in pairs], [p.rejected for p in pairs])
    accuracy = sum(c > r for c, r in zip(chosen, rejected)) / len(pairs)
    print(f"\nreward model held-out pairwise accuracy: {accuracy:.3f}")
    assert accuracy >= 0.8
    assert reward.score(["answer abc"], ["yes please"])[0] > reward.score(["answer abc"], ["no thanks"])[0]

    metrics = rows(rm_out / "metrics.jsonl")
    assert any("train_reward_model_loss" in r and "train_reward_model_accuracy" in r for r in metrics)
    assert {"train_reward_model_loss", "train_reward_model_accuracy", "eval_reward_model_accuracy"} <= tb_tags(rm_out / "tensorboard")


def test_rl_raises_preferred_rate_with_bounded_kl(task, rlhf_job):
    out, result = rlhf_job
    for name in LAYOUT:
        assert (out / name).exists(), name
    assert not (out / "checkpoints").exists() and result.steps_run == 80

    before = preferred_rate(task["start"], task["held_out_prompts"])
    after = preferred_rate(str(out), task["held_out_prompts"])
    print(f"\npreferred ('yes') rate on held-out prompts: {before:.3f} -> {after:.3f}")
    assert 0.25 <= before <= 0.8, "the starting policy must leave room both ways"
    assert after >= before + 0.15 and after >= 0.75

    metrics = rows(out / "metrics.jsonl")
    kls = [r["train_kl"] for r in metrics if "train_kl" in r]
    print(f"per-token KL to the start: max {max(kls):.4f}, final eval {result.metrics['eval_kl']:.4f}")
    assert len(kls) == 80 and max(kls) < 1.0 and result.metrics["eval_kl"] < 1.0
    assert all("train_mean_reward" in r and "train_policy_loss" in r for r in metrics if "train_kl" in r)
    # the held-out mean reward was measured before the first step and rose
    first, last = metrics[0], [r for r in metrics if "eval_mean_reward" in r][-1]
    assert first["step"] == 0 and last["eval_mean_reward"] > first["eval_mean_reward"]
    assert {"train_mean_reward", "train_kl", "train_policy_loss", "eval_mean_reward", "eval_kl"} <= tb_tags(out / "tensorboard")
    card = (out / "README.md").read_text()
    assert "kl_coeff" in card and "reward_model" in card


def test_kl_coeff_holds_the_policy_near_the_start(task, rlhf_job, tmp_path):
    out, _ = rlhf_job
    mean_kl = {}
    for kl_coeff in (0.01, 2.0):
        job = tmp_path / f"kl-{kl_coeff}"
        mentor.run("rlhf", model=task["start"], output=str(job), tuning="full", reward_model=str(out / "reward_model"),
             prompt_dataset=str(task["prompts"]), reinforcement_learning_train_steps=80,
             reinforcement_learning_rate_multiplier=1000, kl_coeff=kl_coeff, batch_size=4, num_generations=4,
             target_sequence_length=12, evaluation_interval=80)
        kls = [r["train_kl"] for r in rows(job / "metrics.jsonl") if "train_kl" in r]
        mean_kl[kl_coeff] = sum(kls[40:]) / len(kls[40:])
    print(f"\nmean per-token KL over the last 40 steps, by kl_coeff: {mean_kl}")
    assert mean_kl[2.0] < 0.5 * mean_kl[0.01]


def test_rlhf_reuses_a_reward_model_with_lora_and_instruction(task, rlhf_job, tmp_path, capsys):
    out, _ = rlhf_job
    job = tmp_path / "lora"
    code = cli_main(["rlhf", "--model", task["start"], "--output", str(job), "--reward-model", str(out / "reward_model"),
                     "--prompt-dataset", str(task["prompts"]), "--tuning", "lora", "--adapter-size", "4",
                     "--reinforcement-learning-train-steps", "4", "--batch-size", "2", "--num-generations", "2",
                     "--target-sequence-length", "8", "--instruction", "Reply briefly.",
                     "--preference-dataset", str(task["pairs"])])  # the whole job rerun, as docs/rlhf.md shows
    assert code == 0
    assert "reward-model stage is skipped; not used: preference_dataset" in "".join(capsys.readouterr())
    assert (job / "model" / "adapter_config.json").exists() and not (job / "reward_model").exists()
    meta = json.loads((job / "model" / "mentor_model.json").read_text())
    assert meta["instruction"] == "Reply briefly." and meta["reward_model"].startswith(str(out / "reward_model"))
    from mentor.serving.predict import Predictor

    assert isinstance(Predictor(str(job)).predict("Reply briefly.\nanswer abc", max_new_tokens=4), str)
    # the same job again is a no-op
    assert cli_main(["rlhf", "--model", task["start"], "--output", str(job), "--reward-model", str(out / "reward_model"),
                     "--prompt-dataset", str(task["prompts"]), "--tuning", "lora", "--adapter-size", "4",
                     "--reinforcement-learning-train-steps", "4", "--batch-size", "2", "--num-generations", "2",
                     "--target-sequence-length", "8", "--instruction", "Reply briefly.",
                     "--preference-dataset", str(task["pairs"])]) == 0
    assert "already holds this finished job" in capsys.readouterr().out


def test_reward_model_command_with_lora_saves_a_plain_reusable_model(task, tmp_path):
    job = tmp_path / "rm"
    assert cli_main(["reward-model", "--model", task["start"], "--preference-dataset", str(task["pairs"]),
                     "--eval-dataset", str(task["eval_pairs"]), "--output", str(job), "--tuning", "lora",
                     "--adapter-size", "4", "--reward-model-train-steps", "30", "--batch-size", "16",
                     "--reward-model-learning-rate-multiplier", "100", "--evaluation-interval", "30"]) == 0
    assert (job / "model" / "config.json").exists() and not (job / "model" / "adapter_config.json").exists()
    reward = RewardModel(str(job))
    accuracy = reward.pairwise_accuracy(str(task["eval_pairs"]))
    print(f"\nLoRA reward model held-out pairwise accuracy: {accuracy:.3f}")
    assert accuracy >= 0.8
    with pytest.raises(MentorError, match="not a reward model"):
        RewardModel(task["start"])


def test_only_a_reward_model_is_taken_as_one(task, tmp_path):
    """A language model or a classifier with two outputs would score through a new, random head."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from mentor.models import resolve

    plain = resolve("tiny:llama")
    with pytest.raises(MentorError, match="tiny:llama is not a reward model: a LlamaForCausalLM has no trained score"):
        RewardModel("tiny:llama")
    two = tmp_path / "two-labels"
    AutoModelForSequenceClassification.from_pretrained(plain, num_labels=2).save_pretrained(two)
    AutoTokenizer.from_pretrained(plain).save_pretrained(two)
    with pytest.raises(MentorError, match="has 2 outputs; a reward model has one"):
        RewardModel(str(two))
    with pytest.raises(MentorError, match="not a reward model"):  # refused before the policy loads
        mentor.run("rlhf", model=task["start"], output=str(tmp_path / "job"), reward_model="tiny:llama",
                   prompt_dataset=str(task["prompts"]))


def test_reward_model_sees_where_an_answer_ends(tmp_path):
    """With padding = end of turn (SmolLM2's tokenizer) the classifier would read past the end-of-turn
    token, and a finished answer would score as one cut off; a cut answer is trained without it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mentor.models import resolve
    from mentor.rlhf.data import PreferencePair, Prompt
    from mentor.rlhf.render import Renderer
    from mentor.rlhf.reward import scored_pair_rows

    start = tmp_path / "pad-is-eos"
    tokenizer = AutoTokenizer.from_pretrained(resolve("tiny:llama"))
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.save_pretrained(start)
    AutoModelForCausalLM.from_pretrained(resolve("tiny:llama")).save_pretrained(start)
    job = tmp_path / "rm"
    mentor.run("reward-model", model=str(start), output=str(job), preference_dataset=str(
        write_jsonl(tmp_path / "p.jsonl", preference_lines(32, 1))), tuning="full", reward_model_train_steps=2, batch_size=8)
    reward = RewardModel(str(job))
    assert reward.tokenizer.pad_token_id != reward.tokenizer.eos_token_id
    assert reward.model.config.pad_token_id == reward.tokenizer.pad_token_id
    finished, cut = reward.score(["answer abc"] * 2, ["yes"] * 2, finished=[True, False])
    assert finished != pytest.approx(cut, abs=1e-6)

    renderer = Renderer.for_model(tokenizer, "auto", None, 512, 3)
    pair = PreferencePair(Prompt([{"role": "user", "content": "Q"}], "text"), "a long chosen answer", "no")
    row = scored_pair_rows([pair], renderer)[0]
    assert row["chosen_ids"][-1] != tokenizer.eos_token_id and row["rejected_ids"][-1] == tokenizer.eos_token_id


def test_bad_data_stops_rlhf_before_any_training(task, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"input_text": "q", "candidate_0": "a", "candidate_1": "b"}])
    with pytest.raises(DataValidationError, match=r"bad.jsonl:1: field 'choice'"):
        mentor.run("rlhf", model=task["start"], output=str(tmp_path / "job"), preference_dataset=str(bad),
             prompt_dataset=str(task["prompts"]))
    assert not (tmp_path / "job" / "reward_model").exists()


# -- DPO -------------------------------------------------------------------------------------

def test_dpo_raises_chosen_over_rejected_margin_on_held_out_pairs(task, tmp_path):
    out = tmp_path / "dpo"
    result = dpo(model=task["start"], data=str(task["pairs"]), evaluation_data=str(task["eval_pairs"]),
                 output=str(out), tuning="full", beta=0.1, train_steps=30, batch_size=16,
                 learning_rate_multiplier=1000, evaluation_interval=10, early_stopping=False)
    for name in LAYOUT:
        assert (out / name).exists(), name
    before = logprob_margin(task["start"], task["eval_pairs"])
    after = logprob_margin(str(out), task["eval_pairs"])
    print(f"\nDPO held-out log p(chosen) - log p(rejected): {before:.3f} -> {after:.3f}")
    assert after > before + 2.0 and after > 0

    metrics = rows(out / "metrics.jsonl")
    assert metrics[0]["step"] == 0 and "eval_logprob_margin" in metrics[0]
    assert result.metrics["eval_logprob_margin"] > metrics[0]["eval_logprob_margin"]
    assert result.metrics["eval_reward_accuracy"] >= 0.8
    assert {"train_dpo_loss", "train_reward_margin", "eval_dpo_loss", "eval_logprob_margin"} <= tb_tags(out / "tensorboard")
    assert "beta" in (out / "README.md").read_text()


def test_dpo_from_tune_command_line_with_lora(task, tmp_path):
    from mentor.cli import build_parser
    from mentor.cli.jobs import config_from_args

    job = tmp_path / "tuned"
    argv = ["tune", "--model", task["start"], "--data", str(task["pairs"]), "--output", str(job), "--method", "dpo",
            "--adapter-size", "4", "--train-steps", "3", "--batch-size", "4"]
    kind, _ = config_from_args(build_parser(argv).parse_args(argv))
    assert kind.name == "dpo"
    assert cli_main(argv) == 0
    result = json.loads((job / "result.json").read_text())
    assert (result["method"], result["tuning"]) == ("dpo", "lora") and (job / "model" / "adapter_config.json").exists()
    yaml_job = tmp_path / "job.yaml"
    yaml_job.write_text(f"model: {task['start']}\nmethod: dpo\ntuning: full\n")
    argv = ["tune", "--config", str(yaml_job), "--data", "d", "--output", "o"]
    assert config_from_args(build_parser(argv).parse_args(argv))[0].name == "dpo"
    argv = ["tune", "--tuning", "lora", "--model", "m", "--data", "d", "--output", "o"]
    assert config_from_args(build_parser(argv).parse_args(argv))[0].name == "tune"
    # and `mentor dpo` itself
    assert cli_main(["dpo", "--model", task["start"], "--data", str(task["pairs"]), "--output", str(tmp_path / "d2"),
                     "--tuning", "full", "--train-steps", "2", "--batch-size", "4", "--beta", "0.2"]) == 0
    import yaml

    assert yaml.safe_load((tmp_path / "d2" / "config.yaml").read_text())["beta"] == 0.2


# -- issue 23 ---------------------------------------------------------------------------------------

def test_the_rlhf_job_trains_the_policy_at_the_rl_rate_and_its_stage_at_the_reward_models():
    from mentor.rlhf.config import RLHFConfig
    from mentor.training.arguments import training_arguments

    cfg = RLHFConfig(model="m", output="o", prompt_dataset="p.jsonl", preference_dataset="pairs.jsonl",
                     reward_model_learning_rate_multiplier=2, reinforcement_learning_rate_multiplier=3)
    assert cfg.learning_rate == pytest.approx(3e-5)
    assert cfg.reward_model_config("o/reward_model").learning_rate == pytest.approx(2e-4)
    args = training_arguments(cfg, Path("o/checkpoints"), False, False, steps=cfg.reinforcement_learning_train_steps)
    assert args.learning_rate == pytest.approx(3e-5)


def test_a_cancel_of_the_rlhf_job_stops_its_reward_model_stage(tmp_path):
    """`mentor cancel OUTPUT` (and the Ray executor) write OUTPUT/CANCEL: the reward-model stage, a job
    of its own in OUTPUT/reward_model, watches it and stops within a step or two."""
    import threading
    import time

    from mentor.jobs import JobCancelled, read_state, request_cancel

    out = tmp_path / "job"
    pairs = write_jsonl(tmp_path / "pairs.jsonl", preference_lines(32, 1))
    prompts = write_jsonl(tmp_path / "prompts.jsonl", prompt_rows(8, 3))
    asked_at = []

    def cancel_in_stage_one():
        deadline = time.monotonic() + 300
        while read_state(out / "reward_model").get("step", 0) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        request_cancel(out)
        asked_at.append(read_state(out / "reward_model").get("step", 0))

    canceller = threading.Thread(target=cancel_in_stage_one, daemon=True)
    canceller.start()
    with pytest.raises(JobCancelled):
        mentor.run("rlhf", model="tiny:llama", output=str(out), preference_dataset=str(pairs),
                   prompt_dataset=str(prompts), reward_model_train_steps=60, reinforcement_learning_train_steps=4,
                   batch_size=4, num_generations=2, target_sequence_length=4, evaluation_interval=100)
    canceller.join(5)
    stage = read_state(out / "reward_model")
    assert stage["state"] == "cancelled" and stage["step"] <= asked_at[0] + 3, (stage, asked_at)
    assert read_state(out)["state"] == "cancelled"
    assert not (out / "CANCEL").exists() and not (out / "checkpoints").exists()  # the RL stage never started


def test_a_torn_metrics_line_does_not_stop_a_resume_on_another_rank(tmp_path):
    from transformers.trainer_callback import TrainerState

    from mentor.rlhf import curves

    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "train_mean_reward": 0.2}\n{"step": 2, "train_')
    for rank_zero in (False, True):
        recorder = curves.RenamedMetricsRecorder(tmp_path, curves.RL_METRICS, {"eval_mean_reward": 0.1})
        recorder.on_train_begin(None, TrainerState(is_world_process_zero=rank_zero), None)
        recorder.on_train_end(None, TrainerState(is_world_process_zero=rank_zero), None)
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 0, "eval_mean_reward": 0.1}\n'


def test_preference_jobs_cut_their_token_limits_to_the_models_context(tmp_path, caplog):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", preference_lines(8, 1, cloud=False))
    with caplog.at_level("WARNING", logger="mentor"):  # tiny:llama reads 2048 tokens
        mentor.run("reward-model", model="tiny:llama", preference_dataset=str(pairs), output=str(tmp_path / "rm"),
                   prompt_sequence_length=4000, reward_model_train_steps=1, batch_size=4)
        mentor.dpo(model="tiny:llama", data=str(pairs), output=str(tmp_path / "dpo"), train_steps=1, batch_size=4)
    assert "prompt_sequence_length 4000 and target_sequence_length 64 do not fit the model's context of 2048 tokens: " \
           "using 1984 and 64" in caplog.text
    assert "max_input_tokens 7168 and max_output_tokens 1024 do not fit the model's context of 2048 tokens: " \
           "using 1024 and 1024" in caplog.text
    meta = json.loads((tmp_path / "rm" / "model" / "mentor_model.json").read_text())
    assert (meta["prompt_sequence_length"], meta["target_sequence_length"]) == (1984, 64)
    assert json.loads((tmp_path / "dpo" / "model" / "mentor_model.json").read_text())["max_input_tokens"] == 1024


@pytest.mark.parametrize("damage", [b"{\"eval_mean_reward\": 0.", b"\xff\xfe binary", b"[1, 2]"])
def test_a_damaged_starting_point_is_measured_again_or_read_back_from_the_curves(tmp_path, monkeypatch, caplog,
                                                                                 damage):
    """before_rl.json damaged by hand or by the disk: a job that has not trained yet measures the
    model again; a resumed one (the model has moved) reads the point its first run drew back from
    metrics.jsonl, with a warning naming the file, instead of a traceback."""
    from types import SimpleNamespace

    from mentor.rlhf import curves

    measured = []
    monkeypatch.setattr(curves, "final_eval", lambda trainer, names: measured.append(1) or {"eval_mean_reward": 0.3})
    trainer = SimpleNamespace(eval_dataset=[{"prompt": "p"}])
    path = tmp_path / "before_rl.json"
    path.write_bytes(damage)
    with caplog.at_level("WARNING", logger="mentor"):
        fresh = SimpleNamespace(folder=tmp_path, main=True, state={"step": 0})
        assert curves.starting_point(trainer, fresh, curves.RL_METRICS, path.name) == {"eval_mean_reward": 0.3}
    assert measured == [1] and json.loads(path.read_text()) == {"eval_mean_reward": 0.3}
    assert str(path) in caplog.text and "damaged" in caplog.text

    path.write_bytes(damage)
    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "eval_mean_reward": 0.25}\n{"step": 5, "train_kl": 0.1}\n')
    resumed = SimpleNamespace(folder=tmp_path, main=True, state={"step": 5})
    assert curves.starting_point(trainer, resumed, curves.RL_METRICS, path.name) == {"eval_mean_reward": 0.25}
    assert measured == [1] and json.loads(path.read_text()) == {"eval_mean_reward": 0.25}


@pytest.mark.parametrize("kind", ["reward_model", "reward-model"])
def test_a_reward_model_is_known_by_either_spelling_of_its_kind(tmp_path, kind):
    """Folders written before the record was typed say "reward_model", the job kind is "reward-model":
    both name a reward model (the record migrates the old spelling), as the server and the model pool
    read them."""
    from mentor.rlhf.reward import reward_model_folder

    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForSequenceClassification"]}))
    (tmp_path / "mentor_model.json").write_text(json.dumps({"kind": kind, "base_model": "tiny:llama"}))
    folder, record = reward_model_folder(str(tmp_path))
    assert folder == tmp_path and (record.kind, record.base_model) == ("reward-model", "tiny:llama")
    (tmp_path / "mentor_model.json").write_text(json.dumps({"kind": "tune", "method": "tune (lora)"}))
    with pytest.raises(MentorError, match="is not a reward model"):
        reward_model_folder(str(tmp_path))
