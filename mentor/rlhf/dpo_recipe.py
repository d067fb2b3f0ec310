"""DPO recipe: preference tuning without a reward model.

setup: validate the pairs, load the starting model (a LoRA adapter is merged first), render
       every prompt as inference renders it, clip prompts (keeping their end) and answers;
train: TRL's DPOTrainer (loss -log sigmoid(beta * (chosen log-ratio - rejected log-ratio)),
       log-ratios against the frozen starting model), LoRA or full, with the tuning recipe's
       evaluations, early stopping and best-checkpoint selection on the held-out DPO loss;
save:  the model like a tuned model, the held-out log-prob margin before and after.
"""

from __future__ import annotations

import json
import shutil
import time

from datasets import Dataset
from transformers import set_seed

from mentor.recipes import common
from mentor.rlhf import common as rc
from mentor.rlhf.config import DPOConfig
from mentor.rlhf.data import PreferencePair, load_preferences


def pair_rows(pairs: list[PreferencePair], renderer: rc.Renderer) -> list[dict]:
    return [{"prompt": renderer.prompt(p.prompt), "chosen": renderer.answer(p.chosen),
             "rejected": renderer.answer(p.rejected)} for p in pairs]


def dpo(config: DPOConfig | None = None, **fields) -> common.TunedModel:
    """Tune a model on preference pairs with DPO; rerunning the same job resumes it."""
    from trl import DPOConfig as TRLDPOConfig
    from trl import DPOTrainer

    cfg = config or DPOConfig(**fields)
    out = common.prepare_output(cfg.output, cfg.model_dump())
    if (done := common.finished_job(out)) is not None:
        return done

    # setup
    train_pairs = load_preferences(cfg.data, cfg.max_examples)
    eval_pairs = load_preferences(cfg.evaluation_data, cfg.max_examples) if cfg.evaluation_data else None
    if eval_pairs is not None:
        common.check_eval_size(len(eval_pairs))
    set_seed(cfg.seed)
    loaded, base_ref = rc.load_start_model(cfg.model, out)
    tokenizer = loaded.tokenizer
    renderer = rc.Renderer.for_model(tokenizer, cfg.chat_template, cfg.instruction,
                                     cfg.max_input_tokens, cfg.max_output_tokens)
    train_ds = Dataset.from_list(pair_rows(train_pairs, renderer))
    eval_ds = Dataset.from_list(pair_rows(eval_pairs, renderer)) if eval_pairs else None
    print(f"[mentor] preference data: {renderer.summary()}")

    bf16 = common.use_bf16(cfg.bf16)
    checkpoints = out / "checkpoints"
    has_eval = eval_ds is not None
    select = has_eval and cfg.checkpoint_selection
    args = rc.trl_arguments(
        TRLDPOConfig, cfg, checkpoints, steps=cfg.train_steps, learning_rate=cfg.learning_rate,
        batch_size=cfg.batch_size, has_eval=has_eval, bf16=bf16, beta=cfg.beta, max_length=None,
        save_total_limit=2 if select else 1, load_best_model_at_end=select,
        metric_for_best_model="eval_loss" if has_eval else None, greater_is_better=False,
    )
    with rc.known_warnings():
        trainer = DPOTrainer(
            model=loaded.model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer,
            callbacks=common.callbacks_for(cfg, has_eval),
            peft_config=rc.lora_config(cfg, "CAUSAL_LM") if cfg.method == "lora" else None,
        )
    rc.quiet(trainer)
    resume = common.last_complete_checkpoint(checkpoints)
    before_path = out / "before_dpo.json"
    before = {}
    if has_eval:  # the starting point on held-out pairs, as the first point of the eval curves
        if before_path.exists():
            before = json.loads(before_path.read_text())
        elif not resume:
            before = rc.final_eval(trainer, rc.DPO_METRICS)
            common.atomic_write(before_path, json.dumps(before))
    for cb in rc.callbacks(out, rc.DPO_METRICS, ["train_dpo_loss", "train_reward_margin"], "DPO", before):
        trainer.add_callback(cb)
    if resume:
        print(f"[mentor] resuming from {resume}")
    started = time.time()
    with rc.known_warnings():
        trainer.train(resume_from_checkpoint=resume)
    seconds = time.time() - started

    # save
    state = trainer.state
    best_step = state.best_global_step if select else None
    metrics = {**rc.final_eval(trainer, rc.DPO_METRICS), **rc.last_train_metrics(trainer, rc.DPO_METRICS)}
    model_dir = out / "model"
    meta = {"base_model": cfg.model, "method": f"dpo-{cfg.method}", "use_chat_template": renderer.use_chat_template,
            "is_seq2seq": False, "max_input_tokens": cfg.max_input_tokens, "instruction": cfg.instruction}
    common.save_model(trainer.model, tokenizer, model_dir, meta)
    rc.write_meta(model_dir, base_ref)
    if cfg.method == "lora" and cfg.merge_adapter:
        common.merge_adapter(model_dir, out / "merged")
    if base_ref == cfg.model or cfg.method == "full":
        shutil.rmtree(out / "start_model", ignore_errors=True)
    result = common.TunedModel(
        output=str(out), model_path=str(model_dir), base_model=cfg.model, method=f"dpo-{cfg.method}",
        best_step=best_step, steps_run=state.global_step, metrics=metrics,
        extra={"seconds": round(seconds, 1), "before": before, "truncated": renderer.counts,
               "early_stopped": state.global_step < cfg.train_steps},
    )
    m = out / "metrics.jsonl"
    rc.plot_panels([("DPO loss", m, ["train_dpo_loss", "eval_dpo_loss"]),
                    ("reward margin: beta x (chosen - rejected log-ratio)", m, ["train_reward_margin", "eval_reward_margin"]),
                    ("log-prob margin: chosen - rejected", m, ["train_logprob_margin", "eval_logprob_margin"])],
                   out / "curves.png", title=f"{result.method} on {cfg.model} (beta {cfg.beta})")
    notes = [f"DPO (TRL) with beta {cfg.beta}; the reference is the starting model"]
    if cfg.instruction:
        notes.append(f"every prompt was prefixed with the instruction {cfg.instruction!r}: prefix it when predicting")
    if before:
        notes.append("before DPO, on held-out pairs: " + ", ".join(f"{k} {v:.4f}" for k, v in before.items()))
    common.model_card(out, result, cfg.model_dump(), rc.data_hashes(data=cfg.data, evaluation_data=cfg.evaluation_data),
                      notes)
    common.write_result(out, result)
    shutil.rmtree(checkpoints, ignore_errors=True)
    before_path.unlink(missing_ok=True)
    lines = [f"  {k}: {before[k]:.4f} -> {metrics[k]:.4f}" for k in ("eval_dpo_loss", "eval_logprob_margin")
             if k in before and k in metrics]
    print("\n[mentor] done\n" + result.summary()
          + ("\non held-out pairs, before -> after:\n" + "\n".join(lines) if lines else "")
          + f"\ncurves: {out / 'curves.png'}\nTensorBoard: tensorboard --logdir {out / 'tensorboard'}")
    return result
