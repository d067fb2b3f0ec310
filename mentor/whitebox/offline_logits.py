"""Offline teacher logits: the teacher's top-k log-probs, computed once, read back by example.

Layout of a logits folder (one per data split):

    index.json                what was computed (teacher, k, temperature, data hash...) and the
                              finished shards; `complete` once every shard is written
    shard-00000.safetensors   logprobs (P, k) float32, indices (P, k) int32 and offsets (n + 1,)
                              int64 for the shard's n examples: example j owns rows
                              offsets[j]:offsets[j+1], one row per position that predicts an
                              output token, in sequence order
    rows/                     the encoded examples the logits belong to (for the subprocess)

Each shard is written to a temporary file and renamed, so a shard either exists whole or not at
all; a killed run (even SIGKILL) resumes by skipping the shards that exist. The student's
trainer reads only these files: the teacher is never loaded in the training process.

The teacher is a model loaded in that process, or a served teacher (`openai:MODEL@URL`, the
same tokenizer as the student's): its top-k log-probs come from the server's completions route
(`mentor.teachers.logprobs`), cached beside the logits folders, at temperature 1.

Run as `python -m mentor.whitebox.offline_logits JOB.json` (what the recipe does, in a
subprocess), or call `compute_logits` directly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mentor.data.encode import IGNORE
from mentor.errors import MentorError
from mentor.files import atomic_folder, atomic_path, atomic_write
from mentor.teachers.logprobs import is_served
from mentor.whitebox.config import LogitConfig

log = logging.getLogger("mentor")

FORMAT = 1
KILL_ENV = "MENTOR_WHITEBOX_KILL_AFTER_SHARDS"  # fault injection for tests: SIGKILL self after N new shards


def rows_sha256(rows) -> str:
    h = hashlib.sha256()
    for ids, labels in zip(rows["input_ids"], rows["labels"]):
        h.update(json.dumps([ids, labels]).encode())
    return h.hexdigest()


def target_count(labels: list[int], is_seq2seq: bool) -> int:
    """Positions that predict an output token (what the loss and the stored logits cover)."""
    return sum(1 for t in (labels if is_seq2seq else labels[1:]) if t != IGNORE)


@dataclass
class LogitsJob:
    """One split's logits to compute; the fields (except folder and batch_size) key the folder."""

    teacher: str
    folder: str
    top_k: int
    temperature: float
    width: int
    is_seq2seq: bool
    num_examples: int
    rows_sha256: str
    shard_examples: int
    batch_size: int = 8
    bf16: bool = False
    # a served teacher (`openai:MODEL@URL`): the tokenizer its token ids are read with (the student's)
    tokenizer: str | None = None

    def key(self) -> dict:
        k = asdict(self)
        for field in ("folder", "batch_size", "bf16", "tokenizer"):
            k.pop(field)
        return {"format": FORMAT, **k}

    @property
    def num_shards(self) -> int:
        return (self.num_examples + self.shard_examples - 1) // self.shard_examples

    def shard_path(self, i: int) -> Path:
        return Path(self.folder) / f"shard-{i:05d}.safetensors"


def read_index(folder: Path) -> dict | None:
    p = Path(folder) / "index.json"
    return json.loads(p.read_text()) if p.exists() else None


def check_folder(job: LogitsJob) -> dict | None:
    """The folder's index if it holds logits for this exact job; an error if it holds others."""
    index = read_index(Path(job.folder))
    if index is None:
        return None
    if index.get("key") != job.key():
        old, new = index.get("key", {}), job.key()
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise MentorError(f"{job.folder} holds teacher logits of a different job (differs in: {', '.join(changed)}); "
                          "delete the folder or choose another teacher_logits_dir")
    return index


def is_complete(job: LogitsJob) -> bool:
    index = check_folder(job)
    return bool(index and index.get("complete"))


def _write_index(job: LogitsJob, shards: dict[int, dict], complete: bool) -> None:
    index = {"key": job.key(), "num_shards": job.num_shards, "complete": complete,
             "shards": [shards[i] for i in sorted(shards)]}
    atomic_write(Path(job.folder) / "index.json", json.dumps(index, indent=1))


