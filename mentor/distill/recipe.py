"""Distillation recipe: distilling step-by-step, standard distillation, and the fine-tuning baseline.

setup:   read data; ask the teacher (cached) for rationales and labels, parse them;
         build the student's examples for the method; load the student.
train:   StepByStepTrainer (label + rationale task in every step) or the plain MentorTrainer.
save:    the tuning core's output folder, plus the teacher's labels and report.
test:    student (label only, cheap) and teacher on the test set: report.md + report.png.
"""

from __future__ import annotations

import time
from pathlib import Path

from datasets import Dataset
from transformers.trainer_callback import PrinterCallback

from mentor.data.encode import EncodeStats, encode
from mentor.data.formats import Example
from mentor.distill.config import DistillConfig
from mentor.distill.label import Labeled, label_rows, make_teacher, read_rows, teacher_report, write_labeled
from mentor.distill.multitask import MultiTaskCollator, StepByStepTrainer, merge_tasks
from mentor.distill.prompts import PromptTemplate, answer_sentence
from mentor.errors import MentorError
from mentor.recipes import common
from mentor.recipes.tune import load_for_training, save
from mentor.result import TunedModel
from mentor.training.callbacks import MetricsRecorder, ProgressBar
from mentor.training.trainer import MentorTrainer


def _example(prompt: str, target: str) -> Example:
    return Example([{"role": "user", "content": prompt}, {"role": "assistant", "content": target}], "text")


def student_targets(cfg: DistillConfig, rows: list[dict], labeled: list[Labeled] | None) -> tuple[list[dict], dict]:
    """(input, label, rationale) per kept example for the chosen method, and what was dropped why."""
    kept, dropped = [], {"teacher unparseable": 0, "teacher disagrees with gold": 0, "no gold label": 0}
    for i, row in enumerate(rows):
        gold = row.get(cfg.label_field)
        gold = gold if isinstance(gold, str) and gold.strip() else None
        item = labeled[i] if labeled else None
        if cfg.method == "finetune":
            if gold is None:
                dropped["no gold label"] += 1
                continue
            kept.append({"input": row["input_text"], "label": gold, "rationale": None})
            continue
        parsed = item is not None and item.parsed.ok and (cfg.method != "step-by-step" or bool(item.parsed.rationale))
        # with mask_wrong_rationales a gold-labelled example whose rationale is unusable (unparseable or
        # reaching a wrong answer) still trains the label task, as in fine-tuning; its rationale is masked
        keep_for_label = cfg.method == "step-by-step" and cfg.mask_wrong_rationales and gold is not None
        if not parsed and not keep_for_label:
            dropped["teacher unparseable"] += 1
            continue
        if parsed and cfg.filter_disagreements and item.agrees is False:
            dropped["teacher disagrees with gold"] += 1
            continue
        # standard distillation trains on the teacher's labels; step-by-step on gold labels when
        # the data has them (labeled mode) and on the teacher's otherwise (unlabeled mode)
        label = item.teacher_label(cfg.task) if (cfg.method == "standard" or gold is None) else gold
        rationale = item.parsed.rationale if cfg.method == "step-by-step" and parsed else None
        masked = keep_for_label and (not parsed or item.agrees is False)
        kept.append({"input": row["input_text"], "label": label, "rationale": rationale or "", "mask_rationale": masked})
    return kept, {k: v for k, v in dropped.items() if v}


