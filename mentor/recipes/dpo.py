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

from datasets import Dataset

from mentor.jobs import Job, TunedModel
from mentor.model_record import ModelRecord
from mentor.rlhf import curves, policy, setup
from mentor.rlhf.config import DPOConfig
from mentor.rlhf.data import PreferencePair
from mentor.rlhf.render import Renderer
from mentor.training import arguments
from mentor.training.lora import lora_config
from mentor.training.outputs import Before, finish
from mentor.training.run import checkpoints_of, train

log = logging.getLogger("mentor")
BEFORE = "before_dpo.json"  # the held-out metrics before the first step, kept until the job succeeds


def dpo_rows(pairs: list[PreferencePair], renderer: Renderer) -> list[dict]:
    """TRL's DPO rows: the rendered prompt and the chosen and rejected answers, as text."""
    return [{"prompt": renderer.prompt(p.prompt), "chosen": renderer.answer(p.chosen),
             "rejected": renderer.answer(p.rejected)} for p in pairs]


def run(cfg: DPOConfig, job: Job) -> TunedModel:
    prep = prepare(cfg, job)
    train(prep.trainer, job, quiet=setup.known_warnings)
    return save(cfg, job, prep)


def prepare(cfg: DPOConfig, job: Job) -> policy.Prepared:
    """The pairs validated and rendered, the starting model loaded, the trainer built and the start measured."""
    from trl import DPOConfig as TRLDPOConfig
    from trl import DPOTrainer

    out = job.folder
    train_pairs, eval_pairs = setup.load_pairs(cfg, cfg.data, cfg.evaluation_data)
    # a pair is two sequences (chosen, rejected); full DPO keeps a frozen reference copy of the model
    fitted = setup.fit(cfg, 2, cfg.max_input_tokens + cfg.max_output_tokens, weight_copies=int(cfg.tuning == "full"),
                       pairs=train_pairs + (eval_pairs or []))
    loaded, base_ref, renderer = setup.start(cfg, out, cfg.max_input_tokens, cfg.max_output_tokens,
                                             ("max_input_tokens", "max_output_tokens"), fitted)
    train_ds = Dataset.from_list(dpo_rows(train_pairs, renderer))
    eval_ds = Dataset.from_list(dpo_rows(eval_pairs, renderer)) if eval_pairs else None
    log.info("preference data: %s", renderer.summary())

    has_eval = eval_ds is not None
    args = arguments.training_arguments(cfg, checkpoints_of(job), has_eval, arguments.use_bf16(cfg.bf16), TRLDPOConfig,
                                        best_metric="eval_loss", greater_is_better=False, beta=cfg.beta,
                                        max_length=None, checkpointing=fitted.checkpointing)
    with setup.known_warnings():
        trainer = DPOTrainer(
            model=loaded.model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
            processing_class=loaded.tokenizer, callbacks=arguments.early_stopping(cfg, has_eval),
            peft_config=lora_config(cfg, "CAUSAL_LM") if cfg.tuning == "lora" else None,
        )
    before = curves.starting_point(trainer, job, curves.DPO_METRICS, BEFORE)
    for cb in curves.callbacks(out, curves.DPO_METRICS, ["train_dpo_loss", "train_reward_margin"], "DPO", before):
        trainer.add_callback(cb)
    setup.trainable_in_fp32_without_autocast(trainer)
    return policy.Prepared(trainer, renderer, base_ref, fitted, before)


def save(cfg: DPOConfig, job: Job, prep: policy.Prepared) -> TunedModel:
    """The policy saved like a tuned model, with its DPO curves and the held-out margins before and after."""
    out, trainer, renderer = job.folder, prep.trainer, prep.renderer
    record = ModelRecord(use_chat_template=renderer.use_chat_template, prompt_format=renderer.prompt_format,
                         is_seq2seq=False, max_input_tokens=renderer.max_prompt_tokens, instruction=cfg.instruction)
    metrics = {**curves.final_eval(trainer, curves.DPO_METRICS),
               **curves.last_train_metrics(trainer, curves.DPO_METRICS)}

    def plot(result: TunedModel) -> None:
        m = out / "metrics.jsonl"
        curves.plot_panels([("DPO loss", m, ["train_dpo_loss", "eval_dpo_loss"]),
                            ("reward margin: beta x (chosen - rejected log-ratio)", m,
                             ["train_reward_margin", "eval_reward_margin"]),
                            ("log-prob margin: chosen - rejected", m, ["train_logprob_margin", "eval_logprob_margin"])],
                           out / "curves.png", title=f"{result.described} on {cfg.model} (beta {cfg.beta})")

    selected = trainer.eval_dataset is not None and cfg.checkpoint_selection
    return finish(
        job, trainer, record, metrics=metrics, best_step=trainer.state.best_global_step if selected else None,
        extra={"before": prep.before, "truncated": renderer.counts,
               "early_stopped": trainer.state.global_step < cfg.train_steps, "memory": prep.fitted.record()},
        notes=[f"DPO (TRL) with beta {cfg.beta}; the reference is the starting model",
               *policy.notes(cfg, prep.before, "DPO", "held-out pairs")],
        keep_checkpoints=cfg.keep_checkpoints, plot=plot, temporary=(out / BEFORE,),
        after_save=lambda model_dir: setup.finish_policy(cfg, out, model_dir, prep.base_ref),
        before=Before("held-out pairs", prep.before, ("eval_dpo_loss", "eval_logprob_margin")))
