"""White-box distillation recipe: setup / train / save, like tuning, with a teacher.

setup: check that teacher and student share a vocabulary (tokenizers and configs only, before
       any weights load), then the tuning setup for the student (data validated and encoded,
       LoRA); then the teacher: loaded frozen, or (offline logits) its top-k log-probs computed
       once in a subprocess so this process never holds it, or (self-distillation) an EMA;
train: WhiteboxTrainer (MentorTrainer + the method's loss), an evaluation at step 0 so the
       report shows where the student started, checkpoints, resume, early stopping;
save:  the tuning recipe's save (model, curves, card, result.json), the card with every
       distillation parameter.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer
from transformers.trainer_callback import PrinterCallback

from mentor.errors import MentorError
from mentor.models import load_model, resolve
from mentor.models.resolve import prepare_tokenizer
from mentor.recipes import common, tune
from mentor.training.callbacks import MetricsRecorder, ProgressBar
from mentor.whitebox import offline_logits as offline
from mentor.whitebox.base import get_method
from mentor.whitebox.config import WhiteboxConfig
from mentor.whitebox.trainer import WhiteboxCollator, WhiteboxTrainer
from mentor.whitebox.vocab import VocabCheck, check_vocabularies, output_rows


def peek(ref: str):
    """Tokenizer and config of a model reference, without loading its weights."""
    source = Path(resolve(ref))
    config_source = source
    if (source / "adapter_config.json").exists():  # a LoRA adapter: the architecture is its base model's
        base = json.loads((source / "adapter_config.json").read_text())["base_model_name_or_path"]
        meta = source / "mentor_base.json"
        base = json.loads(meta.read_text())["base_model"] if meta.exists() else base
        config_source = Path(resolve(base))
        tok_source = source if (source / "tokenizer_config.json").exists() else config_source
    else:
        tok_source = source
    try:
        config = AutoConfig.from_pretrained(str(config_source))
        tokenizer = AutoTokenizer.from_pretrained(str(tok_source))
    except OSError as err:
        raise MentorError(f"cannot read model '{ref}': {str(err).splitlines()[0][:200]}") from err
    prepare_tokenizer(tokenizer)
    return tokenizer, config


@dataclass
class Prepared:
    trainer: WhiteboxTrainer
    loaded: object  # the student's LoadedModel
    use_chat_template: bool
    enc_stats: dict
    vocab: VocabCheck
    teacher_config: object
    logits_seconds: float = 0.0


def _with_keys(ds, split_id: int):
    if ds is None:
        return None
    return ds.add_column("example_index", list(range(len(ds)))).add_column("split_id", [split_id] * len(ds))


def logits_folder(cfg: WhiteboxConfig, out: Path) -> Path:
    return Path(cfg.teacher_logits_dir) if cfg.teacher_logits_dir else out / "teacher_logits"


def ensure_offline_logits(cfg: WhiteboxConfig, out: Path, datasets: dict, width: int, is_seq2seq: bool,
                          bf16: bool) -> tuple[dict[int, offline.TeacherLogits], float]:
    """Stored top-k teacher logits for each split, computed in a subprocess if missing or unfinished;
    and the seconds that took (0 when they were there already)."""
    root = logits_folder(cfg, out)
    jobs = {}
    for split_id, (name, ds) in enumerate(datasets.items()):
        if ds is None:
            continue
        jobs[split_id] = offline.LogitsJob(
            teacher=cfg.teacher, folder=str(root / name), top_k=cfg.top_k, temperature=cfg.temperature, width=width,
            is_seq2seq=is_seq2seq, num_examples=len(ds), rows_sha256=offline.rows_sha256(ds),
            shard_examples=cfg.shard_examples, batch_size=cfg.batch_size, bf16=bf16)
    todo = [j for j in jobs.values() if not offline.is_complete(j)]
    seconds = 0.0
    if todo:
        names = dict(enumerate(datasets))
        for split_id, job in jobs.items():
            if job in todo:
                rows = Path(job.folder) / "rows"
                tmp = rows.with_name(".rows.tmp")
                shutil.rmtree(tmp, ignore_errors=True)
                datasets[names[split_id]].select_columns(["input_ids", "labels"]).save_to_disk(str(tmp))
                shutil.rmtree(rows, ignore_errors=True)
                tmp.rename(rows)
        spec = root / "job.json"
        common.atomic_write(spec, json.dumps({"jobs": [vars(j) for j in todo]}, indent=1))
        print(f"[mentor] computing the teacher's top-{cfg.top_k} log-probs once, in a separate process, into {root}")
        started = time.time()
        code = subprocess.call([sys.executable, "-m", "mentor.whitebox.offline_logits", str(spec)])
        if code != 0:
            raise MentorError(f"computing the teacher logits stopped (exit code {code}); finished shards are kept in "
                              f"{root}: rerun the same command to resume")
        seconds = time.time() - started
        print(f"[mentor] teacher logits ready in {seconds:.1f}s")
        for job in todo:  # the encoded rows were only for the subprocess
            shutil.rmtree(Path(job.folder) / "rows", ignore_errors=True)
        spec.unlink(missing_ok=True)
    return {split_id: offline.TeacherLogits(job.folder, expect=job) for split_id, job in jobs.items()}, seconds


def prepare(cfg: WhiteboxConfig, out: Path, resume: bool = False) -> Prepared:
    """Everything before the first step: checks, data, student, teacher (or its logits), trainer."""
    method_cls = get_method(cfg.method)
    tune_cfg = cfg.tune_view()
    student_tok, student_config = peek(cfg.model)
    if cfg.uses_ema_teacher:
        teacher_config = student_config
        rows = output_rows(student_config)
        vocab = VocabCheck(rows, rows, rows, len(student_tok))
    else:
        teacher_tok, teacher_config = peek(cfg.teacher)
        vocab = check_vocabularies(teacher_tok, student_tok, output_rows(teacher_config), output_rows(student_config),
                                   cfg.teacher, cfg.model, announce=method_cls.uses_logits)
        if bool(getattr(teacher_config, "is_encoder_decoder", False)) != bool(getattr(student_config, "is_encoder_decoder", False)):
            raise MentorError("teacher and student must both be causal or both encoder-decoder (seq2seq) models "
                              "for white-box distillation")

    loaded, model, train_ds, eval_ds, use_chat_template, bf16, enc_stats = tune.setup(tune_cfg)
    if cfg.on_policy_fraction > 0 and loaded.is_seq2seq:
        raise MentorError("on-policy distillation (TRL GKD) is for causal models; set on_policy_fraction to 0")
    train_ds, eval_ds = _with_keys(train_ds, 0), _with_keys(eval_ds, 1)

    teacher = None
    stored, logits_seconds = None, 0.0
    if cfg.offline_logits:
        stored, logits_seconds = ensure_offline_logits(cfg, out, {"train": train_ds, "eval": eval_ds}, vocab.width,
                                       loaded.is_seq2seq, bf16)
        print("[mentor] training from stored teacher logits: the teacher is not loaded")
    elif not cfg.uses_ema_teacher:
        teacher_loaded = load_model(cfg.teacher, dtype=torch.bfloat16 if bf16 else torch.float32)
        teacher = teacher_loaded.model.eval().requires_grad_(False)

    method = method_cls(cfg, vocab.width)
    method.attach(model, teacher, student_config, teacher_config, loaded.is_seq2seq)

    has_eval = eval_ds is not None
    checkpoints = out / "checkpoints"
    args = common.training_arguments(tune_cfg, checkpoints, has_eval, bf16, eval_on_start=has_eval and not resume)
    trainer = WhiteboxTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=WhiteboxCollator(loaded.tokenizer, stored, with_prompts=cfg.on_policy_fraction > 0),
        processing_class=loaded.tokenizer,
        callbacks=[MetricsRecorder(out), ProgressBar(), *common.callbacks_for(tune_cfg, has_eval)],
        is_seq2seq=loaded.is_seq2seq,
        sampler_seed=cfg.seed,
        method=method,
        teacher=teacher,
        teacher_is_seq2seq=loaded.is_seq2seq,
        kd_ratio=cfg.kd_ratio,
        on_policy_fraction=cfg.on_policy_fraction,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
    )
    trainer.remove_callback(PrinterCallback)
    return Prepared(trainer, loaded, use_chat_template, enc_stats, vocab, teacher_config, logits_seconds)


def distill(config: WhiteboxConfig | None = None, **fields) -> common.TunedModel:
    """White-box distillation of a student from a teacher; rerunning the same job resumes it.

    distill(method="logit", teacher="tiny:llama", student="tiny:llama-small", data="train.jsonl",
            evaluation_data="eval.jsonl", output="out/", divergence="forward_kl", temperature=2.0)
    """
    if "student" in fields:
        fields["model"] = fields.pop("student")
    cfg = config or WhiteboxConfig(**fields)
    out = common.prepare_output(cfg.output, cfg.model_dump())
    if (done := common.finished_job(out)) is not None:
        return done

    resume = common.last_complete_checkpoint(out / "checkpoints")
    if resume:
        print(f"[mentor] resuming from {resume}")
    prep = prepare(cfg, out, resume=resume is not None)
    started = time.time()
    prep.trainer.train(resume_from_checkpoint=resume)
    seconds = time.time() - started

    extra = {"teacher": cfg.teacher or "ema", "distill_method": cfg.method,
             "vocabulary": {"width": prep.vocab.width, "teacher_rows": prep.vocab.teacher_rows,
                            "student_rows": prep.vocab.student_rows, "cropped": prep.vocab.cropped}}
    if cfg.offline_logits:
        extra["teacher_logits"] = {"folder": str(logits_folder(cfg, out)), "top_k": cfg.top_k,
                                   "seconds_this_run": round(prep.logits_seconds, 1)}
    start = _step0_eval(out)
    if start:
        extra["eval_at_start"] = start
    result = tune.save(cfg.tune_view(), out, prep.trainer, prep.loaded, prep.use_chat_template, prep.enc_stats, seconds,
                       method_name=f"distill-{cfg.method}", extra=extra)
    # The card again, listing the distillation parameters too (the tuning save knows only its own).
    hashes = {"data": common.file_sha256(cfg.data)}
    if cfg.evaluation_data:
        hashes["evaluation_data"] = common.file_sha256(cfg.evaluation_data)
    notes = [f"truncation: {k}: {v.summary()}" for k, v in prep.enc_stats.items() if v is not None]
    if start:
        notes.append("evaluation before training: " + ", ".join(f"{k} {v:.4f}" for k, v in start.items()))
    if prep.vocab.cropped:
        notes.append(f"vocabulary: logits cropped to {prep.vocab.width} columns (padding rows of the output matrices)")
    common.model_card(out, result, cfg.model_dump(), hashes, notes)
    return result


def _step0_eval(out: Path) -> dict:
    path = out / "metrics.jsonl"
    if not path.exists():
        return {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if row.get("step") == 0 and "eval_total_loss" in row:
            return {k: v for k, v in row.items() if k.startswith("eval_") and not k.endswith(("runtime", "per_second"))}
    return {}
