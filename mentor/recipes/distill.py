"""Distillation from a teacher's text: distilling step-by-step, standard distillation, and the
fine-tuning baseline (one job kind per method, one recipe).

setup:   read data; ask the teacher (cached) for rationales and labels, parse them;
         build the student's examples for the method; load the student.
train:   StepByStepTrainer (label + rationale task in every step) or the plain MentorTrainer.
save:    the tuning job's output folder, plus the teacher's labels and report.
test:    student (label only, cheap) and teacher on the test set: report.md + report.png.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack

from mentor.data.encode import IGNORE, EncodeStats
from mentor.data.rows import hold_out
from mentor.distill.config import DistillConfig
from mentor.distill.label import label_rows, make_teacher, read_rows, teacher_report, write_labeled
from mentor.distill.multitask import MultiTaskCollator, StepByStepTrainer
from mentor.distill.scoring import run_test
from mentor.distill.selection import TASK_SCORE, TaskScore
from mentor.distill.targets import encode_targets, student_targets
from mentor.errors import MentorError, Problem
from mentor.jobs import Job, TunedModel
from mentor.tasks.prompts import PromptTemplate
from mentor.training import arguments, setup
from mentor.training.callbacks import MetricsRecorder, ProgressBar
from mentor.training.outputs import save_tuned
from mentor.training.run import checkpoints_of, train
from mentor.training.trainer import MentorTrainer

log = logging.getLogger("mentor")
RECOMMENDED_UNLABELED = 1000  # the cloud's advice for distilling from unlabeled data; see the README


def run(cfg: DistillConfig, job: Job) -> TunedModel:
    # the teacher holds a SQLite cache and HTTP connections: closed however the job ends
    with ExitStack() as opened:
        return _run(cfg, job, opened)


def _run(cfg: DistillConfig, job: Job, opened: ExitStack) -> TunedModel:
    # -- setup: data and teacher, then the student -----------------------------------------------
    train_rows, eval_rows, test_rows = read_data(cfg, job)
    template = PromptTemplate.for_task(cfg.task, shots=cfg.prompt_examples, labels=cfg.labels)
    teacher, labeled, report_lines = None, None, []
    if cfg.method != "finetune":
        teacher, labeled = label(cfg, job, opened, template, train_rows + (eval_rows or []) + (test_rows or []),
                                 train_rows, report_lines)
    targets, dropped, masked = training_targets(cfg, train_rows, labeled)
    eval_targets = evaluation_targets(cfg, eval_rows, teacher, template) if eval_rows else None
    sbs = cfg.method == "step-by-step"
    # the longest row sizes the memory estimate; with rationales a step holds each example twice
    student = setup.load_student(cfg, longest=_longest(cfg, targets, sbs and cfg.alpha < 1),
                                 rows_per_example=2 if sbs and cfg.alpha < 1 else 1)

    # -- train --------------------------------------------------------------------------------------
    trainer, stats = build_trainer(cfg, job, student, targets, eval_targets)
    train(trainer, job)

    # -- save ---------------------------------------------------------------------------------------
    record = {"task_prefix": cfg.label_prefix if sbs else "", "task": cfg.task,
              "rationale_prefix": cfg.rationale_prefix if sbs and cfg.alpha < 1 else None,
              "teacher": cfg.teacher, "distill_method": cfg.method}
    extra = {"distill_method": cfg.method, "examples": len(targets), "dropped": dropped, "masked_rationales": masked,
             "teacher_stats": teacher.stats.as_dict() if teacher else None}
    result = save_tuned(job, trainer, student, stats, record_fields=record, extra=extra)

    # -- test ---------------------------------------------------------------------------------------
    if test_rows and job.main:
        result.extra["test"] = run_test(cfg, result, test_rows, teacher, template, job.folder, report_lines)
        job.event("tested", "student and teacher scored on the test set", report=str(job.folder / "report"))
    return result


def read_data(cfg: DistillConfig, job: Job) -> tuple[list[dict], list[dict] | None, list[dict] | None]:
    """Training, evaluation and test rows, validated (evaluation rows held out of training if asked)."""
    gold = (cfg.label_field, cfg.answer_field)
    train_rows = read_rows(cfg.data, text=gold)
    # fine-tuning has no teacher to label evaluation rows; the test set is scored against its answers
    eval_required = ("input_text", cfg.label_field) if cfg.method == "finetune" else ("input_text",)
    eval_rows = read_rows(cfg.evaluation_data, eval_required, text=gold) if cfg.evaluation_data else None
    test_rows = read_rows(cfg.test_data, ("input_text", cfg.answer_field), text=gold) if cfg.test_data else None
    if len(train_rows) > cfg.max_examples:
        raise MentorError(f"{cfg.data}: {len(train_rows)} rows, more than max_examples={cfg.max_examples}")
    if eval_rows is None and cfg.validation_split:
        train_rows, eval_rows = hold_out(train_rows, cfg.validation_split, job.folder / "validation.jsonl")
        log.info(f"validation split: {len(eval_rows)} of the training rows held out as evaluation data "
                 f"({job.folder / 'validation.jsonl'})")
    return train_rows, eval_rows, test_rows


def label(cfg: DistillConfig, job: Job, opened: ExitStack, template: PromptTemplate, every_row: list[dict],
          train_rows: list[dict], report_lines: list[str]):
    """The teacher (kept open until the job ends) and its labels of the training rows."""
    if not cfg.teacher:
        raise MentorError(f"--method {cfg.method} needs a --teacher")
    teacher = opened.enter_context(make_teacher(cfg.teacher, every_row, job.folder, cfg.teacher_concurrency,
                                                cfg.teacher_cache))
    labeled, summary = label_rows(teacher, train_rows, template, cfg.task, cfg.answer_field, cfg.teacher_max_new_tokens)
    write_labeled(labeled, cfg.task, job.folder / "teacher_labels.jsonl")
    report_lines.append(teacher_report(summary, labeled, teacher))
    log.info(report_lines[-1])
    job.event("teacher_labelled", report_lines[-1].splitlines()[0], teacher=teacher.stats.as_dict())
    return teacher, labeled


def training_targets(cfg: DistillConfig, train_rows: list[dict], labeled) -> tuple[list[dict], dict, int]:
    """The student's training examples for the method: (targets, dropped by reason, rationales masked)."""
    targets, dropped = student_targets(cfg, train_rows, labeled)
    if not targets:
        raise MentorError(f"no training examples left for {cfg.method} (dropped: {dropped})")
    unlabeled = not any(isinstance(r.get(cfg.label_field), str) for r in train_rows)
    if unlabeled and len(targets) < RECOMMENDED_UNLABELED:
        log.warning(f"{len(targets)} teacher-labelled examples: with no gold labels the student learns the teacher's "
                    f"mistakes too, and nothing can mask them; at least {RECOMMENDED_UNLABELED:,} unlabeled inputs are "
                    "recommended (more when the teacher's answers often fail to parse)")
    masked = sum(bool(t.get("mask_rationale")) for t in targets)
    log.info(f"{len(targets)} training examples for {cfg.method}" + (f"; dropped {dropped}" if dropped else "")
             + (f"; {masked} rationales masked (teacher's answer wrong)" if masked else ""))
    return targets, dropped, masked


