"""The registry of tuned models: every job that succeeds registers its model by name, with its
lineage (base model -> job -> data and teacher). Usable without a running server: the command line
(`mentor models ...`) and Python (`mentor.get_tuned_model(name)`) read the same database."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from sqlalchemy import select

from mentor.errors import MentorError
from mentor.jobs import ACTIVE, TunedModel, read_result, read_state
from mentor.model_record import ModelRecord
from mentor.server.db import Database, FileRow, JobRow, ModelRow, epoch

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,254}\Z")  # \Z: "$" would let a final newline by


class UnknownModel(MentorError):
    pass


def model_name(base_model: str, suffix: str | None, job_id: str) -> str:
    """OpenAI's shape: ft:BASE:SUFFIX:ID (the suffix is the user's, 'mentor' otherwise)."""
    return f"ft:{base_model}:{suffix or 'mentor'}:{job_id.removeprefix('ftjob-')[:12]}"


def _sha256_of(path: Path) -> str | None:
    if not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def register(session, job: JobRow) -> ModelRow:
    """The model a succeeded job made, under its name; its lineage from the job folder's records.
    Written in the caller's transaction: a second one would wait on SQLite's write lock, which the
    scheduler's pass holds until it commits."""
    folder = Path(job.folder)
    result = read_result(folder)
    state = read_state(folder)
    model_dir = Path(result.model_path)
    weights = "adapter" if (model_dir / "adapter_config.json").exists() else "full"
    config = dict(job.config)
    best = result.best_step
    judged_on = "eval task score (generated answers)" if config.get("selection_metric") == "task" \
        else "eval next-token accuracy"
    selection = (f"checkpoint of the best evaluation (step {best}) on {judged_on}" if best
                 else f"the last step ({result.steps_run})")
    row = ModelRow(
        name=model_name(job.base_model, job.suffix, job.id), job_id=job.id, base_model=job.base_model, kind=job.kind,
        method=config.get("method", job.kind), tuning=config.get("tuning"), weights=weights, path=str(model_dir),
        job_folder=str(folder), data_hashes=state.get("inputs", {}), teacher=config.get("teacher"),
        teacher_cache_sha256=_sha256_of(folder / "teacher_cache.sqlite"), parameters=config, metrics=result.metrics,
        best_step=best, selection=selection, display_name=job.display_name,
        train_seconds=(result.extra or {}).get("seconds"))
    session.merge(row)
    return row


def promote(db: Database, name: str, step: int) -> ModelRow:
    """Checkpoint `step` of a registered model's job, as a model of its own: NAME:ckpt-step-STEP.

    The job must have kept its checkpoints (`keep_checkpoints`, the server's default)."""
    from mentor.files import atomic_folder
    from mentor.training.checkpoints import checkpoint_complete

    row = get_model(db, name)
    folder = Path(row.job_folder)
    checkpoint = folder / "checkpoints" / f"checkpoint-{step}"
    if not checkpoint_complete(checkpoint):
        kept = sorted(int(p.name.split("-")[1]) for p in (folder / "checkpoints").glob("checkpoint-*")
                      if checkpoint_complete(p))
        kept_text = ", ".join(map(str, kept)) or "none (the job ran without keep_checkpoints)"
        raise MentorError(f"{name} has no checkpoint at step {step}; kept: {kept_text}")
    target = folder / "promoted" / f"step-{step}"
    skip = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "training_args.bin",
            "whitebox_state.pt")
    with atomic_folder(target) as tmp:
        for item in checkpoint.iterdir():
            if item.name not in skip and item.is_file():
                shutil.copy2(item, tmp / item.name)
        record = ModelRecord.read(row.path) or ModelRecord()
        record.model_copy(update={"promoted_from": str(checkpoint)}).write(tmp)
        for extra in ("mentor_base.json",):
            if (Path(row.path) / extra).exists():
                shutil.copy2(Path(row.path) / extra, tmp / extra)
    metrics = {}
    for line in (folder / "metrics.jsonl").read_text().splitlines() if (folder / "metrics.jsonl").exists() else []:
        data = json.loads(line)
        if data.get("step") == step:
            metrics.update({k: v for k, v in data.items() if k != "step"})
    promoted = ModelRow(
        name=f"{name}:ckpt-step-{step}", job_id=row.job_id, base_model=row.base_model, kind=row.kind,
        method=row.method, tuning=row.tuning, weights=row.weights, path=str(target), job_folder=row.job_folder,
        data_hashes=row.data_hashes, teacher=row.teacher, teacher_cache_sha256=row.teacher_cache_sha256,
        parameters=row.parameters, metrics=metrics, best_step=step,
        selection=f"promoted: the checkpoint at step {step} (instead of {row.selection})",
        display_name=row.display_name, train_seconds=row.train_seconds)
    with db.begin() as s:
        s.merge(promoted)
    return promoted


def list_models(db: Database, base_model: str | None = None) -> list[ModelRow]:
    with db.session() as s:
        q = select(ModelRow).order_by(ModelRow.created_at)
        if base_model:
            q = q.where(ModelRow.base_model == base_model)
        return list(s.scalars(q))


def get_model(db: Database, name: str) -> ModelRow:
    with db.session() as s:
        row = s.get(ModelRow, name)
    if row is None:
        raise UnknownModel(f"no tuned model named '{name}' in the registry")
    return row


