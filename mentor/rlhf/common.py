"""What the preference recipes share: prompt rendering, the starting model, metric names, curves.

Prompts are rendered once, by mentor, exactly as `mentor predict` renders them (the chat
template when the model has one), and handed to TRL as plain text; so the reward model,
the policy while it learns, and the tuned model at inference all see the same text.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mentor.data.encode import adds_bos, render_prompt
from mentor.errors import MentorError
from mentor.models import load_model
from mentor.rlhf.data import Prompt
from mentor.training.callbacks import MetricsRecorder, ProgressBar
from mentor.training.outputs import save_model
from mentor.training.plots import read_metrics

log = logging.getLogger("mentor")

# TRL's metric names -> mentor's, per recipe; train metrics get "train_", eval ones "eval_".
REWARD_MODEL_METRICS = {"loss": "reward_model_loss", "accuracy": "reward_model_accuracy", "margin": "reward_margin",
                        "mean_reward": "mean_reward", "min_reward": "min_reward", "max_reward": "max_reward"}
RL_METRICS = {"loss": "policy_loss", "reward": "mean_reward", "reward_std": "reward_std", "kl": "kl",
              "entropy": "entropy", "completions/mean_length": "mean_completion_length",
              "completions/clipped_ratio": "clipped_completion_ratio", "frac_reward_zero_std": "frac_reward_zero_std"}
DPO_METRICS = {"loss": "dpo_loss", "rewards/margins": "reward_margin", "rewards/accuracies": "reward_accuracy",
               "rewards/chosen": "chosen_reward", "rewards/rejected": "rejected_reward",
               "logps/chosen": "chosen_logp", "logps/rejected": "rejected_logp", "entropy": "entropy"}
KEEP_AS_IS = ("grad_norm", "learning_rate")


def rename(logs: dict, names: dict[str, str]) -> dict:
    """TRL's logged metrics under mentor's names; anything unnamed is left out."""
    out = {}
    for key, value in logs.items():
        if not isinstance(value, (int, float)) or (isinstance(value, float) and math.isnan(value)):
            continue
        if key in KEEP_AS_IS:
            out[key] = value
        elif key.startswith("eval_") and key[5:] in names:
            out["eval_" + names[key[5:]]] = value
        elif key in names:
            out["train_" + names[key]] = value
    for mode in ("train", "eval"):  # DPO: how much likelier the chosen answer is than the rejected one
        if f"{mode}_chosen_logp" in out and f"{mode}_rejected_logp" in out:
            out[f"{mode}_logprob_margin"] = out[f"{mode}_chosen_logp"] - out[f"{mode}_rejected_logp"]
    return out


class RenamedMetricsRecorder(MetricsRecorder):
    """metrics.jsonl and TensorBoard under mentor's names; `initial` rows (step 0, before training) first."""

    def __init__(self, folder: Path, names: dict[str, str], initial: dict | None = None):
        super().__init__(folder)
        self.names = names
        self.initial = initial or {}

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        seen = self.path.exists() and any(json.loads(l)["step"] == 0 for l in self.path.read_text().splitlines() if l.strip())
        if self.initial and state.global_step == 0 and self.writer is not None and not seen:
            row = {"step": 0, **self.initial}
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            for k, v in self.initial.items():
                self.writer.add_scalar(k, v, 0)
            self.writer.flush()

    def on_log(self, args, state, control, logs=None, **kwargs):
        super().on_log(args, state, control, logs=rename(logs or {}, self.names), **kwargs)


