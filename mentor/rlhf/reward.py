"""Reward-model recipe: the base model with a scalar head, trained on preference pairs.

setup: validate the pairs, load the base model as a sequence classifier (one output), render
       every prompt as inference renders it, tokenize prompt + answer + end-of-turn;
train: TRL's RewardTrainer (pairwise loss -log sigmoid(r_chosen - r_rejected)), LoRA or full,
       pairwise accuracy on held-out pairs at every evaluation, resumable from checkpoints;
save:  the reward model as one plain folder (a LoRA adapter is merged, so anything that loads a
       sequence classifier can use it), with what `RewardModel` needs to score texts the same way.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, set_seed

from mentor.errors import MentorError
from mentor.models import resolve
from mentor.models.resolve import prepare_tokenizer
from mentor.recipes import common
from mentor.rlhf import common as rc
from mentor.rlhf.config import RewardModelConfig
from mentor.rlhf.data import PreferencePair, Prompt, load_preferences

REWARD_META = "mentor_model.json"


def pair_rows(pairs: list[PreferencePair], renderer: rc.Renderer) -> list[dict]:
    rows = []
    for pair in pairs:
        prompt = renderer.prompt(pair.prompt)
        rows.append({"chosen_ids": renderer.sequence_ids(prompt, renderer.answer(pair.chosen)),
                     "rejected_ids": renderer.sequence_ids(prompt, renderer.answer(pair.rejected))})
    return rows


def load_classifier(folder: str, dtype=torch.float32):
    from trl.trainer.reward_trainer import suppress_seqcls_warning

    with suppress_seqcls_warning():  # the new score head is expected to be missing from a causal checkpoint
        return AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1, dtype=dtype)


def train_reward_model(config: RewardModelConfig | None = None, **fields) -> common.TunedModel:
    """Train a reward model on preference pairs; rerunning the same job resumes it."""
    from trl import RewardConfig, RewardTrainer

    cfg = config or RewardModelConfig(**fields)
    out = common.prepare_output(cfg.output, cfg.model_dump())
    if (done := common.finished_job(out)) is not None:
        return done

    # setup: every data problem surfaces before any model is loaded
    train_pairs = load_preferences(cfg.preference_dataset, cfg.max_examples)
    eval_pairs = load_preferences(cfg.eval_dataset, cfg.max_examples) if cfg.eval_dataset else None
    if eval_pairs is not None:
        common.check_eval_size(len(eval_pairs))
    set_seed(cfg.seed)
    loaded, base_ref = rc.load_start_model(cfg.model, out)
    tokenizer = loaded.tokenizer
    source = str(out / "start_model") if base_ref != cfg.model else loaded.source
    del loaded
    set_seed(cfg.seed)  # the new score head is drawn from this seed
    model = load_classifier(source)
    model.config.pad_token_id = tokenizer.pad_token_id
    renderer = rc.Renderer.for_model(tokenizer, cfg.chat_template, cfg.instruction,
                                     cfg.prompt_sequence_length, cfg.target_sequence_length)
    train_ds = Dataset.from_list(pair_rows(train_pairs, renderer))
    eval_ds = Dataset.from_list(pair_rows(eval_pairs, renderer)) if eval_pairs else None
    print(f"[mentor] reward model data: {renderer.summary()}")

    bf16 = common.use_bf16(cfg.bf16)
    checkpoints = out / "checkpoints"
    args = rc.trl_arguments(RewardConfig, cfg, checkpoints, steps=cfg.reward_model_train_steps,
                            learning_rate=cfg.learning_rate, batch_size=cfg.batch_size, has_eval=eval_ds is not None,
                            bf16=bf16, max_length=None, center_rewards_coefficient=0.01)
    with rc.known_warnings():
        trainer = RewardTrainer(
            model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer,
            callbacks=rc.callbacks(out, rc.REWARD_MODEL_METRICS, ["train_reward_model_loss", "train_reward_model_accuracy"],
                                   "reward model"),
            peft_config=rc.lora_config(cfg, "SEQ_CLS") if cfg.method == "lora" else None,
        )
    rc.quiet(trainer)
    resume = common.last_complete_checkpoint(checkpoints)
    if resume:
        print(f"[mentor] resuming from {resume}")
    started = time.time()
    with rc.known_warnings():
        trainer.train(resume_from_checkpoint=resume)
    seconds = time.time() - started

    # save
    metrics = {**rc.final_eval(trainer, rc.REWARD_MODEL_METRICS), **rc.last_train_metrics(trainer, rc.REWARD_MODEL_METRICS)}
    final = trainer.model.merge_and_unload() if cfg.method == "lora" else trainer.model
    model_dir = out / "model"
    meta = {"kind": "reward_model", "base_model": cfg.model, "method": cfg.method,
            "use_chat_template": renderer.use_chat_template, "instruction": cfg.instruction,
            "prompt_sequence_length": cfg.prompt_sequence_length, "target_sequence_length": cfg.target_sequence_length}
    common.save_model(final, tokenizer, model_dir, meta)
    result = common.TunedModel(
        output=str(out), model_path=str(model_dir), base_model=cfg.model, method=f"reward-model-{cfg.method}",
        best_step=None, steps_run=trainer.state.global_step, metrics=metrics,
        extra={"seconds": round(seconds, 1), "truncated": renderer.counts},
    )
    plot(out, result.method, cfg.model)
    write_card(out, result, cfg, rc.data_hashes(preference_dataset=cfg.preference_dataset, eval_dataset=cfg.eval_dataset))
    common.write_result(out, result)
    shutil.rmtree(checkpoints, ignore_errors=True)
    shutil.rmtree(out / "start_model", ignore_errors=True)  # the reward model folder is self-contained
    print("\n[mentor] reward model done\n" + result.summary() + f"\ncurves: {out / 'curves.png'}"
          f"\nTensorBoard: tensorboard --logdir {out / 'tensorboard'}")
    return result


def panels(metrics: Path) -> list:
    return [("reward model loss", metrics, ["train_reward_model_loss", "eval_reward_model_loss"]),
            ("reward model pairwise accuracy", metrics, ["train_reward_model_accuracy", "eval_reward_model_accuracy"]),
            ("reward margin (chosen - rejected)", metrics, ["train_reward_margin", "eval_reward_margin"])]


def plot(out: Path, method: str, model: str) -> None:
    rc.plot_panels(panels(out / "metrics.jsonl"), out / "curves.png", title=f"{method} on {model}")


def write_card(out: Path, result: common.TunedModel, cfg, hashes: dict) -> None:
    text = f"""# Reward model on {result.base_model}

