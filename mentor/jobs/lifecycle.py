"""One lifecycle for every job kind, kept in files in the job's folder.

    OUTPUT/config.yaml    the job: its kind and every config field (usable as `--config`)
    OUTPUT/state.json     pending | running | succeeded | failed | cancelled, timestamps, progress,
                          input file hashes, the error (with the file, line and field it concerns)
    OUTPUT/events.jsonl   append-only: started, resumed from step N, evaluation, checkpoint saved,
                          early stop, best checkpoint chosen, finished, failed, cancelled
    OUTPUT/result.json    the finished job's result
    OUTPUT/CANCEL         written by `mentor cancel` (or anyone): the job stops at the next step

A job folder is held by one live process at a time (an OS file lock, released when the process
dies, so a lock left by a SIGKILL never blocks the rerun). A folder keeps one job: a different
config, or changed contents of an input file, is refused once the job has made progress; a job
that failed before its first training step may be replaced. Under torchrun/accelerate only rank 0
keeps these files; the other ranks read nothing and write nothing here.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from mentor.errors import DamagedJobFile, DataValidationError, MentorError
from mentor.files import append_line, atomic_write, file_sha256
from mentor.job_files import CONFIG_FILE, RESULT_FILE, STATE_FILE, is_job_folder, load_state
from mentor.jobs.config import JobConfig
from mentor.jobs.result import TunedModel

log = logging.getLogger("mentor")

STATES = ("pending", "running", "succeeded", "failed", "cancelled")
# a job's status as a service records it (OpenAI's names): the folder's states, with the queue's own
# (validating_files, queued) and a pause the service holds between two runs of the folder
STATUSES = ("validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled")
ENDED = ("succeeded", "failed", "cancelled")
ACTIVE = tuple(s for s in STATUSES if s not in ENDED)  # not ended: it may still run, so it may still be stopped
CANCEL_FILE = "CANCEL"
LOCK_FILE = ".mentor.lock"


class JobCancelled(MentorError):
    """The job stopped at a step boundary because it was asked to; its last checkpoint is kept."""


NEARLY_FULL = 64 * 2**20  # free bytes below which a failed write is put down to a full disk
# mentor's own hidden files: a folder holding only these is as good as empty
OWN_HIDDEN_FILES = (LOCK_FILE,)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    # a zombie answers the signal, yet it is dead: a worker its parent (the server) has not reaped yet
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # without /proc (not Linux) the signal's answer is all there is; with it, it ended just now
        return not Path("/proc").is_dir()
    return stat[stat.rfind(")") + 2:][:1] != "Z"


def process_gone(state: dict) -> bool:
    """The state says running on this machine, and the process it names is gone: it ended without
    recording its end (killed, or out of memory or disk)."""
    pid = state.get("pid")
    here = state.get("host") in (None, socket.gethostname())  # another machine's pid says nothing here
    return state.get("state") == "running" and isinstance(pid, int) and here and not _process_alive(pid)


def observed_state(folder: str | Path) -> dict:
    """The job's state as it is, not only as recorded: a job recorded `running` on this machine
    whose process is gone (killed, or it died writing to a full disk) is reported failed, so
    nobody waits for a process that no longer exists."""
    state = load_state(folder)
    pid = state.get("pid")
    if process_gone(state):
        state = {**state, "state": "failed",
                 "error": {"type": "Interrupted",
                           "message": f"interrupted: the job's process (pid {pid}) is gone and never recorded its end "
                                      "(killed, or out of memory or disk); rerun the same command to resume from its "
                                      "last checkpoint"}}
    return state


def _comparable(value: Any, is_path: bool) -> Any:
    """A config value as compared between runs: a path as the file it names."""
    if is_path and isinstance(value, str):
        return str(Path(value).expanduser().resolve())
    return value


def _load_saved_config(path: Path) -> dict:
    """A job folder's config.yaml, or a DamagedJobFile naming it."""
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError, OSError):
        saved = None
    if not isinstance(saved, dict):
        raise DamagedJobFile(f"{path} is damaged (not the YAML mapping of job fields mentor writes); restore it, or "
                             "delete the folder to start the job over")
    return saved


def write_job_config(folder: str | Path, kind: str, fields: dict) -> None:
    """A job's order, whole or not at all (a worker must never read half of one): its kind and
    every config field, as a job writes its own."""
    atomic_write(Path(folder) / CONFIG_FILE, yaml.safe_dump({"kind": kind, **fields}, sort_keys=False))