class ModelInUse(MentorError):
    pass


def active_jobs_naming(session, *names: str) -> list[str]:
    """Jobs not yet ended that name any of `names` (an id, a model name, a path): as their base model,
    their files, or in their config (a folder as itself, or in a spec such as hf:FOLDER)."""
    wanted = set(names)

    def names_it(value) -> bool:
        return isinstance(value, str) and (value in wanted or any(value.endswith(f":{n}") for n in wanted))

    return [j.id for j in session.scalars(select(JobRow).where(JobRow.status.in_(ACTIVE)))
            if names_it(j.base_model) or names_it(j.training_file) or names_it(j.validation_file)
            or any(map(names_it, (j.config or {}).values()))]


def users_of(db: Database, row: ModelRow) -> list[str]:
    """Jobs not yet ended that name this model (as base, teacher, reward model), and adapters on it:
    each would lose weights it still loads."""
    with db.session() as s:
        jobs = active_jobs_naming(s, row.name, row.path)
        adapters = [m.name for m in s.scalars(select(ModelRow).where(ModelRow.base_model.in_([row.name, row.path]),
                                                                     ModelRow.weights == "adapter"))]
    return jobs + adapters


def delete_model(db: Database, name: str, files: bool = True) -> list[Path]:
    """Remove a model from the registry, and its job folder with it (the weights, metrics, events);
    refused while a job still to run or an adapter on it needs its weights. Returns the folders of
    weights it removed (a server unloads whatever it serves from them)."""
    row = get_model(db, name)
    if users := users_of(db, row):
        raise ModelInUse(f"{name} is still needed by {', '.join(users)}; cancel those jobs or delete those "
                         "models first")
    with db.begin() as s:
        s.delete(s.get(ModelRow, name))
        sharing = s.scalar(select(ModelRow.name).where(ModelRow.job_folder == row.job_folder).limit(1))
    if not files:
        return []
    if sharing is None:  # the last model of its job: the job folder goes
        shutil.rmtree(row.job_folder, ignore_errors=True)
        return [Path(row.job_folder), Path(row.path)]
    if Path(row.job_folder) / "promoted" in Path(row.path).parents:  # a promoted checkpoint: its own copy
        shutil.rmtree(row.path, ignore_errors=True)
        return [Path(row.path)]
    return []


@dataclass
class Lineage:
    model: dict
    job: dict | None
    base_model: str
    data: dict
    teacher: dict | None
    derived: list[str]  # models tuned on this model

    def as_dict(self) -> dict:
        return vars(self)


def lineage(db: Database, name: str) -> Lineage:
    """From a model back to its job, data, teacher and base; and forward to models tuned on it."""
    row = get_model(db, name)
    with db.session() as s:
        job = s.get(JobRow, row.job_id) if row.job_id else None
        derived = [m.name for m in s.scalars(select(ModelRow).where(ModelRow.base_model.in_([row.name, row.path])))]
    files = {k: v for k, v in row.parameters.items() if k in row.data_hashes and isinstance(v, str)}
    with db.session() as s:  # every input by its role (data, prompt_dataset, ...), with its upload's id
        uploads = {f.path: f.id for f in s.scalars(select(FileRow).where(FileRow.path.in_(list(files.values()))))}
    return Lineage(
        model=model_dict(row),
        job=None if job is None else {"id": job.id, "kind": job.kind, "status": job.status,
                                      "training_file": job.training_file, "validation_file": job.validation_file,
                                      "created_at": epoch(job.created_at), "finished_at": epoch(job.finished_at)},
        base_model=row.base_model,
        data={k: {"path": files.get(k), "sha256": v, "file_id": uploads.get(files[k]) if k in files else None}
              for k, v in row.data_hashes.items()},
        teacher=None if not row.teacher else {"reference": row.teacher, "cache_sha256": row.teacher_cache_sha256},
        derived=derived,
    )


def model_dict(row: ModelRow) -> dict:
    return {"name": row.name, "base_model": row.base_model, "kind": row.kind, "method": row.method,
            "tuning": row.tuning, "weights": row.weights, "path": row.path, "job_id": row.job_id,
            "data_hashes": row.data_hashes, "teacher": row.teacher, "teacher_cache_sha256": row.teacher_cache_sha256,
            "parameters": row.parameters, "metrics": row.metrics, "best_step": row.best_step,
            "selection": row.selection, "created_at": epoch(row.created_at), "display_name": row.display_name}


def get_tuned_model(name: str, data_dir: str | Path | None = None) -> TunedModel:
    """A registered model by name, as the handle a job returns (`.predict(...)` works)."""
    from mentor.server.settings import default_data_dir

    db = Database(Path(data_dir).expanduser() if data_dir else default_data_dir())
    row = get_model(db, name)
    result = read_result(row.job_folder)
    # the registry's row, not the job's result, says which weights the name stands for: a promoted
    # checkpoint (NAME:ckpt-step-N) shares its job's result
    return replace(result, model_path=row.path, metrics=row.metrics, best_step=row.best_step,
                   extra={**(result.extra or {}), "registered_name": row.name})


def dumps(rows) -> str:
    return json.dumps(rows, indent=2, default=str)
