"""The queue: starts queued jobs up to the concurrency limit, watches running ones, and settles each
job's status from its folder when its worker ends. Restart-safe: a job found running when the server
starts (its worker died with the old server) is queued again and resumes from its last checkpoint;
a job whose worker died is resumed the same way, a few times, before it is failed."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import object_session

from mentor.errors import DamagedJobFile
from mentor.files import append_line
from mentor.jobs import produces, read_result, read_state
from mentor.jobs.lifecycle import CANCEL_FILE, process_gone
from mentor.server import registry
from mentor.server.db import Database, JobRow, now
from mentor.server.executors import Finished, recorded_by

log = logging.getLogger("mentor")


def service_event(folder: str | Path, type: str, message: str, **data) -> None:
    """An event of the service itself (queued, paused, restarted...) in the job's events.jsonl."""
    from mentor.jobs.lifecycle import _now

    row = {"time": _now(), "type": type, "message": message, "source": "server", **data}
    # the shared helper: a line a killed worker left torn is cut first, not glued to this one
    append_line(Path(folder) / "events.jsonl", json.dumps(row))


def worker_gone(job: JobRow, state: dict) -> bool:
    """A running job whose worker died without a word, seen from its folder: the state its worker
    recorded names a process on this machine that is gone. The engine may not have said so yet (the
    next poll, or never); the scheduler settles it as a worker death, and the job views show it so."""
    return job.status == "running" and process_gone(state) and recorded_by(job.executor_ref, state)


def after_worker_death(job: JobRow, deaths: int, max_restarts: int, exit_code: int | None) -> tuple[str, dict | None]:
    """The status (and error) of a job whose worker died for the `deaths`-th time: resumed, a few
    times, then failed."""
    if deaths > max_restarts:
        return "failed", {"code": "worker_died", "param": None,
                          "message": f"the job's worker died {deaths} times (exit code {exit_code}); "
                                     f"see {Path(job.folder) / 'worker.log'}"}
    return "queued", None


