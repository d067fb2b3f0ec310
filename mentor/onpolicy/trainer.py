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
- a teacher in the process with another tokenizer (`CrossTokenizerTeacher`) reads the student's
  samples as text, tokenized its own way, and the loss is TRL GOLD's universal logit distillation
  (ULD) on the answer text, aligned by byte offsets; a teacher with the student's tokenizer takes the
  exact path above, unchanged;
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
import os
from dataclasses import dataclass
from types import SimpleNamespace

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


class CrossTokenizerTeacher:
    """A teacher in the process whose tokenizer is not the student's: universal logit distillation
    (ULD, Boizard et al. 2024) through TRL GOLD's `ULDLoss`.

    Each sampled completion is decoded to text and tokenized by the teacher after the teacher's own
    encoding of the same prompt (`prompts`: the student's prompt ids -> the teacher's). The two
    tokenizations of the answer text are aligned by byte offsets (GOLD's extended ULD): a group closes
    where both tokenizers end a token on the same byte, and a group of several tokens is one
    distribution, the full distribution at its last token times the probabilities of the actual
    tokens before it (GOLD's "bayesian" merge, the chain rule). At every aligned group both
    distributions are sorted, the shorter vocabulary padded with zeros, and the loss is the L1
    distance between them (the Wasserstein distance of ULD), per group, averaged over the
    sequences. A tokenizer that is not byte-level BPE has no byte offsets: then positions are
    aligned by truncating both answers to the shorter (the original ULD)."""

    def __init__(self, model, tokenizer, student_tokenizer, prompts: dict[tuple[int, ...], list[int]],
                 temperature: float):
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        from trl.experimental.gold.gold_trainer import ULDLoss
        from trl.experimental.utils import is_byte_level_tokenizer

        self.model = model.eval().requires_grad_(False)
        self.tokenizer, self.student_tokenizer = tokenizer, student_tokenizer
        self.prompts = prompts
        self.keeps_logits = accepts_logits_to_keep(model)
        self.byte_offsets = all(getattr(t, "is_fast", False) and is_byte_level_tokenizer(t.backend_tokenizer)
                                for t in (tokenizer, student_tokenizer))
        self.alignment = "byte offsets" if self.byte_offsets else "truncated to the shorter answer"
        self.uld = ULDLoss(SimpleNamespace(
            uld_crossentropy_weight=0.0, uld_distillation_weight=1.0, uld_student_temperature=temperature,
            uld_teacher_temperature=temperature, uld_skip_student_eos=False, uld_skip_teacher_eos=False,
            use_extended_uld=self.byte_offsets, uld_token_merge_strategy="bayesian", uld_use_hybrid_loss=False))
        self.device = torch.device("cpu")

    def to(self, device) -> CrossTokenizerTeacher:
        self.model.to(device)
        self.device = torch.device(device)
        return self

    def _student_offsets(self, ids: list[int]) -> list[tuple[int, int]]:
        """Byte offsets of the student's sampled tokens in their text: a byte-level piece is one
        character per byte; a special token (end of sequence) is empty."""
        special = set(self.student_tokenizer.all_special_ids)
        out, at = [], 0
        for piece, i in zip(self.student_tokenizer.convert_ids_to_tokens(ids), ids):
            width = 0 if i in special or piece is None else len(piece)
            out.append((at, at + width))
            at += width
        return out

    def loss(self, student_logits: torch.Tensor, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
             completion_ids: torch.Tensor, completion_mask: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The ULD loss of a batch and the teacher's mean log-prob of its own tokens of the answers.
        `student_logits` (B, C, V): the student's next-token logits at its C completion positions."""
        from trl.experimental.utils import encode_with_byte_offsets

        batch = completion_ids.size(0)
        lengths = completion_mask.sum(dim=1).tolist()
        eos = self.student_tokenizer.eos_token_id
        t_eos = self.tokenizer.eos_token_id
        t_prompts, t_completions, t_offsets, s_offsets, texts = [], [], [], [], []
        for b in range(batch):
            prompt = prompt_ids[b][prompt_mask[b].bool()].tolist()
            try:
                t_prompts.append(self.prompts[tuple(prompt)])
            except KeyError:
                raise MentorError("a sampled prompt is none of the data's: the teacher has no encoding of it") from None
            ids = completion_ids[b, : lengths[b]].tolist()
            ended = bool(ids) and ids[-1] == eos
            text = self.student_tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            texts.append(text)
            if self.byte_offsets:
                ((t_ids, offs),) = encode_with_byte_offsets(self.tokenizer.backend_tokenizer, [text])
                s_offsets.append(self._student_offsets(ids))
            else:
                t_ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
                offs = [(0, 0)] * len(t_ids)
                s_offsets.append([(0, 0)] * len(ids))
            t_ids, offs = list(t_ids), list(offs)
            if ended and t_eos is not None:  # the student stopped: the teacher's end of sequence, empty, at the end
                end = len(text.encode("utf-8"))
                t_ids.append(t_eos)
                offs.append((end, end))
            t_completions.append(t_ids)
            t_offsets.append(offs)
        teacher_logits, t_ids, t_mask, t_window = self._teacher_logits(t_prompts, t_completions)
        # one window per side: position 0 is the last prompt token, position j >= 1 the answer's token
        # j - 1, and the logits at position p predict position p + 1 (GOLD's "bayesian" slicing)
        s_window = torch.cat([prompt_ids[:, -1:], completion_ids], dim=1)
        s_logits = torch.cat([student_logits, student_logits[:, -1:].detach() * 0], dim=1).float()
        s_labels = torch.where(torch.cat([torch.zeros_like(completion_mask[:, :1]), completion_mask], 1).bool(),
                               s_window, torch.full_like(s_window, IGNORE))
        t_labels = torch.where(torch.cat([torch.zeros_like(t_mask[:, :1]), t_mask], 1).bool(),
                               t_window, torch.full_like(t_window, IGNORE))
        loss = self.uld(student_logits=s_logits, teacher_logits=teacher_logits, student_labels=s_labels,
                        teacher_labels=t_labels, student_input_ids=s_window, teacher_input_ids=t_window,
                        student_byte_offsets=_offsets_tensor(s_offsets, s_window.size(1), s_logits.device),
                        teacher_byte_offsets=_offsets_tensor(t_offsets, t_window.size(1), s_logits.device))
        logprobs = torch.log_softmax(teacher_logits[:, :-1].float(), -1).gather(-1, t_ids.unsqueeze(-1)).squeeze(-1)
        keep = t_mask.bool()
        return loss, (logprobs[keep].mean().item() if keep.any() else 0.0)

    @torch.no_grad()
    def _teacher_logits(self, prompts: list[list[int]], completions: list[list[int]]):
        """The teacher's logits over its window (the last prompt token and the answer's tokens), prompts
        left-padded and answers right-padded as the student's are; with the answers' ids and mask."""
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        width_p, width_c = max(len(p) for p in prompts), max(max(len(c) for c in completions), 1)
        ids = torch.tensor([[pad] * (width_p - len(p)) + p + c + [pad] * (width_c - len(c))
                            for p, c in zip(prompts, completions)], device=self.device)
        mask = torch.tensor([[0] * (width_p - len(p)) + [1] * (len(p) + len(c)) + [0] * (width_c - len(c))
                             for p, c in zip(prompts, completions)], device=self.device)
        logits = next_token_logits(self.model, ids, mask, width_c, self.keeps_logits).float()
        logits = torch.cat([logits, logits[:, -1:] * 0], dim=1)
        completion, completion_mask = ids[:, width_p:], mask[:, width_p:]
        window = torch.cat([ids[:, width_p - 1: width_p], completion], dim=1)
        return logits, completion, completion_mask, window


def _offsets_tensor(rows: list[list[tuple[int, int]]], width: int, device) -> torch.Tensor:
    """(B, width, 2) byte offsets of each window: (0, 0) at the prompt token and the padding."""
    out = torch.zeros(len(rows), width, 2, dtype=torch.long)
    for b, offs in enumerate(rows):
        if offs:
            out[b, 1: 1 + len(offs)] = torch.tensor(offs, dtype=torch.long)
    return out.to(device)


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

    def __init__(self, *args, teacher: InProcessTeacher | ServedTeacher | CrossTokenizerTeacher, lmbda: float,
                 width: int, collator,
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
        if isinstance(self.teacher, CrossTokenizerTeacher):
            loss, teacher_logprob = self.teacher.loss(student, inputs["prompt_ids"], inputs["prompt_mask"],
                                                      completion_ids, completion_mask)
            self._metrics[mode]["divergence"].append(loss.item())
            self._metrics[mode]["teacher_logprob"].append(teacher_logprob)
            return loss
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