def _existing_shard(job: LogitsJob, i: int) -> dict | None:
    from safetensors import safe_open

    path = job.shard_path(i)
    if not path.exists():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            offsets = f.get_tensor("offsets")
    except Exception:  # noqa: BLE001 - unreadable: compute it again
        path.unlink()
        return None
    start = i * job.shard_examples
    return {"file": path.name, "start": start, "end": start + len(offsets) - 1, "positions": int(offsets[-1])}


@torch.inference_mode()
def compute_logits(jobs: list[LogitsJob], rows_by_job: list, teacher_loaded=None) -> None:
    """Compute and store the teacher's top-k log-probs for every unfinished shard of every job."""
    from safetensors.torch import save_file

    from mentor.training.arguments import collator
    from mentor.training.trainer import accepts_logits_to_keep, token_loss
    from mentor.whitebox.losses import teacher_topk

    killer = int(os.environ.get(KILL_ENV, "0") or 0)
    written = 0
    loaded = teacher_loaded
    for job, rows in zip(jobs, rows_by_job):
        folder = Path(job.folder)
        folder.mkdir(parents=True, exist_ok=True)
        index = check_folder(job)
        if index and index.get("complete"):
            continue
        for stale in folder.glob(".*.tmp"):
            stale.unlink()
        shards = {i: s for i in range(job.num_shards) if (s := _existing_shard(job, i))}
        if shards:
            log.info(f"teacher logits in {folder}: {len(shards)} of {job.num_shards} shards already done, resuming")
        _write_index(job, shards, complete=len(shards) == job.num_shards)
        todo = [i for i in range(job.num_shards) if i not in shards]
        if not todo:
            continue
        if is_served(job.teacher):
            _served_shards(job, rows, shards, todo, killer)
            continue
        if loaded is None:
            from mentor.models import load_model

            dtype = torch.bfloat16 if job.bf16 else torch.float32
            loaded = load_model(job.teacher, dtype=dtype)
            loaded.model.eval()
        model, tok = loaded.model, loaded.tokenizer
        keep = not job.is_seq2seq and accepts_logits_to_keep(model)
        collate = collator(tok)
        started = time.time()
        for n_done, i in enumerate(todo):
            start, end = i * job.shard_examples, min((i + 1) * job.shard_examples, job.num_examples)
            values, indices, counts = [], [], []
            for b in range(start, end, job.batch_size):
                feats = [{"input_ids": rows["input_ids"][j], "attention_mask": [1] * len(rows["input_ids"][j]),
                          "labels": rows["labels"][j]} for j in range(b, min(b + job.batch_size, end))]
                batch = {k: v.to(model.device) for k, v in collate(feats).items()}
                logits = token_loss(model, batch, job.is_seq2seq, keep).logits
                v, ix = teacher_topk(logits[:, : job.width], job.top_k, job.temperature)
                values.append(v.float().cpu())
                indices.append(ix.to(torch.int32).cpu())
                counts += [target_count(f["labels"], job.is_seq2seq) for f in feats]
            offsets = torch.tensor([0, *counts], dtype=torch.int64).cumsum(0)
            logprobs = torch.cat(values)
            if logprobs.shape[0] != offsets[-1]:
                raise MentorError("teacher logits do not line up with the output tokens (internal error)")
            path = job.shard_path(i)
            with atomic_path(path) as tmp:
                save_file({"logprobs": logprobs.contiguous(), "indices": torch.cat(indices).contiguous(),
                           "offsets": offsets}, str(tmp), metadata={"start": str(start), "end": str(end)})
            shards[i] = {"file": path.name, "start": start, "end": end, "positions": int(offsets[-1])}
            _write_index(job, shards, complete=len(shards) == job.num_shards)
            written += 1
            elapsed = time.time() - started
            log.info(f"teacher logits {folder.name}: shard {len(shards)}/{job.num_shards} "
                     f"({elapsed / (n_done + 1):.1f}s per shard)")
            if killer and written >= killer:
                os.kill(os.getpid(), signal.SIGKILL)