class Scheduler:
    def __init__(self, settings, db: Database, executor):
        self.settings, self.db, self.executor = settings, db, executor
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # -- life ------------------------------------------------------------------------------------
    def start(self) -> None:
        self.recover()
        # workers are started from this one long-lived thread: their parent-death signal follows it
        self._thread = threading.Thread(target=self._loop, name="mentor-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.executor.shutdown()

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the queue must outlive any one bad job
                log.exception("scheduler tick failed")
            self._wake.wait(self.settings.poll_seconds)
            self._wake.clear()

    def recover(self) -> None:
        """Jobs the previous server left running: still running on the engine (Ray), or resumed."""
        with self.db.begin() as s:
            for job in s.scalars(select(JobRow).where(JobRow.status == "running")):
                if self.executor.poll(job.id, job.executor_ref) is None:
                    continue  # still running (a Ray job outlives the server): keep watching it
                job.status = "queued"
                service_event(job.folder, "server_restarted", "the server restarted while this job ran; it resumes "
                              "from its last checkpoint")

    # -- one look at every job ---------------------------------------------------------------------
    def tick(self) -> None:
        with self.db.begin() as s:
            for job in s.scalars(select(JobRow).where(JobRow.status.in_(("validating_files", "queued")))):
                if job.requested:
                    self._settle_request(job)
            for job in s.scalars(select(JobRow).where(JobRow.status == "running")):
                if job.requested and not (Path(job.folder) / CANCEL_FILE).exists():
                    (Path(job.folder) / CANCEL_FILE).write_text(job.requested + "\n")
                    self.executor.terminate(job.id, job.executor_ref)
                finished = self.executor.poll(job.id, job.executor_ref)
                if finished is None and worker_gone(job, read_state(job.folder)):
                    # the engine has not noticed: the folder says the worker is gone; it is forgotten (a
                    # local worker reaped) so that a later poll cannot settle its death a second time
                    self.executor.kill(job.id, job.executor_ref)
                    finished = Finished(None)
                if finished is not None:
                    self._finish(job, finished.exit_code)
            running = s.scalar(select(func.count()).select_from(JobRow).where(JobRow.status == "running"))
            free = self.settings.max_concurrent_jobs - running
            if free > 0:
                queued = s.scalars(select(JobRow).where(JobRow.status.in_(("validating_files", "queued")))
                                   .order_by(JobRow.created_at).limit(free))
                for job in list(queued):
                    self._start(job)

    def _settle_request(self, job: JobRow) -> None:
        job.status = "paused" if job.requested == "pause" else "cancelled"
        job.finished_at = now() if job.status == "cancelled" else None
        job.requested = None
        service_event(job.folder, job.status, f"job {job.status} before it started")

    def _start(self, job: JobRow) -> None:
        (Path(job.folder) / CANCEL_FILE).unlink(missing_ok=True)
        attempt = int(read_state(job.folder).get("attempts", 0)) + 1
        job.executor_ref = self.executor.start(job.id, Path(job.folder), attempt)
        job.status = "running"
        job.started_at = job.started_at or now()
        service_event(job.folder, "dispatched", f"started on the {self.executor.name} executor", ref=job.executor_ref)

    def _batch_files(self, job: JobRow) -> dict:
        from mentor.server.db import FileRow
        from mentor.server.uploads import new_id

        result = _batch_result(job.folder)
        session = object_session(job)
        if session is None:  # _finish runs on a row of tick's session
            raise RuntimeError(f"job {job.id} is in no session: its output files cannot be recorded")
        for name, key in (("output.jsonl", "output_file_id"), ("errors.jsonl", "error_file_id")):
            path = Path(job.folder) / name
            if path.exists():
                file_id = new_id("file")
                data = path.read_bytes()
                session.add(FileRow(id=file_id, filename=f"{job.id}-{name}", purpose="batch_output",
                                    bytes=len(data), lines=data.count(b"\n"),
                                    sha256=hashlib.sha256(data).hexdigest(), path=str(path)))
                result[key] = file_id
        return result

    def _finish(self, job: JobRow, exit_code: int | None) -> None:
        """The worker is gone: the job folder says how the job ended."""
        state = read_state(job.folder)
        outcome = state.get("state")
        job.executor_ref = None
        if outcome == "succeeded" and produces(job.kind) == "predictions":  # its answers and bad lines, as files
            job.status, job.finished_at = "succeeded", now()
            job.request = {**job.request, "result": self._batch_files(job)}
        elif outcome == "succeeded":
            try:
                model = registry.register(object_session(job), job)
            except Exception as err:  # noqa: BLE001 - a result that cannot be registered fails the job
                job.status, job.error = "failed", {"code": "registry_error", "message": str(err), "param": None}
            else:
                job.status, job.fine_tuned_model = "succeeded", model.name
                job.trained_tokens = _tokens(job.folder)
            job.finished_at = now()
        elif outcome == "cancelled":
            job.status = "paused" if job.requested == "pause" else "cancelled"
            job.finished_at = now() if job.status == "cancelled" else None
        elif outcome == "failed":
            error = state.get("error") or {}
            job.status, job.finished_at = "failed", now()
            job.error = {"code": "invalid_training_file" if error.get("file") else "job_failed",
                         "message": error.get("message", "the job failed"), "param": error.get("field"),
                         "file": error.get("file"), "line": error.get("line")}
        else:  # the worker died (killed, out of memory): resume, a few times
            job.worker_deaths += 1
            job.status, error = after_worker_death(job, job.worker_deaths, self.settings.max_worker_restarts,
                                                   exit_code)
            if job.status == "failed":
                job.error, job.finished_at = error, now()
            else:
                service_event(job.folder, "worker_died", f"the worker ended without finishing (exit code "
                              f"{exit_code}); resuming from the last checkpoint")
        if job.status != "queued":  # a resumed job still owes its client a pending pause or cancel
            job.requested = None


def _batch_result(folder: str) -> dict:
    try:
        return dict(read_result(folder).metrics)
    except (DamagedJobFile, TypeError, ValueError):  # none yet, or not a result: nothing to show
        return {}


def _tokens(folder: str) -> int | None:
    try:
        return int(read_result(folder).extra.get("tokens_seen") or 0) or None
    except (DamagedJobFile, TypeError, ValueError, AttributeError):
        return None