def encode_targets(cfg: DistillConfig, targets: list[dict], loaded, use_chat_template: bool, stats: EncodeStats,
                   with_rationale: bool) -> Dataset:
    kw = dict(is_seq2seq=loaded.is_seq2seq, use_chat_template=use_chat_template,
              max_input_tokens=cfg.max_input_tokens, max_output_tokens=cfg.max_output_tokens, stats=stats)
    prefix = cfg.label_prefix if cfg.method == "step-by-step" else ""
    label_rows = [encode(_example(prefix + t["input"], t["label"]), loaded.tokenizer, **kw) for t in targets]
    rationale_rows = None
    if with_rationale:
        def rationale_target(t):
            if cfg.rationale_format == "rationale+label":
                return f"{t['rationale']} {answer_sentence(cfg.task, t['label'])}"
            return t["rationale"]
        rationale_rows = []
        for t in targets:
            row = encode(_example(cfg.rationale_prefix + t["input"], rationale_target(t)), loaded.tokenizer, **kw)
            if t.get("mask_rationale"):
                row["labels"] = [-100] * len(row["labels"])
            rationale_rows.append(row)
    return Dataset.from_list(merge_tasks(label_rows, rationale_rows))


def distill(config: DistillConfig | None = None, **fields) -> TunedModel:
    """Distil a teacher into a student; returns a handle to the student. Rerunning resumes."""
    cfg = config or DistillConfig(**fields)
    out = common.prepare_output(cfg.output, cfg.model_dump())
    if (done := common.finished_job(out)) is not None:
        return done

    # -- setup: teacher --------------------------------------------------------------------
    train_rows = read_rows(cfg.data)
    eval_rows = read_rows(cfg.evaluation_data) if cfg.evaluation_data else None
    test_rows = read_rows(cfg.test_data) if cfg.test_data else None
    if len(train_rows) > cfg.max_examples:
        raise MentorError(f"{cfg.data}: {len(train_rows)} rows, more than max_examples={cfg.max_examples}")
    template = PromptTemplate.for_task(cfg.task, shots=cfg.prompt_examples, labels=cfg.labels)
    labeled, teacher, report_lines = None, None, []
    if cfg.method != "finetune":
        if not cfg.teacher:
            raise MentorError(f"--method {cfg.method} needs a --teacher")
        teacher = make_teacher(cfg.teacher, train_rows + (eval_rows or []) + (test_rows or []), out, cfg.teacher_concurrency)
        labeled, summary = label_rows(teacher, train_rows, template, cfg.task, cfg.answer_field, cfg.teacher_max_new_tokens)
        write_labeled(labeled, cfg.task, out / "teacher_labels.jsonl")
        report_lines.append(teacher_report(summary, labeled, teacher))
        print("[mentor] " + report_lines[-1].replace("\n", "\n[mentor] "))
    targets, dropped = student_targets(cfg, train_rows, labeled)
    if not targets:
        raise MentorError(f"no training examples left for {cfg.method} (dropped: {dropped})")
    masked = sum(bool(t.get("mask_rationale")) for t in targets)
    print(f"[mentor] {len(targets)} training examples for {cfg.method}" + (f"; dropped {dropped}" if dropped else "")
          + (f"; {masked} rationales masked (teacher's answer wrong)" if masked else ""))

    eval_targets = None
    if eval_rows:
        if all(isinstance(r.get(cfg.label_field), str) for r in eval_rows):
            eval_targets = [{"input": r["input_text"], "label": r[cfg.label_field], "rationale": None} for r in eval_rows]
        else:  # unlabeled eval data: the teacher's labels stand in for gold ones
            eval_labeled, _ = label_rows(teacher, eval_rows, template, cfg.task, None, cfg.teacher_max_new_tokens)
            eval_targets = [{"input": l.row["input_text"], "label": l.teacher_label(cfg.task), "rationale": None}
                            for l in eval_labeled if l.parsed.ok]
        common.check_eval_size(len(eval_targets))

    # -- setup: student ------------------------------------------------------------------------
    loaded, model, bf16, use_chat_template = load_for_training(cfg)
    sbs = cfg.method == "step-by-step"
    stats = {"train": EncodeStats(), "eval": EncodeStats() if eval_targets else None}
    train_ds = encode_targets(cfg, targets, loaded, use_chat_template, stats["train"], with_rationale=sbs and cfg.alpha < 1)
    eval_ds = encode_targets(cfg, eval_targets, loaded, use_chat_template, stats["eval"], False) if eval_targets else None
    print(f"[mentor] train data: {stats['train'].summary()}")

    # -- train -----------------------------------------------------------------------------------
    checkpoints = out / "checkpoints"
    resume = common.last_complete_checkpoint(checkpoints)
    if resume:
        print(f"[mentor] resuming from {resume}")
    trainer_cls, kwargs = (StepByStepTrainer, {"alpha": cfg.alpha}) if sbs else (MentorTrainer, {})
    trainer = trainer_cls(
        model=model,
        args=common.training_arguments(cfg, checkpoints, eval_ds is not None, bf16),
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=MultiTaskCollator(loaded.tokenizer) if sbs else common.collator(loaded.tokenizer, model),
        processing_class=loaded.tokenizer,
        callbacks=[MetricsRecorder(out), ProgressBar(), *common.callbacks_for(cfg, eval_ds is not None)],
        is_seq2seq=loaded.is_seq2seq,
        sampler_seed=cfg.seed,
        **kwargs,
    )
    trainer.remove_callback(PrinterCallback)
    started = time.time()
    trainer.train(resume_from_checkpoint=resume)
    seconds = time.time() - started

    # -- save ------------------------------------------------------------------------------------
    meta = {"task_prefix": cfg.label_prefix if sbs else "", "task": cfg.task,
            "rationale_prefix": cfg.rationale_prefix if sbs and cfg.alpha < 1 else None,
            "teacher": cfg.teacher, "distill_method": cfg.method}
    extra = {"distill_method": cfg.method, "examples": len(targets), "dropped": dropped, "masked_rationales": masked,
             "teacher_stats": teacher.stats.as_dict() if teacher else None}
    result = save(cfg, out, trainer, loaded, use_chat_template, stats, seconds, method_name=f"{cfg.method} ({cfg.tuning})",
                  extra=extra, meta_extra=meta, data_files={"data": cfg.data, "evaluation_data": cfg.evaluation_data,
                                                            "test_data": cfg.test_data})

    # -- test ------------------------------------------------------------------------------------
    if test_rows and trainer.is_world_process_zero():
        result.extra["test"] = run_test(cfg, result, test_rows, teacher, template, out, report_lines)
        common.write_result(out, result)
    if teacher is not None:
        teacher.close()
    return result


