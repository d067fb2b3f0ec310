"""Reward-model recipe: the base model with a scalar head, trained on preference pairs.

setup: validate the pairs, load the base model as a sequence classifier (one output), render
       every prompt as inference renders it, tokenize prompt + answer + end-of-turn;
train: TRL's RewardTrainer (pairwise loss -log sigmoid(r_chosen - r_rejected)), LoRA or full,
       pairwise accuracy on held-out pairs at every evaluation, resumable from checkpoints;
save:  the reward model as one plain folder (a LoRA adapter is merged, so anything that loads a
       sequence classifier can use it), with what `RewardModel` needs to score texts the same way.
"""

from __future__ import annotations

import logging

from datasets import Dataset
from transformers import set_seed

from mentor.jobs import Job, TunedModel
from mentor.model_record import ModelRecord
from mentor.rlhf import curves, setup
from mentor.rlhf.config import RewardModelConfig
from mentor.rlhf.render import Renderer
from mentor.rlhf.reward import card, distinct_pad_token, load_classifier, plot, scored_pair_rows
from mentor.training import arguments
from mentor.training.lora import lora_config
from mentor.training.outputs import finish
from mentor.training.run import checkpoints_of, train

log = logging.getLogger("mentor")


def run(cfg: RewardModelConfig, job: Job) -> TunedModel:
    trainer, renderer, fitted = prepare(cfg, job)
    train(trainer, job, quiet=setup.known_warnings)
    return save(cfg, job, trainer, renderer, fitted)


def prepare(cfg: RewardModelConfig, job: Job) -> tuple[object, Renderer, setup.Fit]:
    """The pairs validated and rendered, the classifier loaded with a new score head, the trainer built."""
    from trl import RewardConfig, RewardTrainer

    out = job.folder
    # every data problem surfaces before any model is loaded
    train_pairs, eval_pairs = setup.load_pairs(cfg, cfg.preference_dataset, cfg.eval_dataset)
    fitted = setup.fit(cfg, 2, cfg.prompt_sequence_length + cfg.target_sequence_length, task_type="SEQ_CLS",
                       pairs=train_pairs + (eval_pairs or []))
    # held and quantized as the estimate says: it was loaded in fp32, unquantized, before the classifier
    loaded, base_ref, renderer = setup.start(cfg, out, cfg.prompt_sequence_length, cfg.target_sequence_length,
                                             fitted=fitted)
    tokenizer = loaded.tokenizer
    source = str(out / "start_model") if base_ref != cfg.model else loaded.source
    del loaded  # the reward model is the same weights with a score head, loaded as a classifier
    set_seed(cfg.seed)  # the new score head is drawn from this seed
    model = load_classifier(source, fitted.dtype, cfg.quantization)
    distinct_pad_token(tokenizer, model)
    model.config.pad_token_id = tokenizer.pad_token_id
    train_ds = Dataset.from_list(scored_pair_rows(train_pairs, renderer))
    eval_ds = Dataset.from_list(scored_pair_rows(eval_pairs, renderer)) if eval_pairs else None
    log.info("reward model data: %s", renderer.summary())

    args = arguments.training_arguments(
        cfg, checkpoints_of(job), eval_ds is not None, arguments.use_bf16(cfg.bf16), RewardConfig,
        steps=cfg.reward_model_train_steps, max_length=None, center_rewards_coefficient=0.01,
        checkpointing=fitted.checkpointing)
    with setup.known_warnings():
        trainer = RewardTrainer(
            model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer,
            callbacks=curves.callbacks(out, curves.REWARD_MODEL_METRICS,
                                       ["train_reward_model_loss", "train_reward_model_accuracy"], "reward model"),
            peft_config=lora_config(cfg, "SEQ_CLS") if cfg.tuning == "lora" else None,
        )
    setup.trainable_in_fp32_without_autocast(trainer)
    return trainer, renderer, fitted


def save(cfg: RewardModelConfig, job: Job, trainer, renderer: Renderer, fitted: setup.Fit) -> TunedModel:
    """The reward model as one self-contained folder (the kind produces a reward model: `finish` merges
    a LoRA adapter into it), with what `RewardModel` needs to score texts as it was trained to."""
    out = job.folder
    record = ModelRecord(use_chat_template=renderer.use_chat_template, instruction=cfg.instruction,
                         prompt_sequence_length=renderer.max_prompt_tokens,
                         target_sequence_length=renderer.max_answer_tokens)
    metrics = {**curves.final_eval(trainer, curves.REWARD_MODEL_METRICS),
               **curves.last_train_metrics(trainer, curves.REWARD_MODEL_METRICS)}
    reward_card, notes = card(cfg, out)
    return finish(job, trainer, record, metrics=metrics, notes=notes, card=reward_card,
                  extra={"truncated": renderer.counts, "memory": fitted.record()},
                  plot=lambda result: plot(out, result.described, cfg.model),
                  temporary=(out / "start_model",))  # the starting model merged from an adapter, not needed now
