"""RLHF recipe: a reward model, then reinforcement learning of the policy against it.

stage 1: the reward model: a `reward-model` job of its own in OUTPUT/reward_model (run through
         the job model, so it has its own state, events and resume); or an existing one,
         given as `reward_model`;
stage 2: TRL's RLOOTrainer. For each prompt it samples `num_generations` answers, scores them
         with the reward model, and subtracts `kl_coeff` times the KL divergence of the policy
         from the starting model (summed over the answer's tokens) from each reward; the
         leave-one-out mean of the other answers' rewards is the baseline. LoRA or full;
         resumable from checkpoints; mean reward, KL and policy loss are logged every step and
         on held-out prompts at every evaluation (and before the first step).
save:    the policy in OUTPUT/model like a tuned model (`mentor predict OUTPUT ...` works), through
         the end every kind shares (training.outputs.finish).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from datasets import Dataset

from mentor import jobs
from mentor.jobs import Job, TunedModel
from mentor.model_record import ModelRecord
from mentor.rlhf import curves, policy, setup
from mentor.rlhf import reward as rm
from mentor.rlhf.config import RLHFConfig
from mentor.rlhf.data import Prompt, load_preferences, load_prompts
from mentor.rlhf.render import Renderer
from mentor.serving.generate import eos_ids
from mentor.training import arguments
from mentor.training.lora import lora_config
from mentor.training.outputs import Before, finish
from mentor.training.run import checkpoints_of, train

log = logging.getLogger("mentor")
BEFORE = "before_rl.json"  # the held-out metrics before the first step, kept until the job succeeds


class RewardFunction:
    """The reward model as a TRL reward function: it re-renders each prompt its own way and
    appends the end-of-turn token only to answers that ended, as in its training pairs."""

    __name__ = "reward_model"

    def __init__(self, reward_model: rm.RewardModel, eos_token_ids: list[int]):
        self.reward_model = reward_model
        self.eos = set(eos_token_ids)

    def __call__(self, prompts, completions, completion_ids, raw_prompt, **kwargs) -> list[float]:
        raw = [Prompt(**json.loads(r)) for r in raw_prompt]
        finished = [bool(ids) and ids[-1] in self.eos for ids in completion_ids]
        return self.reward_model.score(raw, list(completions), finished)


def prompt_rows(prompts: list[Prompt], renderer: Renderer) -> list[dict]:
    return [{"prompt": renderer.prompt(p),
             "raw_prompt": json.dumps({"messages": p.messages, "kind": p.kind})} for p in prompts]


def run(cfg: RLHFConfig, job: Job) -> TunedModel:
    """Reward model (or a given one), then RL with a KL penalty; rerunning the same job resumes it."""
    # every data file is validated before the first step of either stage
    prompts = load_prompts(cfg.prompt_dataset, cfg.max_examples)
    eval_prompts = load_prompts(cfg.eval_prompt_dataset, cfg.max_examples) if cfg.eval_prompt_dataset else None
    reward_path, reward_result = reward_stage(cfg, job)
    log.info("stage 2 of 2: reinforcement learning against the reward model")
    job.event("stage", "stage 2 of 2: reinforcement learning", stage="reinforcement-learning")
    prep = prepare(cfg, job, prompts, eval_prompts, reward_path)
    train(prep.trainer, job, quiet=setup.known_warnings)
    return save(cfg, job, prep, reward_path, reward_result)


def reward_stage(cfg: RLHFConfig, job: Job) -> tuple[str, TunedModel | None]:
    """Stage 1: the reward model given (a folder or a hub id), or one trained as a job of its own in
    OUTPUT/reward_model. Returns its path and, when trained here, its result."""
    if cfg.reward_model:
        if unused := cfg.unused_reward_fields():  # rerunning a whole job with --reward-model is the usual way
            log.warning("reward_model is given, so the reward-model stage is skipped; not used: %s",
                        ", ".join(unused))
        folder = rm.reward_model_folder(cfg.reward_model)[0]
        return (str(folder.resolve()) if folder.exists() else str(folder)), None
    load_preferences(cfg.preference_dataset, cfg.max_examples)
    if cfg.eval_dataset:
        load_preferences(cfg.eval_dataset, cfg.max_examples)
    log.info("stage 1 of 2: reward model")
    job.event("stage", "stage 1 of 2: reward model", stage="reward-model", folder=str(job.folder / "reward_model"))
    # a stage of this job: a cancel of this job (its CANCEL file) stops the stage's training too
    result = jobs.run("reward-model", cfg.reward_model_config(str(job.folder / "reward_model")), parent=job)
    return str(Path(result.model_path).resolve()), result


def prepare(cfg: RLHFConfig, job: Job, prompts: list[Prompt], eval_prompts: list[Prompt] | None,
            reward_path: str) -> policy.Prepared:
    """Stage 2's policy loaded, its prompts rendered, the reward function, the trainer and the start measured."""
    from trl import RLOOConfig, RLOOTrainer

    out = job.folder
    # beside the policy: the reward model, and with full tuning a frozen reference copy
    fitted = setup.fit(cfg, cfg.num_generations, cfg.prompt_sequence_length + cfg.target_sequence_length,
                       weight_copies=1 + int(cfg.tuning == "full"))
    loaded, base_ref, renderer = setup.start(cfg, out, cfg.prompt_sequence_length, cfg.target_sequence_length,
                                             fitted=fitted)
    train_ds = Dataset.from_list(prompt_rows(prompts, renderer))
    eval_ds = Dataset.from_list(prompt_rows(eval_prompts, renderer)) if eval_prompts else None
    log.info("prompts: %s", renderer.summary())
    reward_fn = RewardFunction(rm.RewardModel(reward_path), sorted(eos_ids(loaded.tokenizer, loaded.model)))
    args = arguments.training_arguments(
        cfg, checkpoints_of(job), eval_ds is not None, arguments.use_bf16(cfg.bf16), RLOOConfig,
        steps=cfg.reinforcement_learning_train_steps,
        batch_size=cfg.batch_size * cfg.num_generations,  # completions per step
        num_generations=cfg.num_generations, max_completion_length=renderer.max_answer_tokens, beta=cfg.kl_coeff,
        temperature=cfg.temperature, steps_per_generation=1, num_iterations=1, log_completions=False,
        checkpointing=fitted.checkpointing,
    )
    with setup.known_warnings():
        trainer = RLOOTrainer(
            model=loaded.model, reward_funcs=reward_fn, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
            processing_class=loaded.tokenizer,
            peft_config=lora_config(cfg, "CAUSAL_LM") if cfg.tuning == "lora" else None,
        )
    before = curves.starting_point(trainer, job, curves.RL_METRICS, BEFORE)
    for cb in curves.callbacks(out, curves.RL_METRICS, ["train_mean_reward", "train_kl"], "reinforcement learning",
                               before):
        trainer.add_callback(cb)
    setup.trainable_in_fp32_without_autocast(trainer)
    return policy.Prepared(trainer, renderer, base_ref, fitted, before)