def output_positions(input_ids: list[int], labels: list[int]) -> list[int]:
    """The positions j of a causal example whose token is an output token (what the stored rows
    cover, in order: the distribution over token j given the tokens before it)."""
    return [j for j in range(1, len(input_ids)) if labels[j] != IGNORE]


def served_teacher(job: LogitsJob):
    """The log-prob teacher a served job asks, its answers cached beside the logits folders (a rerun
    whose shards were lost asks nothing again)."""
    from mentor.teachers import CACHE_FILENAME
    from mentor.teachers.logprobs import build_logprob_teacher

    if job.tokenizer is None:
        raise MentorError(f"served teacher {job.teacher}: no tokenizer given to read its token ids (internal error)")
    return build_logprob_teacher(job.teacher, tokenizer=job.tokenizer, cache_path=Path(job.folder).parent / CACHE_FILENAME)


def _served_shards(job: LogitsJob, rows, shards: dict[int, dict], todo: list[int], killer: int) -> None:
    """The unfinished shards of one split from a served teacher's top-k log-probs (temperature 1,
    checked by the config): each shard's examples asked at once (the teacher keeps as many requests
    in flight as the server takes), the rows of the output positions kept."""
    from safetensors.torch import save_file

    folder = Path(job.folder)
    started = time.time()
    with served_teacher(job) as teacher:
        for n_done, i in enumerate(todo):
            start, end = i * job.shard_examples, min((i + 1) * job.shard_examples, job.num_examples)
            examples = [(rows["input_ids"][j], rows["labels"][j]) for j in range(start, end)]
            positions = [output_positions(ids, labels) for ids, labels in examples]
            asked = [n for n, p in enumerate(positions) if p]
            scored = dict(zip(asked, teacher.score([examples[n][0] for n in asked], [positions[n][0] for n in asked],
                                                   job.top_k)))
            values, indices, counts = [], [], []
            for n, p in enumerate(positions):
                counts.append(len(p))
                if not p:
                    continue
                keep = [j - p[0] for j in p]  # output tokens after the first need not be contiguous
                values.append(torch.from_numpy(scored[n].logprobs[keep]))
                indices.append(torch.from_numpy(scored[n].ids[keep]).to(torch.int32))
            logprobs = torch.cat(values) if values else torch.zeros((0, job.top_k))
            ids = torch.cat(indices) if indices else torch.zeros((0, job.top_k), dtype=torch.int32)
            if ids.numel() and int(ids.max()) >= job.width:
                raise MentorError(f"the served teacher {job.teacher} named token id {int(ids.max())}, past the "
                                  f"{job.width} logits the student has: not the student's vocabulary")
            offsets = torch.tensor([0, *counts], dtype=torch.int64).cumsum(0)
            path = job.shard_path(i)
            with atomic_path(path) as tmp:
                save_file({"logprobs": logprobs.float().contiguous(), "indices": ids.contiguous(), "offsets": offsets},
                          str(tmp), metadata={"start": str(start), "end": str(end)})
            shards[i] = {"file": path.name, "start": start, "end": end, "positions": int(offsets[-1])}
            _write_index(job, shards, complete=len(shards) == job.num_shards)
            log.info(f"teacher logits {folder.name}: shard {len(shards)}/{job.num_shards} from {teacher.identity} "
                     f"({(time.time() - started) / (n_done + 1):.1f}s per shard; {teacher.stats.summary()})")
            if killer and n_done + 1 >= killer:
                os.kill(os.getpid(), signal.SIGKILL)