def read_job_config(folder: str | Path) -> dict:
    """A job folder's kind and config fields; a damaged or missing file is a DamagedJobFile naming it."""
    return _load_saved_config(Path(folder) / CONFIG_FILE)


def disk_full(err: BaseException | None, folder: Path | None = None) -> bool:
    """The error, or one it was raised from, is a full disk (or quota): libraries that write
    checkpoints wrap the OSError in errors of their own. torch.save's says only "file write failed",
    so a failed write is taken for a full disk when `folder`'s disk is (nearly) full."""
    seen = 0
    while err is not None and seen < 8:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        message = str(err).lower()
        if "no space left on device" in message:
            return True
        if folder is not None and isinstance(err, RuntimeError) and "write failed" in message:
            try:
                return shutil.disk_usage(folder).free < NEARLY_FULL
            except OSError:
                return False
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


def read_events(folder: str | Path) -> list[dict]:
    """Every complete event line: a line cut short by a kill, and any line that is not an event
    object (damaged by hand or by the disk), is skipped; damage beyond a torn last line is logged."""
    path = Path(folder) / "events.jsonl"
    if not path.exists():
        return []
    events, damaged = [], 0
    lines = path.read_bytes().split(b"\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            event = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            event = None
        if isinstance(event, dict):
            events.append(event)
        elif number < len(lines):  # a last line without its newline is a torn write, not damage
            damaged += 1
    if damaged:
        log.warning("%s: %d damaged line(s) skipped", path, damaged)
    return events


def request_cancel(folder: str | Path) -> None:
    """Ask the job in `folder` to stop at its next step boundary (it keeps its last checkpoint)."""
    folder = Path(folder)
    if not (folder / CONFIG_FILE).exists():
        raise MentorError(f"{folder} holds no mentor job")
    (folder / CANCEL_FILE).write_text(_now() + "\n")


class Job:
    """A job's folder, held open while the job runs."""

    def __init__(self, kind: str, config: JobConfig, parent: Job | None = None):
        self.kind = kind
        self.config = config
        self.folder = Path(config.output).expanduser()
        self.parent = parent  # the job this one is a stage of: its cancel stops this one too
        self.main = is_main_process()
        self._on_success: list[Callable[[], None]] = []
        self._lock_fd: int | None = None
        self._state: dict[str, Any] = {}
        self._signalled = threading.Event()
        self._old_handler = None

    # -- opening: lock, identity -------------------------------------------------------------
    @classmethod
    def open(cls, kind: str, config: JobConfig, parent: Job | None = None) -> Job:
        job = cls(kind, config, parent)
        if job.main:
            job._check_folder()
            job._lock()
            try:
                job._claim()
            except BaseException:
                job.close()
                raise
        return job

    def _check_folder(self) -> None:
        f = self.folder
        if f.exists() and not f.is_dir():
            raise MentorError(f"output {f} is a file, not a folder: give a folder for the job")
        self._check_not_foreign(f)
        try:
            f.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=f):  # a real write: permission bits say nothing to root
                pass
        except OSError as err:
            raise MentorError(f"cannot write to the output folder {f}: {err.strerror or err}") from None

    @staticmethod
    def _check_not_foreign(f: Path) -> None:
        """A job writes its model card, model and files into its folder, overwriting what is there:
        refuse a folder that holds anything but a mentor job (a user's own files), and a path that
        reaches into another job's folder through a symlink (its model would be overwritten)."""
        if f.is_dir() and not is_job_folder(f):
            others = sorted(p.name for p in f.iterdir() if p.name not in OWN_HIDDEN_FILES)
            if others:
                shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
                raise MentorError(f"output folder {f} is not empty and holds no mentor job ({shown}); a job would "
                                  "overwrite its files: give a new or empty folder")
        resolved = f.resolve()
        holder = next((p for p in resolved.parents if is_job_folder(p)), None)
        if holder is None:
            return
        # inside another job's folder: fine when the path names that folder and goes on by plain names
        # (RLHF's reward-model stage, even with a symlink above the folder, such as a linked home); not
        # when a symlink leads in (into its model/, say)
        given = Path(os.path.abspath(f))  # '..' and '.' resolved by name, symlinks not followed
        for above in given.parents:
            if above.resolve() == holder:
                if given.relative_to(above) == resolved.relative_to(holder):
                    return
                break
        raise MentorError(f"output {f} leads through a symlink into the folder of another mentor job ({holder}), "
                          "whose files it would overwrite; give a folder of its own")

    def _lock(self) -> None:
        path = self.folder / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise MentorError(f"{self.folder} is in use by another running mentor job (pid {holder}); wait for it "
                              "to finish, cancel it (`mentor cancel FOLDER`), or give another --output") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def _identity(self) -> dict:
        return {"kind": self.kind, **self.config.model_dump(mode="json")}

    def _claim(self) -> None:
        """Make this folder this job's, or refuse: a folder holds one job."""
        saved_path = self.folder / CONFIG_FILE
        hashes = {name: file_sha256(path) for name, path in self.config.input_files().items() if Path(path).is_file()}
        state = load_state(self.folder)
        if saved_path.exists():
            saved = _load_saved_config(saved_path)
            if "kind" not in saved:  # written before job kinds had names
                saved = {"kind": self.kind, **saved}
            mine = self._identity()
            # a field added to the kind since the folder was written, left at its default, is the same job;
            # so is one the kind no longer has (it never changed what the job did)
            saved = {k: v for k, v in {**self._defaults_of_new_fields(saved), **saved}.items()
                     if k not in type(self.config).retired_fields}
            paths = ("output", *self.config.input_fields)  # "./run" and "/home/me/run" are one folder
            changed = sorted(k for k in set(saved) | set(mine)
                             if _comparable(saved.get(k), k in paths) != _comparable(mine.get(k), k in paths))
            changed_inputs = sorted(k for k, h in state.get("inputs", {}).items() if hashes.get(k, h) != h)
            if changed or changed_inputs:
                if self._replaceable(state):
                    log.info("%s held a job that failed before training; replacing it", self.folder)
                    self._clear()
                    state = {}
                elif changed:
                    raise MentorError(f"{self.folder} holds a different job (fields differ: {', '.join(changed)}); "
                                      "use a new --output folder, or delete this one to start over")
                else:
                    files = ", ".join(f"{k} ({getattr(self.config, k)})" for k in changed_inputs)
                    raise MentorError(f"the contents of {files} changed since the job in {self.folder} started, so its "
                                      "checkpoints and results belong to the old data; use a new --output folder, or "
                                      "delete this one to start over")
        write_job_config(self.folder, self.kind, self.config.model_dump(mode="json"))
        self._state = state or {"kind": self.kind, "state": "pending", "created_at": _now(), "attempts": 0, "step": 0}
        self._state["inputs"] = {**self._state.get("inputs", {}), **hashes}
        self._write_state()

    def _defaults_of_new_fields(self, saved: dict) -> dict:
        """The defaults, as a config file writes them, of the fields this kind has and ``saved`` lacks."""
        fields = type(self.config).model_fields
        missing = {name for name, field in fields.items() if name not in saved and not field.is_required()}
        if not missing:
            return {}
        dumped = self.config.model_dump(mode="json", include=missing)
        return {name: dumped[name] for name in missing
                if fields[name].get_default(call_default_factory=True) == getattr(self.config, name)}

    def _replaceable(self, state: dict) -> bool:
        """A job may be replaced when it never trained: it failed (or never started) before step 1."""
        progressed = state.get("step", 0) > 0 or (self.folder / RESULT_FILE).exists() \
            or any((self.folder / "checkpoints").glob("checkpoint-*"))
        return not progressed and state.get("state") in (None, "pending", "failed")

    def _clear(self) -> None:
        for name in (CONFIG_FILE, STATE_FILE, "events.jsonl", "metrics.jsonl", CANCEL_FILE):
            (self.folder / name).unlink(missing_ok=True)

    def close(self) -> None:
        if self._old_handler is not None:
            signal.signal(signal.SIGTERM, self._old_handler)
            self._old_handler = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the lock
            self._lock_fd = None

    # -- state and events ----------------------------------------------------------------------
    @property
    def state(self) -> dict:
        return dict(self._state)

    def _write_state(self) -> None:
        if self.main:
            self._state["updated_at"] = _now()
            atomic_write(self.folder / STATE_FILE, json.dumps(self._state, indent=2))

    def update(self, **fields: Any) -> None:
        """Merge fields into state.json."""
        self._state.update(fields)
        self._write_state()

    def event(self, type: str, message: str = "", **data: Any) -> None:
        """Append one event to events.jsonl (and say it in the log when it has a message)."""
        if not self.main:
            return
        row = {"time": _now(), "type": type, **({"message": message} if message else {}), **data}
        append_line(self.folder / "events.jsonl", json.dumps(row))

    def finished_result(self) -> TunedModel | None:
        """The result of this job if it already finished: rerunning a finished job is a no-op."""
        path = self.folder / RESULT_FILE
        if path.exists() and self._state.get("state", "succeeded") == "succeeded":
            return TunedModel.read(path)  # a damaged one is a DamagedJobFile: the job stays succeeded
        return None

    def start(self) -> None:
        previous = self._state.get("state")
        if self.main:
            (self.folder / CANCEL_FILE).unlink(missing_ok=True)
        self._signalled.clear()
        self._install_sigterm()
        attempts = self._state.get("attempts", 0) + 1
        self.update(state="running", started_at=self._state.get("started_at") or _now(), attempts=attempts,
                    pid=os.getpid(), host=socket.gethostname(), error=None, finished_at=None)
        if previous == "running":
            self.event("restarted", "the previous run of this job ended without a word (killed); continuing")
        self.event("started", f"{self.kind} job started (attempt {attempts})", kind=self.kind, attempt=attempts,
                   pid=os.getpid())

    def on_success(self, cleanup: Callable[[], None]) -> None:
        """Run `cleanup` once the job is recorded as succeeded: what a rerun would need to resume
        (checkpoints) is deleted only when no rerun can need it."""
        self._on_success.append(cleanup)

    def succeed(self, result: TunedModel) -> None:
        if not self.main:
            return
        result.kind = self.kind
        atomic_write(self.folder / RESULT_FILE, result.to_json())
        self.update(state="succeeded", finished_at=_now(), result=RESULT_FILE, pid=None)
        self.event("finished", f"{self.kind} job succeeded", metrics=result.metrics, model=result.model_path)
        for cleanup in self._on_success:
            cleanup()

    def fail(self, err: BaseException) -> None:
        error: dict[str, Any] = {"message": str(err).splitlines()[0] if str(err) else type(err).__name__,
                                 "type": type(err).__name__}
        if isinstance(err, DataValidationError):
            error["problems"] = [vars(p) for p in err.problems]
            first = err.problems[0] if err.problems else None
            if first is not None:
                error.update(file=first.file, line=first.line, field=first.field, message=str(first))
        self._state["error"] = error
        self._record_end("failed", "failure", error["message"], error=error)

    def _record_end(self, state: str, what: str, message: str, **data: Any) -> None:
        """Record how the job ended. The disk may be full (the very reason it failed, or a cancel that
        came while it was): the state is still recorded, in place if need be, and a failure to write
        the event is logged, not raised over the job's own end."""
        self._state.update(state=state, finished_at=_now(), pid=None)
        try:
            self._write_state()
        except OSError:
            self._write_state_in_place()
        try:
            self.event(state, message, **data)
        except OSError as err:
            log.warning("could not record the %s in %s: %s", what, self.folder / "events.jsonl", err.strerror or err)

    def _write_state_in_place(self) -> None:
        """Overwrite state.json in its own blocks: on a full disk the atomic write's new file has no
        room, while truncating and rewriting a file of the same size needs none."""
        if not self.main:
            return
        try:
            with open(self.folder / STATE_FILE, "r+", encoding="utf-8") as f:
                f.truncate(0)
                f.write(json.dumps(self._state, indent=2))
        except OSError as err:
            log.warning("could not record the job's state in %s: %s", self.folder / STATE_FILE, err.strerror or err)

    def mark_cancelled(self, why: str = "cancelled") -> None:
        step = self._state.get("step", 0)
        self._record_end("cancelled", "cancel", f"{why}; rerun the same job to resume from step {step}", step=step)
        if self.main:
            (self.folder / CANCEL_FILE).unlink(missing_ok=True)  # removing a file needs no space

    # -- cancel -----------------------------------------------------------------------------------
    def _install_sigterm(self) -> None:
        if threading.current_thread() is not threading.main_thread() or self._old_handler is not None:
            return

        def on_sigterm(signum, frame):
            self._signalled.set()

        self._old_handler = signal.signal(signal.SIGTERM, on_sigterm)

    @property
    def cancel_requested(self) -> bool:
        """Asked to stop: by SIGTERM, by this job's CANCEL file, or by that of the job it is a stage of
        (`mentor cancel` and the Ray executor name the outer job's folder)."""
        own = self._signalled.is_set() or (self.folder / CANCEL_FILE).exists()
        return own or (self.parent is not None and self.parent.cancel_requested)

    def cancelled(self) -> JobCancelled:
        """The error that ends a job which stopped because it was asked to."""
        return JobCancelled(f"job in {self.folder} cancelled at step {self._state.get('step', 0)}; its last "
                            "checkpoint is kept: rerun the same command to resume")

    # -- progress ------------------------------------------------------------------------------------
    @property
    def train_seconds(self) -> float:
        """Training time over every run of this job, up to the last checkpoint it resumed from."""
        return float(self._state.get("train_seconds", 0.0))
