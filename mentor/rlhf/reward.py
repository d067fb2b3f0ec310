"""Reward models: training rows from preference pairs, the curves and card of a reward-model
job, and `RewardModel`, which scores (prompt, answer) pairs exactly as the model was trained to."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from mentor.errors import MentorError
from mentor.model_record import ModelRecord
from mentor.models import resolve
from mentor.models.resolve import prepare_tokenizer
from mentor.rlhf import curves
from mentor.rlhf.data import PreferencePair, Prompt, load_preferences
from mentor.rlhf.render import Renderer
from mentor.training.outputs import Card

log = logging.getLogger("mentor")


def scored_pair_rows(pairs: list[PreferencePair], renderer: Renderer) -> list[dict]:
    """A reward model's training rows: the token ids of prompt and answer it scores, chosen and rejected."""
    rows = []
    for pair in pairs:
        prompt = renderer.prompt(pair.prompt)
        rows.append({"chosen_ids": renderer.scored_ids(prompt, pair.chosen),
                     "rejected_ids": renderer.scored_ids(prompt, pair.rejected)})
    return rows


def reward_model_folder(ref: str) -> tuple[Path, ModelRecord]:
    """The folder of a reward model and what mentor recorded of it, refused before any weights load
    when it is not one: a language model would be scored through a freshly drawn, random head."""
    folder = Path(resolve(ref))
    local = (folder / "config.json").exists()
    if not local and (folder.exists() or str(folder).startswith((".", "/", "~"))):
        raise MentorError(f"reward model not found: {ref} (give a `mentor reward-model` output or a model folder)")
    record = ModelRecord.read(folder) if local else None
    if record is not None:
        if not record.is_reward_model:
            raise MentorError(f"{ref} is not a reward model (it is a {record.method or 'tuned'} model); "
                              "train one with `mentor reward-model` or `mentor.reward_model(...)`")
        return folder, record
    try:  # a hub id: its config says what it is
        config = AutoConfig.from_pretrained(folder if local else ref)
    except OSError as err:
        raise MentorError(f"reward model not found: {ref} ({str(err).splitlines()[0][:200]})") from None
    architectures = config.architectures or ["model of unknown architecture"]
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise MentorError(f"{ref} is not a reward model: a {architectures[0]} has no trained score head (its "
                          "scores would be random); train one with `mentor reward-model`")
    if config.num_labels != 1:
        raise MentorError(f"{ref} has {config.num_labels} outputs; a reward model has one")
    return folder, ModelRecord()  # not mentor's: scored as mentor scores by default


def distinct_pad_token(tokenizer, model) -> None:
    """A sequence classifier scores the last token that is not padding: with padding = end of turn
    (SmolLM2, Llama) the end a finished answer carries would be skipped, and finished and cut-off
    answers would score alike. The unknown token pads instead, or a new one when there is none."""
    if tokenizer.pad_token_id != tokenizer.eos_token_id:
        return
    if tokenizer.unk_token is not None and tokenizer.unk_token_id != tokenizer.eos_token_id:
        tokenizer.pad_token = tokenizer.unk_token
    else:
        tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # its row is only ever masked
    log.info("reward model pads with %r, not the end-of-turn token %r", tokenizer.pad_token, tokenizer.eos_token)


def load_classifier(folder: str, dtype=torch.float32, quantization: str = "none"):
    from trl.trainer.reward_trainer import suppress_seqcls_warning

    from mentor.models.quantize import device_map, quantization_config

    quantized = quantization_config(quantization, dtype)
    kwargs = dict(quantization_config=quantized, device_map=device_map()) if quantized is not None else {}
    with suppress_seqcls_warning():  # the new score head is expected to be missing from a causal checkpoint
        return AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1, dtype=dtype, **kwargs)


def panels(metrics: Path) -> list:
    return [("reward model loss", metrics, ["train_reward_model_loss", "eval_reward_model_loss"]),
            ("reward model pairwise accuracy", metrics, ["train_reward_model_accuracy", "eval_reward_model_accuracy"]),
            ("reward margin (chosen - rejected)", metrics, ["train_reward_margin", "eval_reward_margin"])]


def plot(out: Path, method: str, model: str) -> None:
    curves.plot_panels(panels(out / "metrics.jsonl"), out / "curves.png", title=f"{method} on {model}")


def card(cfg, out: Path) -> tuple[Card, list[str]]:
    """A reward model's card: what it is and how to use it (it scores, it never generates), and its notes."""
    intro = f"""Made by mentor: `{cfg.model}` with a scalar head, trained on preference pairs with the
pairwise loss -log sigmoid(r(chosen) - r(rejected)). Higher scores mean preferred answers.

Use it: `mentor.rlhf.RewardModel("{out}").score(prompts, answers)`, or reuse it for
reinforcement learning with `mentor rlhf --reward-model {out} ...`. The folder
`{out / "model"}` is a plain sequence-classification model (one label)."""
    notes = [f"instruction prepended to prompts: {cfg.instruction!r}"]
    if cfg.tuning == "lora":
        notes.append("the LoRA adapter is merged into the saved model")
    return Card(title=f"Reward model on {cfg.model}", intro=intro), notes


class RewardModel:
    """A trained reward model, scoring (prompt, answer) pairs exactly as it was trained to."""

    def __init__(self, ref: str, device: str | torch.device | None = None):
        folder, record = reward_model_folder(ref)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        prepare_tokenizer(self.tokenizer)
        self.model = load_classifier(str(folder)).eval()
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.device = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        self.path = str(folder)
        self.renderer = Renderer.for_model(
            self.tokenizer, "never" if record.use_chat_template is False else "auto", record.instruction,
            record.prompt_sequence_length, record.target_sequence_length)

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
            seqs.append(self.renderer.scored_ids(self.renderer.prompt(p), a, done))
        return self.score_ids(seqs, batch_size)

    def pairwise_accuracy(self, pairs: list[PreferencePair] | str) -> float:
        """How often the chosen answer scores above the rejected one."""
        pairs = load_preferences(pairs) if isinstance(pairs, (str, Path)) else pairs
        chosen = self.score([p.prompt for p in pairs], [p.chosen for p in pairs])
        rejected = self.score([p.prompt for p in pairs], [p.rejected for p in pairs])
        return sum(c > r for c, r in zip(chosen, rejected)) / len(pairs)
