"""TRL's DistillationTrainer, taught mentor's data, GKD's supervised steps and a teacher behind one
function.

What TRL gives: the student's on-policy sampling (its prompts batched, sampled up to the completion
limit at the temperature, cut after the end-of-sequence token), the generation batches, the
evaluation that samples too, checkpoints and resume (the Trainer's). What is added here:

- prompts arrive already tokenized: the tuning encoding's input (`mentor.data.encode`), so a
  prompt is exactly what a tuned model sees, chat template and BOS included;
- the teacher is scored through `score(input_ids, attention_mask, completion_ids)`, one small
  function returning `TeacherScores`: the in-process model's full distributions (`InProcessTeacher`),
  or a served teacher's top-k log-probs (`ServedTeacher`, through `mentor.teachers.logprobs`);
- GKD's mix: a share `lmbda` of the steps samples on-policy, the others are supervised steps on
  the data's outputs with the tuning loss. Which step is which follows from the step number alone
  (step g samples when floor((g + 1) * lmbda) > floor(g * lmbda)), so a resumed run takes the same
  steps and the share is exact rather than drawn;
- the metrics: the divergence per completion token, the teacher's log-prob of the student's tokens,
  the sampled length (TRL's), the share of on-policy steps, the supervised steps' loss;
- evaluation samples with a fixed seed (the training's random state untouched), so evaluations of
  different checkpoints compare the same draws and selection is not at the mercy of the sampler.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import Trainer
from trl import DistillationTrainer

from mentor.data.encode import IGNORE
from mentor.errors import MentorError
from mentor.teachers.logprobs import FILL_LOGPROB, LogprobTeacher
from mentor.training.trainer import accepts_logits_to_keep, token_loss
from mentor.whitebox.losses import logit_divergence, topk_divergence


@dataclass
class TeacherScores:
    """The teacher's view of a batch's completions, position by position.

    `token_logprobs` (B, C): the log-prob of each completion token at temperature 1 (what the
    teacher thinks of the student's choice). `logprobs` (B, C, K): the next-token distribution at
    each completion position, as log-probs at temperature 1 over the whole vocabulary when `indices`
    is None; or a top-K, `indices` (B, C, K) naming its tokens, already at the job's temperature
    (what a served teacher returns: at temperature 1, the only one a job with a served teacher takes),
    with columns the teacher did not fill at `FILL_LOGPROB`."""

    token_logprobs: torch.Tensor
    logprobs: torch.Tensor
    indices: torch.Tensor | None = None


class InProcessTeacher:
    """A teacher model held frozen beside the student: its full next-token distributions."""

    def __init__(self, model, width: int):
        self.model = model.eval().requires_grad_(False)
        self.width = width  # the vocabulary columns both models share (padding rows cropped)
        self.keeps_logits = accepts_logits_to_keep(model)

    def to(self, device) -> InProcessTeacher:
        self.model.to(device)
        return self

    @torch.no_grad()
    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_ids: torch.Tensor) -> TeacherScores:
        """`input_ids` are the prompts (left-padded) followed by the completions (right-padded)."""
        logits = next_token_logits(self.model, input_ids, attention_mask, completion_ids.size(1), self.keeps_logits)
        logprobs = torch.log_softmax(logits[..., : self.width].float(), dim=-1)
        tokens = logprobs.gather(-1, completion_ids.clamp(max=self.width - 1).unsqueeze(-1)).squeeze(-1)
        return TeacherScores(tokens, logprobs)


class ServedTeacher:
    """A teacher behind a server (`openai:MODEL@URL`): its top-k log-probs of each completion token,
    one request per sequence, cached, concurrent and retried by the log-prob teacher."""

    def __init__(self, teacher: LogprobTeacher, top_k: int, width: int):
        self.teacher = teacher
        # k past the vocabulary would only add filler columns; k equal to it makes the loss exact
        self.top_k = min(top_k, width)
        self.width = width
        self.device = torch.device("cpu")

    def to(self, device) -> ServedTeacher:
        self.device = torch.device(device)
        return self

    @torch.no_grad()
    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_ids: torch.Tensor) -> TeacherScores:
        """`input_ids` are the prompts (left-padded) followed by the completions (right-padded): each
        row is sent without its padding, scored from its first completion token."""
        batch, length = completion_ids.shape
        prompts, completions = input_ids[:, : input_ids.size(1) - length], completion_ids
        prompt_mask = attention_mask[:, : prompts.size(1)].bool()
        lengths = attention_mask[:, prompts.size(1):].sum(dim=1).tolist()
        rows = [b for b in range(batch) if lengths[b] > 0]  # an empty completion has nothing to score
        sequences = [prompts[b][prompt_mask[b]].tolist() + completions[b, : lengths[b]].tolist() for b in rows]
        starts = [int(prompt_mask[b].sum()) for b in rows]
        scored = self.teacher.score(sequences, starts, top_k=self.top_k) if rows else []
        ids = torch.zeros(batch, length, self.top_k, dtype=torch.long)
        logprobs = torch.full((batch, length, self.top_k), FILL_LOGPROB, dtype=torch.float32)
        tokens = torch.zeros(batch, length, dtype=torch.float32)
        for b, s in zip(rows, scored):
            named = s.logprobs > FILL_LOGPROB / 2
            if (s.ids[named] >= self.width).any():
                raise MentorError(f"the served teacher {self.teacher.identity} named token id {int(s.ids[named].max())}, "
                                  f"past the student's {self.width} vocabulary columns: not the student's tokenizer")
            n = s.ids.shape[0]
            # filler columns may name ids past the vocabulary; they are left out of the loss anyway
            ids[b, :n] = torch.from_numpy(s.ids).clamp(max=self.width - 1)
            logprobs[b, :n] = torch.from_numpy(s.logprobs)
            tokens[b, :n] = torch.from_numpy(s.token_logprobs)
        return TeacherScores(tokens.to(self.device), logprobs.to(self.device), ids.to(self.device))


def next_token_logits(model, input_ids, attention_mask, completion_length: int, keeps_logits: bool = True):
    """(B, C, V) logits at the positions that predict the C completion tokens: only those are projected
    onto the vocabulary when the model takes `logits_to_keep`."""
    kept = completion_length + 1
    out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                **({"logits_to_keep": kept} if keeps_logits else {}))
    return out.logits[:, -kept:-1, :]


def divergence_per_token(student_logits: torch.Tensor, scores: TeacherScores, mask: torch.Tensor, beta: float,
                         temperature: float) -> torch.Tensor:
    """The generalized JSD (beta 1: reverse KL(student || teacher)) per completion token, averaged
    over the tokens `mask` keeps; TRL GKD's definition, as the white-box logit method uses it."""
    keep = mask.bool()
    count = keep.sum().clamp_min(1)
    if scores.indices is None:
        total = logit_divergence(student_logits[keep], scores.logprobs[keep], beta, temperature)
    else:
        total = topk_divergence(student_logits[keep], scores.logprobs[keep], scores.indices[keep], beta, temperature)
    return total / count


def samples_at(step: int, lmbda: float) -> bool:
    """Whether optimizer step `step` (from 0) samples on-policy: a share lmbda of the steps, evenly
    spread, decided by the step number alone (a resumed run takes the same steps)."""
    return math.floor((step + 1) * lmbda + 1e-9) > math.floor(step * lmbda + 1e-9)


class OnPolicyTrainer(DistillationTrainer):
    """DistillationTrainer whose teacher is `teacher.score`, with GKD's supervised steps mixed in."""

    loss_is_scaled_for_ga = False  # a per-batch token mean, like tuning's

    def __init__(self, *args, teacher: InProcessTeacher | ServedTeacher, lmbda: float, width: int, collator,
                 task_answers=None, **kwargs):
        # the teacher is ours, scored through `teacher.score`: TRL is given none to load or wrap
        super().__init__(*args, teacher_model=None, **kwargs)
        if self.args.gradient_accumulation_steps != 1:
            raise ValueError("on-policy distillation takes a step per batch (gradient_accumulation_steps 1)")
        self.teacher = teacher.to(self.accelerator.device)
        self.lmbda = lmbda
        self.width = width
        self.supervised_collator = collator
        self._keeps_logits = accepts_logits_to_keep(self.model)
        self.task_answers = task_answers  # model -> eval_task_* of its greedy answers, added to every evaluation

    def _tokenize_prompts(self, prompts: list):
        # mentor's prompts are token ids already, encoded as tuning encodes its inputs
        return [list(p) for p in prompts], None, {}

    def _prepare_inputs(self, generation_batch):
        if self.model.training and not samples_at(self.state.global_step, self.lmbda):
            return self._supervised_batch(generation_batch)
        return super()._prepare_inputs(generation_batch)

    def _supervised_batch(self, rows: list[dict]) -> dict:
        """The data's prompts and outputs as tuning trains on them (labels on the outputs only)."""
        batch = self.supervised_collator([{k: row[k] for k in ("input_ids", "attention_mask", "labels")}
                                          for row in rows])
        batch = Trainer._prepare_inputs(self, batch)
        tokens = self.accelerator.gather(batch["attention_mask"].sum()).sum().item()
        self.state.num_input_tokens_seen += tokens
        return {**batch, "supervised": True}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        if inputs.get("supervised"):
            scored = token_loss(model, inputs, is_seq2seq=False, keep_logits=self._keeps_logits)
            loss = scored.loss_sum / max(scored.count, 1)
            self._metrics[mode]["supervised_loss"].append(loss.item())
            self._metrics[mode]["on_policy"].append(0.0)
            return (loss, None) if return_outputs else loss
        loss = self._on_policy_loss(model, inputs, mode)
        if mode == "train":
            self._metrics[mode]["on_policy"].append(1.0)
        return (loss, None) if return_outputs else loss

    def _on_policy_loss(self, model, inputs: dict, mode: str) -> torch.Tensor:
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([inputs["prompt_ids"], completion_ids], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], completion_mask], dim=1)
        student = next_token_logits(model, input_ids, attention_mask, completion_ids.size(1),
                                    self._keeps_logits)[..., : self.width]
        scores = self.teacher.score(input_ids, attention_mask, completion_ids)
        loss = divergence_per_token(student, scores, completion_mask, self.beta, self.temperature)
        keep = completion_mask.bool()
        self._metrics[mode]["divergence"].append(loss.item())
        self._metrics[mode]["teacher_logprob"].append(scores.token_logprobs[keep].mean().item() if keep.any() else 0.0)
        return loss

    def evaluate(self, *args, **kwargs):
        # the same draws at every evaluation, without moving the training's random state
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.args.seed)
            return super().evaluate(*args, **kwargs)

    def evaluation_loop(self, *args, **kwargs):
        # the task metric joins the evaluation's metrics before they are logged and judged (best
        # checkpoint, early stopping)
        output = super().evaluation_loop(*args, **kwargs)
        prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
        if self.task_answers is None or prefix != "eval":
            return output
        return output._replace(metrics={**(output.metrics or {}), **self.task_answers(self.model)})


def prompt_ids(row: dict) -> list[int]:
    """The tuning encoding's input: every token before the final output span."""
    labels = row["labels"]
    start = len(labels)
    while start > 0 and labels[start - 1] != IGNORE:
        start -= 1
    return row["input_ids"][:start]
