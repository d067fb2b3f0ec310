"""DPO recipe: preference tuning without a reward model.

setup: validate the pairs, load the starting model (a LoRA adapter is merged first), render
       every prompt as inference renders it, clip prompts (keeping their end) and answers;
train: TRL's DPOTrainer (loss -log sigmoid(beta * (chosen log-ratio - rejected log-ratio)),
       log-ratios against the frozen starting model), LoRA or full, with the tuning job's
       evaluations, early stopping and best-checkpoint selection on the held-out DPO loss;
save:  the model like a tuned model, the held-out log-prob margin before and after.
"""

from __future__ import annotations

import logging
import shutil

from datasets import Dataset

from mentor.jobs import Job, TunedModel
from mentor.model_record import ModelRecord
from mentor.rlhf import curves, setup
from mentor.rlhf.config import DPOConfig
from mentor.rlhf.data import PreferencePair
from mentor.rlhf.render import Renderer
from mentor.training import arguments
from mentor.training.lora import lora_config
from mentor.training.outputs import model_card, save_trained
from mentor.training.run import checkpoints_of, train

log = logging.getLogger("mentor")


def pair_rows(pairs: list[PreferencePair], renderer: Renderer) -> list[dict]:
    return [{"prompt": renderer.prompt(p.prompt), "chosen": renderer.answer(p.chosen),
             "rejected": renderer.answer(p.rejected)} for p in pairs]


def run(cfg: DPOConfig, job: Job) -> TunedModel:
    from trl import DPOConfig as TRLDPOConfig
    from trl import DPOTrainer

    out = job.folder
    # -- setup
    train_pairs, eval_pairs = setup.load_pairs(cfg, cfg.data, cfg.evaluation_data)
    # a pair is two sequences (chosen, rejected); full DPO keeps a frozen reference copy of the model
    fitted = setup.fit(cfg, 2, cfg.max_input_tokens + cfg.max_output_tokens, weight_copies=int(cfg.tuning == "full"),
                       pairs=train_pairs + (eval_pairs or []))
    loaded, base_ref, renderer = setup.start(cfg, out, cfg.max_input_tokens, cfg.max_output_tokens,
                                             ("max_input_tokens", "max_output_tokens"), fitted)
    tokenizer = loaded.tokenizer
    train_ds = Dataset.from_list(pair_rows(train_pairs, renderer))
    eval_ds = Dataset.from_list(pair_rows(eval_pairs, renderer)) if eval_pairs else None
    log.info("preference data: %s", renderer.summary())

    # -- train
    has_eval = eval_ds is not None
    select = has_eval and cfg.checkpoint_selection
    args = arguments.training_arguments(cfg, checkpoints_of(job), has_eval, arguments.use_bf16(cfg.bf16), TRLDPOConfig,
                                        best_metric="eval_loss", greater_is_better=False, beta=cfg.beta,
                                        max_length=None, checkpointing=fitted.checkpointing)
    with setup.known_warnings():
        trainer = DPOTrainer(
            model=loaded.model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer,
            callbacks=arguments.early_stopping(cfg, has_eval),
            peft_config=lora_config(cfg, "CAUSAL_LM") if cfg.tuning == "lora" else None,
        )
    before_path = out / "before_dpo.json"
    before = curves.starting_point(trainer, job, curves.DPO_METRICS, before_path.name)
    for cb in curves.callbacks(out, curves.DPO_METRICS, ["train_dpo_loss", "train_reward_margin"], "DPO", before):
        trainer.add_callback(cb)
    setup.trainable_in_fp32_without_autocast(trainer)
    train(trainer, job, quiet=setup.known_warnings)

    # -- save
    state = trainer.state
    best_step = state.best_global_step if select else None
    metrics = {**curves.final_eval(trainer, curves.DPO_METRICS), **curves.last_train_metrics(trainer, curves.DPO_METRICS)}
    model_dir = out / "model"
    method = f"dpo ({cfg.tuning})"
    record = ModelRecord(kind=job.kind, base_model=cfg.model, method=method, tuning=cfg.tuning,
                         use_chat_template=renderer.use_chat_template, prompt_format=renderer.prompt_format,
                         is_seq2seq=False, max_input_tokens=renderer.max_prompt_tokens, instruction=cfg.instruction)
    save_trained(trainer, model_dir, record)
    result = TunedModel(
        output=str(out), model_path=str(model_dir), base_model=cfg.model, method=method,
        best_step=best_step, steps_run=state.global_step, metrics=metrics,
        extra={"seconds": round(job.train_seconds, 1), "before": before, "truncated": renderer.counts,
               "early_stopped": state.global_step < cfg.train_steps, "memory": fitted.record()},
    )
    if not job.main:
        return result
    setup.finish_policy(cfg, out, model_dir, base_ref)
    m = out / "metrics.jsonl"
    curves.plot_panels([("DPO loss", m, ["train_dpo_loss", "eval_dpo_loss"]),
                    ("reward margin: beta x (chosen - rejected log-ratio)", m, ["train_reward_margin", "eval_reward_margin"]),
                    ("log-prob margin: chosen - rejected", m, ["train_logprob_margin", "eval_logprob_margin"])],
                   out / "curves.png", title=f"{result.method} on {cfg.model} (beta {cfg.beta})")
    notes = [f"DPO (TRL) with beta {cfg.beta}; the reference is the starting model"]
    if cfg.instruction:
        notes.append(f"every prompt was prefixed with the instruction {cfg.instruction!r}: prefix it when predicting")
    if before:
        notes.append("before DPO, on held-out pairs: " + ", ".join(f"{k} {v:.4f}" for k, v in before.items()))
    model_card(job, result, notes)
    if not cfg.keep_checkpoints:
        job.on_success(lambda: shutil.rmtree(checkpoints_of(job), ignore_errors=True))
    job.on_success(lambda: before_path.unlink(missing_ok=True))
    lines = [f"  {k}: {before[k]:.4f} -> {metrics[k]:.4f}" for k in ("eval_dpo_loss", "eval_logprob_margin")
             if k in before and k in metrics]
    log.info("done\n%s%s\ncurves: %s\nTensorBoard: tensorboard --logdir %s", result.summary(),
             "\non held-out pairs, before -> after:\n" + "\n".join(lines) if lines else "", out / "curves.png",
             out / "tensorboard")
    return result