def run_test(cfg: DistillConfig, result: TunedModel, test_rows: list[dict], teacher, template, out: Path,
             notes: list[str]) -> dict:
    """Student and teacher on the test set: the report that says whether distilling paid off."""
    from mentor.evaluation.evaluate import evaluate_completions, evaluate_student
    from mentor.evaluation.report import write_report
    from mentor.serving.predict import Predictor

    student = Predictor(result.model_path)
    modes = [False, True] if cfg.with_rationale and cfg.method == "step-by-step" else [False]
    results = [evaluate_student(student, test_rows, cfg.task, cfg.answer_field, cfg.labels,
                                with_rationale=mode, label_max_new_tokens=cfg.label_max_new_tokens,
                                rationale_max_new_tokens=cfg.rationale_max_new_tokens,
                                name=f"student: {cfg.method}" + (", rationale then label" if mode else ""))
               for mode in modes]
    if teacher is not None:
        labeled, _ = label_rows(teacher, test_rows, template, cfg.task, cfg.answer_field, cfg.teacher_max_new_tokens)
        results.append(evaluate_completions([l.completion for l in labeled], test_rows, cfg.task, cfg.answer_field,
                                            cfg.labels, name=f"teacher ({cfg.teacher})"))
    notes = notes + [f"student trained {result.steps_run} steps, {result.extra.get('tokens_seen')} tokens, "
                     f"{result.extra.get('seconds')} s"]
    write_report(results, out / "report", f"{cfg.method}: {cfg.model} from {cfg.teacher or 'gold labels'}", notes)
    print(f"[mentor] report: {out / 'report' / 'report.md'}")
    return {r.name: {**r.metrics, "seconds_per_example": r.seconds_per_example,
                     "tokens_per_example": r.tokens_per_example, "parameters": r.parameters} for r in results}