class TeacherLogits:
    """Reads one split's stored logits by example index (memory-mapped, a shard at a time)."""

    def __init__(self, folder: str | Path, expect: LogitsJob | None = None):
        self.folder = Path(folder)
        index = check_folder(expect) if expect is not None else read_index(self.folder)
        if not index or not index.get("complete"):
            raise MentorError(f"{self.folder} holds no complete teacher logits; compute them first")
        self.key = index["key"]
        self.shard_examples = self.key["shard_examples"]
        self._open: dict[int, tuple] = {}

    def _shard(self, i: int):
        if i not in self._open:
            from safetensors import safe_open

            f = safe_open(str(self.folder / f"shard-{i:05d}.safetensors"), "pt")
            self._open[i] = (f, f.get_tensor("offsets"))
        return self._open[i]

    def get(self, example: int) -> tuple[torch.Tensor, torch.Tensor]:
        f, offsets = self._shard(example // self.shard_examples)
        j = example % self.shard_examples
        a, b = int(offsets[j]), int(offsets[j + 1])
        return f.get_slice("logprobs")[a:b], f.get_slice("indices")[a:b]


def logits_folder(cfg: LogitConfig, out: Path) -> Path:
    return Path(cfg.teacher_logits_dir) if cfg.teacher_logits_dir else out / "teacher_logits"


def ensure_offline_logits(cfg: LogitConfig, out: Path, datasets: dict, width: int, is_seq2seq: bool,
                          bf16: bool) -> tuple[dict[int, TeacherLogits], float]:
    """Stored top-k teacher logits for each split, computed in a subprocess if missing or unfinished;
    and the seconds that took (0 when they were there already)."""
    root = logits_folder(cfg, out)
    jobs = {}
    for split_id, (name, ds) in enumerate(datasets.items()):
        if ds is None:
            continue
        jobs[split_id] = LogitsJob(
            teacher=cfg.teacher, folder=str(root / name), top_k=cfg.top_k, temperature=cfg.temperature, width=width,
            is_seq2seq=is_seq2seq, num_examples=len(ds), rows_sha256=rows_sha256(ds),
            shard_examples=cfg.shard_examples, batch_size=cfg.batch_size, bf16=bf16,
            tokenizer=cfg.model if is_served(cfg.teacher) else None)
    todo = [j for j in jobs.values() if not is_complete(j)]
    seconds = 0.0
    if todo and is_served(cfg.teacher):
        # here, not in the subprocess: a server that scores no given tokens, or tokenizes otherwise,
        # stops the job in one line
        first = next(ds for ds in datasets.values() if ds is not None)
        with served_teacher(todo[0]) as teacher:
            teacher.check(teacher.tokenizer.decode(first[0]["input_ids"], skip_special_tokens=True) or "a")
    if todo:
        names = dict(enumerate(datasets))
        for split_id, job in jobs.items():
            if job in todo:
                with atomic_folder(Path(job.folder) / "rows") as tmp:
                    datasets[names[split_id]].select_columns(["input_ids", "labels"]).save_to_disk(str(tmp))
        spec = root / "job.json"
        atomic_write(spec, json.dumps({"jobs": [vars(j) for j in todo]}, indent=1))
        log.info(f"computing the teacher's top-{cfg.top_k} log-probs once, in a separate process, into {root}")
        started = time.time()
        code = subprocess.call([sys.executable, "-m", "mentor.whitebox.offline_logits", str(spec)])
        if code != 0:
            raise MentorError(f"computing the teacher logits stopped (exit code {code}); finished shards are kept in "
                              f"{root}: rerun the same command to resume")
        seconds = time.time() - started
        log.info(f"teacher logits ready in {seconds:.1f}s")
        for job in todo:  # the encoded rows were only for the subprocess
            shutil.rmtree(Path(job.folder) / "rows", ignore_errors=True)
        spec.unlink(missing_ok=True)
    return {split_id: TeacherLogits(job.folder, expect=job) for split_id, job in jobs.items()}, seconds


def run_job_file(path: str) -> None:
    """Entry point of the subprocess: a JSON list of jobs, each with the folder of its encoded rows."""
    from datasets import load_from_disk

    spec = json.loads(Path(path).read_text())
    jobs = [LogitsJob(**j) for j in spec["jobs"]]
    rows = [load_from_disk(str(Path(j.folder) / "rows")) for j in jobs]
    compute_logits(jobs, rows)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        run_job_file(sys.argv[1])
    except MentorError as err:
        print(f"mentor: error: {err}", file=sys.stderr)
        sys.exit(2)