def evaluation_targets(cfg: DistillConfig, eval_rows: list[dict], teacher, template: PromptTemplate) -> list[dict]:
    """The evaluation examples: gold labels where every row has one, else the teacher's."""
    if all(isinstance(r.get(cfg.label_field), str) for r in eval_rows):
        eval_targets = [{"input": r["input_text"], "label": r[cfg.label_field], "rationale": None, "row": r,
                         "gold": r.get(cfg.answer_field, r[cfg.label_field])} for r in eval_rows]
    elif teacher is None:
        row = next(r for r in eval_rows if not isinstance(r.get(cfg.label_field), str))
        raise MentorError(str(Problem(row["_file"], row["_line"], cfg.label_field,
                                      f"missing: {cfg.method} has no teacher to label evaluation rows")))
    else:  # unlabeled eval data: the teacher's labels stand in for gold ones
        eval_labeled, _ = label_rows(teacher, eval_rows, template, cfg.task, None, cfg.teacher_max_new_tokens)
        eval_targets = [{"input": item.row["input_text"], "label": item.teacher_label(cfg.task), "rationale": None,
                         "row": item.row} for item in eval_labeled if item.parsed.ok]
    setup.check_eval_size(len(eval_targets))
    return eval_targets


def build_trainer(cfg: DistillConfig, job: Job, student, targets: list[dict], eval_targets: list[dict] | None):
    """The examples encoded for the student and the method's trainer: (trainer, encoding stats)."""
    sbs = cfg.method == "step-by-step"
    stats = {"train": EncodeStats(), "eval": EncodeStats() if eval_targets else None}
    train_ds = encode_targets(cfg, targets, student, stats["train"], with_rationale=sbs and cfg.alpha < 1)
    eval_ds = encode_targets(cfg, eval_targets, student, stats["eval"], False) if eval_targets else None
    log.info("train data: %s", stats["train"].summary())
    has_eval = eval_ds is not None
    trainer_cls, kwargs = (StepByStepTrainer, {"alpha": cfg.alpha}) if sbs else (MentorTrainer, {})
    if has_eval and cfg.selection_metric == "task":
        kwargs["task_score"] = TaskScore(eval_targets, cfg.task, cfg.labels, cfg.label_prefix if sbs else "",
                                         student.tokenizer, student.use_chat_template, student.is_seq2seq,
                                         cfg.label_max_new_tokens, cfg.batch_size, student.max_input_tokens)
    collator = arguments.collator(student.tokenizer, cfg.packing, student.is_seq2seq, student.attention)
    trainer = trainer_cls(
        model=student.model,
        args=arguments.training_arguments(cfg, checkpoints_of(job), has_eval, student.bf16,
                                          checkpointing=student.gradient_checkpointing,
                                          **({"best_metric": TASK_SCORE} if "task_score" in kwargs else {})),
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=MultiTaskCollator(collator) if sbs else collator,
        processing_class=student.tokenizer,
        callbacks=[MetricsRecorder(job.folder), ProgressBar(), *arguments.early_stopping(cfg, has_eval)],
        is_seq2seq=student.is_seq2seq,
        sampler_seed=cfg.seed,
        **kwargs,
    )
    return trainer, stats


def _longest(cfg: DistillConfig, targets: list[dict], with_rationale: bool):
    """The longest row of the student's data, label and rationale tasks alike (for the memory estimate)."""
    def longest(student) -> tuple[int, int]:
        ds = encode_targets(cfg, targets, student, EncodeStats(), with_rationale=with_rationale)
        rows = [c for c in ("input_ids", "rationale_input_ids") if c in ds.column_names]
        labels = [c for c in ("labels", "rationale_labels") if c in ds.column_names]
        outputs = max((sum(t != IGNORE for t in ids) for c in labels for ids in ds[c]), default=1)
        return max((len(ids) for c in rows for ids in ds[c]), default=1), outputs
    return longest
