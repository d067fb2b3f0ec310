"""Reinforcement recipe: GRPO with a grader's rewards (OpenAI's `reinforcement` method).

setup: the data (every line checked), the grader (built, and tried on a line of each file before any
       model loads), the memory estimate, and the starting model. A model mentor made (a tuned or
       distilled one: the usual start) is prompted as it learned: its chat template, instruction and
       task prefix, read from its folder's record and kept in the new model's.
train: TRL's GRPOTrainer. Each step samples `num_generations` answers to each of `batch_size`
       prompts, the grader scores every answer against its line, and each answer's advantage is its
       reward less the mean of its prompt's answers (over their spread); a KL penalty (`kl_coeff`)
       keeps the policy near the starting model. The validation set's mean reward is measured before
       the first step and at every evaluation; it picks the checkpoint and stops early.
save:  the policy in OUTPUT/model like a tuned model (`mentor predict OUTPUT ...` works).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from datasets import Dataset

from mentor.graders import build_grader, parse_grader
from mentor.jobs import Job, TunedModel
from mentor.model_record import ModelRecord
from mentor.models import load_tokenizer
from mentor.reinforce.config import ReinforceConfig
from mentor.reinforce.data import Item, load_items
from mentor.reinforce.reward import GraderReward, prompt_rows
from mentor.rlhf import curves, policy, setup
from mentor.serving.pool import Servable
from mentor.serving.predict import PromptStyle
from mentor.training import arguments
from mentor.training.lora import lora_config
from mentor.training.outputs import Before, finish
from mentor.training.run import checkpoints_of, train
from mentor.training.trainer import SeededEvaluation

log = logging.getLogger("mentor")

# TRL's GRPO metric names -> mentor's ("train_" / "eval_" in front); OpenAI's reinforcement jobs
# report train_reward_mean and valid_reward_mean
METRICS = {"loss": "policy_loss", "reward": "reward_mean", "reward_std": "reward_std", "kl": "kl",
           "entropy": "entropy", "completions/mean_length": "response_length_mean",
           "completions/clipped_ratio": "clipped_response_ratio", "frac_reward_zero_std": "frac_reward_zero_std",
           "grader_error_rate": "grader_error_rate"}
SELECTED_BY = "eval_reward"  # TRL's name of the validation reward, which picks the checkpoint
BEFORE = "before_rl.json"  # the validation set's metrics before the first step (a resumed run reads them)


def run(cfg: ReinforceConfig, job: Job) -> TunedModel:
    """GRPO against the grader; rerunning the same job resumes it."""
    items, held_out, grader = load_inputs(cfg)
    with grader:  # its worker processes (a python grader's sandbox) end with the job
        prep, record = build_trainer(cfg, job, items, held_out, grader)
        train(prep.trainer, job, quiet=setup.known_warnings)
        return save(cfg, job, prep, record, grader)


def load_inputs(cfg: ReinforceConfig):
    """The data and the grader, every line and field checked before any model loads."""
    from mentor.training.setup import check_eval_size

    items = load_items(cfg.data, cfg.max_examples)
    held_out = load_items(cfg.evaluation_data, cfg.max_examples) if cfg.evaluation_data else None
    if held_out is not None:
        check_eval_size(len(held_out))
    given, where = cfg.grader_spec()
    # checked against a line of each file: a template naming a field the data lacks is refused now
    spec = parse_grader(given, where=where, item=items[0].row)
    if held_out:
        parse_grader(spec, where=where, item=held_out[0].row)
    grader = build_grader(spec)
    return items, held_out, grader


def build_trainer(cfg: ReinforceConfig, job: Job, items: list[Item], held_out: list[Item] | None, grader):
    from trl import GRPOConfig, GRPOTrainer

    out = job.folder
    start = Servable.of(cfg.model).record
    style, longest = measured_prompts(cfg, start, [*items, *(held_out or [])])
    # beside the policy: with full tuning and a KL penalty, a frozen reference copy; batches are padded
    # to their longest prompt, not to the limit
    fitted = setup.fit(cfg, cfg.num_generations, min(longest, cfg.max_prompt_tokens) + cfg.max_completion_tokens,
                       weight_copies=int(cfg.tuning == "full" and cfg.kl_coeff > 0))
    loaded, base_ref, renderer = setup.start(cfg, out, cfg.max_prompt_tokens, cfg.max_completion_tokens,
                                             ("max_prompt_tokens", "max_completion_tokens"), fitted=fitted)
    tokenizer = loaded.tokenizer

    def render(item: Item) -> str:
        return renderer.clip_prompt(style.render(tokenizer, item.text))

    train_ds = Dataset.from_list(prompt_rows(items, render))
    eval_ds = Dataset.from_list(prompt_rows(held_out, render)) if held_out else None
    log.info("prompts: %s", renderer.summary())
    has_eval = eval_ds is not None
    args = arguments.training_arguments(
        cfg, checkpoints_of(job), has_eval, arguments.use_bf16(cfg.bf16), GRPOConfig,
        batch_size=cfg.batch_size * cfg.num_generations, best_metric=SELECTED_BY, greater_is_better=True,
        num_generations=cfg.num_generations, num_generations_eval=cfg.eval_samples,
        max_completion_length=renderer.max_answer_tokens, beta=cfg.kl_coeff, temperature=cfg.temperature,
        loss_type=cfg.loss_type, steps_per_generation=1, num_iterations=1, log_completions=False,
        per_device_eval_batch_size=max(cfg.eval_samples, arguments.per_process_batch(cfg.batch_size)
                                       * cfg.eval_samples),
        checkpointing=fitted.checkpointing,
    )
    class Trainer(SeededEvaluation, GRPOTrainer):
        """GRPO whose validations sample the same draws each time (see SeededEvaluation)."""

    with setup.known_warnings():
        trainer = Trainer(
            model=loaded.model, reward_funcs=GraderReward(grader), args=args, train_dataset=train_ds,
            eval_dataset=eval_ds, processing_class=tokenizer,
            peft_config=lora_config(cfg, "CAUSAL_LM") if cfg.tuning == "lora" else None,
        )
    before = curves.follow(trainer, job, METRICS, ["train_reward_mean", "train_kl"], "reinforcement", BEFORE,
                           arguments.early_stopping(cfg, has_eval))
    setup.trainable_in_fp32_without_autocast(trainer)
    # the start's task and prefixes are kept: the new model is prompted, served and evaluated as it was
    record = ModelRecord(use_chat_template=style.use_chat_template, prompt_format=style.prompt_format,
                         is_seq2seq=False, max_input_tokens=renderer.max_prompt_tokens, instruction=style.instruction,
                         task=start.task, task_prefix=style.task_prefix, rationale_prefix=start.rationale_prefix)
    return policy.Prepared(trainer, renderer, base_ref, fitted, before), record


def measured_prompts(cfg: ReinforceConfig, start: ModelRecord, items: list[Item]) -> tuple[PromptStyle, int]:
    """How the prompts are rendered, and the longest in tokens (from the tokenizer alone, before any
    weights load). A model mentor made is prompted as it learned (its record: chat template,
    instruction, a step-by-step student's task prefix); another as the job's chat_template field says."""
    tokenizer = load_tokenizer(cfg.model)
    if start.kind or start.method:
        style = PromptStyle.of(start, tokenizer)
    else:
        template = cfg.chat_template == "auto" and bool(getattr(tokenizer, "chat_template", None))
        style = PromptStyle(template, "text", "", None)
    if cfg.instruction:
        style = replace(style, instruction=cfg.instruction)
    longest = max(len(tokenizer(style.render(tokenizer, i.text), add_special_tokens=True).input_ids) for i in items)
    return style, longest


def save(cfg: ReinforceConfig, job: Job, prep: policy.Prepared, record: ModelRecord, grader) -> TunedModel:
    """The policy saved like a tuned model (`mentor predict OUTPUT ...` works)."""
    out, trainer = job.folder, prep.trainer
    reward = trainer.reward_funcs[0]
    best_step = trainer.state.best_global_step if trainer.args.load_best_model_at_end else None
    metrics = {**curves.final_eval(trainer, METRICS), **curves.last_train_metrics(trainer, METRICS)}
    notes = [f"grader: {grader.spec.type} '{grader.spec.name}' ({reward.errors} of {reward.graded} samples it could "
             "not grade, scored 0)",
             f"GRPO (TRL): {cfg.num_generations} answers sampled per prompt at temperature {cfg.temperature}; KL "
             f"penalty coefficient (kl_coeff) {cfg.kl_coeff}; loss {cfg.loss_type}",
             *policy.notes(cfg, prep.before, "training", "the validation set")]
    return finish(
        job, trainer, record, metrics=metrics, best_step=best_step,
        extra={"before": prep.before, "grader_errors": reward.errors, "graded_samples": reward.graded,
               "truncated": prep.renderer.counts, "memory": prep.fitted.record()},
        notes=notes, keep_checkpoints=cfg.keep_checkpoints, plot=lambda result: plot(out, result.described, cfg.model),
        temporary=(out / BEFORE,), after_save=lambda model_dir: setup.finish_policy(cfg, out, model_dir, prep.base_ref),
        before=Before("the validation set", prep.before, ("eval_reward_mean", "eval_kl")))


def plot(out: Path, method: str, model: str) -> None:
    m = out / "metrics.jsonl"
    curves.plot_panels([("mean reward", m, ["train_reward_mean", "eval_reward_mean"]),
                        ("KL to the starting model (per token)", m, ["train_kl", "eval_kl"]),
                        ("response length (tokens)", m, ["train_response_length_mean", "eval_response_length_mean"])],
                       out / "curves.png", title=f"{method} on {model}")