class MetricsProgressBar(ProgressBar):
    """The progress bar with the recipe's own headline metrics."""

    def __init__(self, names: dict[str, str], show: list[str], desc: str):
        super().__init__()
        self.names, self.show, self.desc = names, show, desc

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=self.desc, unit="step",
                            dynamic_ncols=True)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is None or not logs:
            return
        named = rename(logs, self.names)
        shown = {k.removeprefix("train_"): f"{named[k]:.3f}" for k in self.show if k in named}
        if shown:
            self.bar.set_postfix(shown, refresh=False)
        evals = {k: v for k, v in named.items() if k.startswith("eval_")}
        if evals:
            self.bar.write(f"step {state.global_step}: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(evals.items())))


def starting_point(trainer, job, names: dict, filename: str) -> dict:
    """The model before training on the held-out set, measured once (a resumed run reads it back), as
    the first point of the eval curves."""
    from mentor.files import atomic_write

    path = job.folder / filename
    if trainer.eval_dataset is None:
        return {}
    if path.exists():
        return json.loads(path.read_text())
    if job.state.get("step"):
        return {}  # resumed without it: the first run was killed before measuring
    before = final_eval(trainer, names)
    if job.main:
        atomic_write(path, json.dumps(before))
    return before


def start(cfg, out: Path, max_prompt_tokens: int, max_answer_tokens: int):
    """The starting model (seeded, a LoRA adapter merged first) and the renderer of its prompts:
    (loaded, base_ref, renderer)."""
    from transformers import set_seed

    set_seed(cfg.seed)
    loaded, base_ref = load_start_model(cfg.model, out)
    renderer = Renderer.for_model(loaded.tokenizer, cfg.chat_template, cfg.instruction, max_prompt_tokens,
                                  max_answer_tokens)
    return loaded, base_ref, renderer


def finish_policy(cfg, out: Path, model_dir: Path, base_ref: str) -> None:
    """After a policy is saved (rank 0): its base recorded beside an adapter, the merged copy if asked,
    and the merged starting model removed when nothing refers to it."""
    from mentor.training.outputs import merge_adapter

    write_meta(model_dir, base_ref)
    if cfg.tuning == "lora" and cfg.merge_adapter:
        merge_adapter(model_dir, out / "merged")
    if base_ref == cfg.model or cfg.tuning == "full":
        shutil.rmtree(out / "start_model", ignore_errors=True)


def load_pairs(cfg, train: str, evaluation: str | None):
    """Training and held-out preference pairs, validated before any model loads."""
    from mentor.rlhf.data import load_preferences
    from mentor.training.setup import check_eval_size

    pairs = load_preferences(train, cfg.max_examples)
    held_out = load_preferences(evaluation, cfg.max_examples) if evaluation else None
    if held_out is not None:
        check_eval_size(len(held_out))
    return pairs, held_out


def callbacks(out: Path, names: dict, show: list[str], desc: str, initial: dict | None = None) -> list:
    return [RenamedMetricsRecorder(out, names, initial), MetricsProgressBar(names, show, desc)]


@contextmanager
def known_warnings():
    """Silence what TRL and transformers print that a user can do nothing about: deprecation notices
    from inside them, and a progress bar for each of TRL's passes over a dataset already in memory."""
    import datasets

    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*deprecated.*", category=FutureWarning)
            yield
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()


@dataclass
class Renderer:
    """Prompt and answer texts as every stage sees them, clipped to the token limits."""

    tokenizer: object
    use_chat_template: bool
    instruction: str | None
    max_prompt_tokens: int
    max_answer_tokens: int
    counts: dict = field(default_factory=lambda: {"prompts": 0, "truncated_prompts": 0, "answers": 0, "truncated_answers": 0})

    def __post_init__(self):
        # The tokenizer adds a BOS itself: drop the one a chat template writes, or it would be doubled.
        self.adds_bos = adds_bos(self.tokenizer)

    @classmethod
    def for_model(cls, tokenizer, chat_template: str, instruction, max_prompt_tokens: int, max_answer_tokens: int):
        use = chat_template == "auto" and bool(getattr(tokenizer, "chat_template", None))
        return cls(tokenizer, use, instruction, max_prompt_tokens, max_answer_tokens)

    def prompt(self, p: Prompt) -> str:
        p = p.with_instruction(self.instruction)
        text = render_prompt(p.messages, self.tokenizer, self.use_chat_template, p.kind)
        if self.adds_bos and self.tokenizer.bos_token and text.startswith(self.tokenizer.bos_token):
            text = text[len(self.tokenizer.bos_token):]
        self.counts["prompts"] += 1
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        if len(ids) > self.max_prompt_tokens:  # keep the end: the generation prompt must stay next to the answer
            self.counts["truncated_prompts"] += 1
            text = self.tokenizer.decode(ids[-self.max_prompt_tokens:])
        return text

    def answer(self, text: str) -> str:
        return self.kept_answer(text)[0]

    def kept_answer(self, text: str) -> tuple[str, bool]:
        """The answer as it is trained on and scored (its first tokens), and whether it was cut."""
        self.counts["answers"] += 1
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        if len(ids) <= self.max_answer_tokens:
            return text, False
        self.counts["truncated_answers"] += 1
        return self.tokenizer.decode(ids[: self.max_answer_tokens]), True

    def scored_ids(self, prompt_text: str, answer: str, finished: bool = True) -> list[int]:
        """What a reward model reads: a cut answer never ends with the end-of-turn token, in training
        as in RL, where an answer stopped by the length limit does not end with one either."""
        text, cut = self.kept_answer(answer)
        return self.sequence_ids(prompt_text, text, finished and not cut)

    def sequence_ids(self, prompt_text: str, answer_text: str, finished: bool = True) -> list[int]:
        """Token ids a reward model scores: prompt, answer, and the end-of-turn token when the answer ended."""
        eos = self.tokenizer.eos_token if finished and self.tokenizer.eos_token else ""
        return self.tokenizer(prompt_text + answer_text + eos).input_ids

    def summary(self) -> str:
        c = self.counts
        return (f"{c['prompts']} prompts, {c['truncated_prompts']} truncated; "
                f"{c['answers']} answers, {c['truncated_answers']} truncated")


def load_start_model(ref: str, out: Path, dtype=torch.float32):
    """The model a preference recipe starts from (and stays close to).

    A LoRA adapter (say, a supervised tuning output) is merged into its base and saved to
    OUTPUT/start_model, so the reference model and any new adapter have a plain folder to refer to.
    Returns (loaded, base_ref) where base_ref is what a new adapter's base is recorded as.
    """
    loaded = load_model(ref, dtype=dtype)
    if loaded.is_seq2seq:
        raise MentorError(f"model '{ref}' is an encoder-decoder (seq2seq) model; reward models, RLHF and DPO "
                          "need a decoder-only (causal) model")
    if loaded.adapter is None:
        return loaded, ref
    folder = out / "start_model"
    if not (folder / "config.json").exists():
        log.info("merging the adapter %s into its base: %s", loaded.adapter, folder)
        merged = loaded.model.merge_and_unload()
        save_model(merged, loaded.tokenizer, folder, {"base_model": ref, "merged_from": loaded.adapter})
    return load_model(str(folder), dtype=dtype), str(folder)


def final_eval(trainer, names: dict) -> dict:
    """Score the model being handed over on the evaluation set, under mentor's names."""
    if trainer.eval_dataset is None:
        return {}
    with known_warnings():
        metrics = trainer.evaluate()
    return {k: v for k, v in rename(metrics, names).items() if k.startswith("eval_")}


def last_train_metrics(trainer, names: dict) -> dict:
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return {k: v for k, v in rename(logs[-1], names).items() if k.startswith("train_")} if logs else {}


def write_meta(folder: Path, base_ref: str) -> None:
    """Beside a LoRA adapter: the user's reference of its base, which the resolver prefers."""
    if (folder / "adapter_config.json").exists():
        path = Path(base_ref).expanduser()
        ref = str(path.resolve()) if path.exists() else base_ref  # a folder survives a change of directory
        (folder / "mentor_base.json").write_text(json.dumps({"base_model": ref}))


def plot_panels(panels: list[tuple[str, Path, list[str]]], out_png: Path, title: str = "") -> Path:
    """One panel per (title, metrics.jsonl, metric names); eval series get markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(panels)
    cols = min(n, 3)
    rows_n = math.ceil(n / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(5 * cols, 3.6 * rows_n), squeeze=False)
    cache: dict[Path, list[dict]] = {}
    for ax, (panel_title, path, names) in zip(axes.flat, panels):
        rows = cache.setdefault(path, read_metrics(path))
        for name in names:
            pts = [(r["step"], r[name]) for r in rows if name in r]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, label=name, marker="o" if name.startswith("eval_") else None, markersize=3)
        ax.set_title(panel_title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
