"""On-policy distillation recipe: setup / train / save.

setup: teacher and student share a vocabulary (tokenizers and configs only, before any weights
       load; a served teacher's tokenization checked on its first request, here), or an in-process
       teacher has another tokenizer and is reached by universal logit distillation on the answer
       text (the prompts encoded for it too); the data validated
       and encoded as tuning encodes it (its inputs are the prompts the student samples from, its
       outputs what the supervised steps learn); the student (memory estimate, LoRA if asked); the
       teacher loaded frozen in this process, or reached through its server (top-k log-probs).
train: OnPolicyTrainer (TRL's DistillationTrainer): a share `lmbda` of the steps samples completions
       of the batch's prompts and minimises the divergence to the teacher on them, the others are
       supervised steps; the validation prompts' divergence (the student's samples, a fixed seed) is
       measured before the first step and at every evaluation, and with a task the student's greedy
       answers to them are scored too (eval_task_*); the selection metric (the task's, or the
       divergence) picks the checkpoint and stops early.
save:  the student like a tuned model (`mentor predict OUTPUT ...` works), through `finish`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from mentor.errors import MentorError
from mentor.jobs import Job, TunedModel
from mentor.model_record import ModelRecord
from mentor.models import load_model
from mentor.onpolicy.config import OnPolicyConfig
from mentor.onpolicy.selection import PREFIX, TaskAnswers, selection_key
from mentor.onpolicy.trainer import CrossTokenizerTeacher, InProcessTeacher, OnPolicyTrainer, ServedTeacher, prompt_ids
from mentor.rlhf import curves
from mentor.rlhf import setup as rl_setup
from mentor.teachers import CACHE_FILENAME, build_logprob_teacher
from mentor.teachers.logprobs import is_served
from mentor.training import arguments, setup
from mentor.training.outputs import Before, finish, memory_record, merge_adapter
from mentor.training.run import checkpoints_of, train
from mentor.whitebox.vocab import VocabCheck, check_vocabularies, output_rows, peek

log = logging.getLogger("mentor")

# the trainer's metric names -> mentor's ("train_" / "eval_" in front)
METRICS = {"loss": "objective", "divergence": "divergence", "teacher_logprob": "teacher_logprob",
           "completions/mean_length": "sampled_length", "completions/clipped_ratio": "clipped_ratio",
           "supervised_loss": "supervised_loss", "on_policy": "on_policy_share"}
SELECTED_BY = "eval_divergence"  # the validation prompts' divergence, lower is better (selection_metric divergence)
TASK_METRICS = ("accuracy", "exact_match", "f1", "rouge_l", "answered")  # eval_task_* (mentor.tasks.metrics.score)
METRICS = {**METRICS, **{PREFIX + k: PREFIX + k for k in TASK_METRICS}}
BEFORE = "before_distillation.json"  # the validation metrics before the first step (a resumed run reads them)


def run(cfg: OnPolicyConfig, job: Job) -> TunedModel:
    """On-policy distillation of the student from the teacher; rerunning the same job resumes it."""
    trainer, student, stats, before, vocab = build_trainer(cfg, job)
    train(trainer, job, quiet=rl_setup.known_warnings)
    return save(cfg, job, trainer, student, stats, before, vocab)


def build_trainer(cfg: OnPolicyConfig, job: Job):
    from trl import DistillationConfig

    served = is_served(cfg.teacher)
    vocab, cross, student_tok = check_pair(cfg, served)
    served_teacher = served_logprobs(cfg, job, student_tok) if served else None

    train_examples, eval_examples = setup.load_tuning_data(cfg)
    # the longest batch: a prompt of the data and a completion as long as the limit allows; logits
    # at every completion position, the student's and the teacher's
    student = setup.load_student(
        cfg, longest=lambda s: (setup.longest_encoded(train_examples, s)[0] + s.max_output_tokens, s.max_output_tokens))
    train_ds, eval_ds, stats = setup.encode_tuning_data(cfg, student, train_examples, eval_examples)
    train_ds = train_ds.add_column("prompt", [prompt_ids(row) for row in train_ds])
    if eval_ds is not None:
        eval_ds = eval_ds.add_column("prompt", [prompt_ids(row) for row in eval_ds])
    teacher = (ServedTeacher(served_teacher, cfg.top_k, vocab.width) if served_teacher is not None else
               load_teacher(cfg, student, vocab, cross, [*train_examples, *(eval_examples or [])]))

    has_eval = eval_ds is not None
    task_answers = None
    if has_eval and cfg.selection_metric == "task" and cfg.task:
        assert eval_examples is not None
        task_answers = TaskAnswers(list(eval_ds["prompt"]), [ex.messages[-1]["content"] for ex in eval_examples],
                                   [ex.extra for ex in eval_examples], cfg.task, cfg.labels, student.tokenizer,
                                   student.max_output_tokens, cfg.batch_size)
    args = arguments.training_arguments(
        cfg, checkpoints_of(job), has_eval, student.bf16, DistillationConfig, best_metric=selected_by(cfg),
        greater_is_better=task_answers is not None, checkpointing=student.gradient_checkpointing,
        max_completion_length=student.max_output_tokens, temperature=cfg.temperature, beta=cfg.beta, top_p=1.0,
        top_k=0, log_completions=False)
    with rl_setup.known_warnings():
        trainer = OnPolicyTrainer(
            model=student.model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
            processing_class=student.tokenizer, teacher=teacher,
            lmbda=cfg.lmbda, width=vocab.width, collator=arguments.collator(student.tokenizer),
            task_answers=task_answers)
    before = curves.follow(trainer, job, METRICS, ["train_divergence", "train_sampled_length"], "on-policy", BEFORE,
                           arguments.early_stopping(cfg, has_eval))
    rl_setup.trainable_in_fp32_without_autocast(trainer)
    return trainer, student, stats, before, vocab


def check_pair(cfg: OnPolicyConfig, served: bool):
    """Teacher and student checked from their configs and tokenizers alone, before any weights load:
    (vocabularies, whether the teacher has another tokenizer, the student's tokenizer)."""
    student_tok, student_config = peek(cfg.model)
    cross = False  # a teacher in the process with another tokenizer: universal logit distillation
    teacher_config = None
    if served:
        rows = output_rows(student_config)
        vocab = VocabCheck(width=rows, teacher_rows=rows, student_rows=rows, tokenizer_size=len(student_tok))
    else:
        teacher_tok, teacher_config = peek(cfg.teacher)
        cross = len(teacher_tok) != len(student_tok) or teacher_tok.get_vocab() != student_tok.get_vocab()
        if cross:
            rows = output_rows(student_config)
            vocab = VocabCheck(width=rows, teacher_rows=output_rows(teacher_config), student_rows=rows,
                               tokenizer_size=len(student_tok))
            log.info("teacher: %s has another tokenizer than the student (%d and %d tokens): the student's samples "
                     "are read as text and distilled by universal logit distillation (ULD)", cfg.teacher,
                     len(teacher_tok), len(student_tok))
        else:
            vocab = check_vocabularies(teacher_tok, student_tok, output_rows(teacher_config),
                                       output_rows(student_config), cfg.teacher, cfg.model)
    for ref, config in ((cfg.model, student_config), (cfg.teacher, teacher_config)):
        if getattr(config, "is_encoder_decoder", False):
            raise MentorError(f"on-policy distillation samples from a causal (decoder-only) model; '{ref}' is an "
                              "encoder-decoder")
    return vocab, cross, student_tok


def load_teacher(cfg: OnPolicyConfig, student, vocab, cross: bool, examples):
    """The teacher in this process: scored on the student's own tokens, or (another tokenizer) on
    their text re-read by its tokenizer."""
    loaded = load_model(cfg.teacher, dtype=torch.bfloat16 if student.bf16 else torch.float32)
    if not cross:
        return InProcessTeacher(loaded.model, vocab.width)
    return CrossTokenizerTeacher(loaded.model, loaded.tokenizer, student.tokenizer,
                                 teacher_prompts(cfg, loaded.tokenizer, examples, student), cfg.temperature)


def teacher_prompts(cfg: OnPolicyConfig, tokenizer, examples, student) -> dict[tuple[int, ...], list[int]]:
    """Each prompt as the student is given it -> the same input encoded for a teacher with another
    tokenizer (its own chat template when it has one, as tuning would encode it)."""
    from mentor.data.encode import encode

    use_chat_template = cfg.chat_template == "auto" and bool(getattr(tokenizer, "chat_template", None))
    out = {}
    for ex in examples:
        mine = encode(ex, student.tokenizer, is_seq2seq=False, use_chat_template=student.use_chat_template,
                      max_input_tokens=student.max_input_tokens, max_output_tokens=student.max_output_tokens)
        theirs = encode(ex, tokenizer, is_seq2seq=False, use_chat_template=use_chat_template,
                        max_input_tokens=student.max_input_tokens, max_output_tokens=student.max_output_tokens)
        out[tuple(prompt_ids(mine))] = prompt_ids(theirs)
    return out


def selected_by(cfg: OnPolicyConfig) -> str:
    """The evaluation metric that picks the checkpoint and stops early."""
    return "eval_" + selection_key(cfg.task) if cfg.selection_metric == "task" and cfg.task else SELECTED_BY


def served_logprobs(cfg: OnPolicyConfig, job: Job, tokenizer):
    """The served teacher's log-prob client, its tokenization checked now (one request, before any
    weights load): a server that scores no given tokens or tokenizes otherwise stops the job in one
    line. Its answers are cached in the job folder, so a resumed run, which samples the steps after
    its checkpoint as the stopped run did, asks for none of them again."""
    teacher = build_logprob_teacher(cfg.teacher, tokenizer=tokenizer, cache_path=job.folder / CACHE_FILENAME,
                                    progress=False)
    teacher.check()
    log.info(f"teacher: {cfg.teacher}, served: its top-{cfg.top_k} log-probs of each sampled token (temperature 1)")
    return teacher


def save(cfg: OnPolicyConfig, job: Job, trainer, student, stats: dict, before: dict, vocab) -> TunedModel:
    """The student saved like a tuned model, prompted as it learned."""
    out = job.folder
    best_step = trainer.state.best_global_step if trainer.args.load_best_model_at_end else None
    metrics = {**curves.final_eval(trainer, METRICS), **curves.last_train_metrics(trainer, METRICS)}
    record = ModelRecord(use_chat_template=student.use_chat_template, is_seq2seq=False,
                         prompt_format="chat" if stats["train"].conversations else "text",
                         max_input_tokens=student.max_input_tokens)
    teacher = trainer.teacher
    served = isinstance(teacher, ServedTeacher)
    cross = isinstance(teacher, CrossTokenizerTeacher)
    requests = {}
    if served:
        teacher.teacher.close()  # its cache: closed before the job's success removes it
        requests = {"teacher_requests": {"calls": teacher.teacher.stats.calls,
                                         "cache_hits": teacher.teacher.stats.cache_hits}}
    where = (f"served, its top-{teacher.top_k} log-probs and the rest of the mass; {teacher.teacher.stats.summary()}"
             if served else "in process")
    loss = (f"universal logit distillation (another tokenizer: the samples re-tokenized as text, aligned by "
            f"{teacher.alignment}; sorted distributions' L1 per aligned token, at temperature {cfg.temperature}; "
            "beta does not apply)" if cross else
            f"generalized JSD at beta {cfg.beta} (1 is reverse KL, 0 forward KL) at temperature {cfg.temperature}, "
            "per completion token")
    notes = [f"teacher: {cfg.teacher} ({where}); divergence: {loss}",
             f"steps: {cfg.lmbda:.0%} on the student's own samples (up to {student.max_output_tokens} tokens), the "
             "rest supervised on the data's outputs",
             *[f"truncation: {k}: {v.summary()}" for k, v in stats.items() if v is not None]]
    if vocab.cropped:
        notes.append(f"vocabulary: logits cropped to {vocab.width} columns (padding rows of the output matrices)")
    if before:
        notes.append("validation before training: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(before.items())))
    merge = cfg.tuning == "lora" and cfg.merge_adapter
    return finish(
        job, trainer, record, metrics=metrics, best_step=best_step,
        extra={"teacher": cfg.teacher, "alignment": "uld" if cross else "exact", "before": before, "selected_by": selected_by(cfg) if best_step else None,
               "tokens_seen": int(trainer.state.num_input_tokens_seen),
               "truncated": {k: v.truncation() for k, v in stats.items() if v is not None},
               "memory": memory_record(student.memory), **requests},
        notes=notes, keep_checkpoints=cfg.keep_checkpoints, plot=lambda result: plot(out, result.described, cfg.model),
        # the served teacher's cache holds every sample's scores: only a resumed run reads it
        temporary=(out / BEFORE, *(out / (CACHE_FILENAME + end) for end in ("", "-wal", "-shm") if served)),
        after_save=(lambda model_dir: merge_adapter(model_dir, out / "merged")) if merge else None,
        before=Before("the validation prompts", before,
                      ("eval_divergence", "eval_teacher_logprob", *([selected_by(cfg)] if cfg.task else []))))


def plot(out: Path, method: str, model: str) -> None:
    m = out / "metrics.jsonl"
    curves.plot_panels([("divergence to the teacher (per token)", m, ["train_divergence", "eval_divergence"]),
                        ("teacher log-prob of the student's tokens", m,
                         ["train_teacher_logprob", "eval_teacher_logprob"]),
                        ("sampled length (tokens)", m, ["train_sampled_length", "eval_sampled_length"]),
                        ("supervised steps' loss", m, ["train_supervised_loss"]),
                        ("task metric of the greedy answers", m, ["eval_" + PREFIX + k for k in TASK_METRICS])],
                       out / "curves.png", title=f"{method} on {model}")