Made by mentor: `{result.base_model}` with a scalar head, trained on preference pairs with the
pairwise loss -log sigmoid(r(chosen) - r(rejected)). Higher scores mean preferred answers.

Use it: `mentor.rlhf.RewardModel("{result.output}").score(prompts, answers)`, or reuse it for
reinforcement learning with `mentor rlhf --reward-model {result.output} ...`. The folder
`{result.model_path}` is a plain sequence-classification model (one label).

- method: {cfg.method}{" (the LoRA adapter is merged into the saved model)" if cfg.method == "lora" else ""}
- steps run: {result.steps_run}
- instruction prepended to prompts: {cfg.instruction!r}

{common.card_body(result, cfg.model_dump(), hashes)}"""
    common.atomic_write(out / "README.md", text)


class RewardModel:
    """A trained reward model, scoring (prompt, answer) pairs exactly as it was trained to."""

    def __init__(self, ref: str, device: str | torch.device | None = None):
        folder = Path(resolve(ref))
        meta_path = folder / REWARD_META
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        if meta and meta.get("kind") != "reward_model":
            raise MentorError(f"{ref} is not a reward model (it is a {meta.get('method', 'tuned')} model); "
                              "train one with `mentor reward-model` or `mentor.rlhf.train_reward_model`")
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        prepare_tokenizer(self.tokenizer)
        self.model = load_classifier(str(folder)).eval()
        if getattr(self.model.config, "num_labels", 1) != 1:
            raise MentorError(f"{ref} has {self.model.config.num_labels} outputs; a reward model has one")
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.device = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        self.path = str(folder)
        self.renderer = rc.Renderer.for_model(
            self.tokenizer, "auto" if meta.get("use_chat_template", True) else "never", meta.get("instruction"),
            meta.get("prompt_sequence_length", 512), meta.get("target_sequence_length", 64))

    @torch.inference_mode()
    def score_ids(self, sequences: list[list[int]], batch_size: int = 16) -> list[float]:
        scores: list[float] = []
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(sequences), batch_size):
            chunk = sequences[start:start + batch_size]
            width = max(len(s) for s in chunk)
            ids = torch.tensor([s + [pad] * (width - len(s)) for s in chunk], device=self.device)
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in chunk], device=self.device)
            scores += self.model(input_ids=ids, attention_mask=mask).logits[:, 0].float().tolist()
        return scores

    def score(self, prompts: list[str | list[dict] | Prompt], answers: list[str], finished: list[bool] | None = None,
              batch_size: int = 16) -> list[float]:
        """Scores of answers to prompts (input texts, conversations ending with a user turn, or Prompts)."""
        if len(prompts) != len(answers):
            raise MentorError(f"{len(prompts)} prompts but {len(answers)} answers")
        finished = finished or [True] * len(answers)
        seqs = []
        for p, a, done in zip(prompts, answers, finished):
            if not isinstance(p, Prompt):
                p = Prompt([{"role": "user", "content": p}], "text") if isinstance(p, str) else Prompt(p, "chat")
            seqs.append(self.renderer.sequence_ids(self.renderer.prompt(p), self.renderer.answer(a), done))
        return self.score_ids(seqs, batch_size)

    def pairwise_accuracy(self, pairs: list[PreferencePair] | str) -> float:
        """How often the chosen answer scores above the rejected one."""
        pairs = load_preferences(pairs) if isinstance(pairs, (str, Path)) else pairs
        chosen = self.score([p.prompt for p in pairs], [p.chosen for p in pairs])
        rejected = self.score([p.prompt for p in pairs], [p.rejected for p in pairs])
        return sum(c > r for c, r in zip(chosen, rejected)) / len(pairs)