def save(cfg: RLHFConfig, job: Job, prep: policy.Prepared, reward_path: str,
         reward_result: TunedModel | None) -> TunedModel:
    """The policy saved like a tuned model (`mentor predict OUTPUT ...` works), with both stages' curves."""
    out, trainer, renderer = job.folder, prep.trainer, prep.renderer
    record = ModelRecord(use_chat_template=renderer.use_chat_template, prompt_format=renderer.prompt_format,
                         is_seq2seq=False, max_input_tokens=renderer.max_prompt_tokens, instruction=cfg.instruction,
                         reward_model=reward_path)
    metrics = {**curves.final_eval(trainer, curves.RL_METRICS), **curves.last_train_metrics(trainer, curves.RL_METRICS)}
    rm_metrics = reward_result.metrics if reward_result else None
    rm_accuracy = (rm_metrics or {}).get("eval_reward_model_accuracy")
    notes = [f"reward model: `{reward_path}`" + (f" (held-out pairwise accuracy {rm_accuracy:.4f})"
                                                   if rm_accuracy is not None else ""),
             f"KL penalty coefficient (kl_coeff): {cfg.kl_coeff}; {cfg.num_generations} answers sampled per prompt "
             f"at temperature {cfg.temperature}; RLOO (TRL)", *policy.notes(cfg, prep.before, "RL",
                                                                                  "held-out prompts")]
    return finish(
        job, trainer, record, metrics=metrics,
        extra={"reward_model": reward_path, "reward_model_metrics": rm_metrics, "before": prep.before,
               "truncated": renderer.counts, "memory": prep.fitted.record()},
        notes=notes, plot=lambda result: plot(out, result.described, cfg.model), temporary=(out / BEFORE,),
        after_save=lambda model_dir: setup.finish_policy(cfg, out, model_dir, prep.base_ref),
        before=Before("held-out prompts", prep.before, ("eval_mean_reward", "eval_kl")),
        tensorboard=out)  # the reward model's stage logs in reward_model/tensorboard


def plot(out: Path, method: str, model: str) -> None:
    panels = []
    if (out / "reward_model" / "metrics.jsonl").exists():
        panels += rm.panels(out / "reward_model" / "metrics.jsonl")[:2]
    m = out / "metrics.jsonl"
    panels += [("mean reward", m, ["train_mean_reward", "eval_mean_reward"]),
               ("KL to the starting model (per token)", m, ["train_kl", "eval_kl"]),
               ("policy loss (about 0 by design: RLOO's advantages are centred)", m,
                ["train_policy_loss", "eval_policy_loss"])]
    curves.plot_panels(panels, out / "curves.png", title=f"{method} on {model}")
