"""Where jobs run: on existing engines, never a home-made cluster.

- `local`: a subprocess per job on this machine. The worker dies with the server (Linux
  PR_SET_PDEATHSIG), so a killed server leaves no orphan holding a job folder; on restart the job
  is resumed from its last checkpoint.
- `ray`: a Ray job per mentor job (Ray's job-submission API), with the CPUs/GPUs it asks for, so a
  Ray cluster runs many jobs across machines. The job folder must be on storage every node sees;
  mentor's database stays the source of truth, Ray only runs the worker.

Multi-GPU jobs keep using accelerate/torchrun inside the worker.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:  # not Linux: the worker may outlive a killed server; the folder lock still guards it
        pass


def worker_command(folder: Path) -> list[str]:
    return [sys.executable, "-m", "mentor.server.worker", str(folder)]


def recorded_by(ref: str | None, state: dict) -> bool:
    """Whether the job folder's state was written by the worker `ref` names, not by an earlier one
    whose record a worker just started has yet to replace (its dead pid says nothing of this one)."""
    if ref and ref.startswith("pid:"):
        return str(state.get("pid")) == ref.removeprefix("pid:")
    attempt = re.search(r"^ray:.*-attempt-(\d+)$", ref or "")
    if attempt:
        return state.get("attempts") == int(attempt[1])
    return False  # an engine whose reference says nothing of the worker: only its poll tells


@dataclass
class Finished:
    exit_code: int | None  # None when the engine did not say


def worker_env(settings) -> dict[str, str]:
    """What a worker is told of the server's settings through its environment: the servers its jobs'
    LLM-judge graders may call are the teacher servers the owner allowed (checked at creation; the
    worker's own check must agree), set even when there are none, so a list in the server's own
    environment never widens it."""
    allowed = [str(u) for u in getattr(settings, "allowed_teacher_urls", None) or []]
    return {"MENTOR_GRADERS_ALLOWED_JUDGE_URLS": json.dumps(allowed)}


class LocalExecutor:
    name = "local"

    def __init__(self, env: dict[str, str] | None = None):
        self._procs: dict[str, subprocess.Popen] = {}
        self.env = env or {}

    def start(self, job_id: str, folder: Path, attempt: int) -> str:
        log = (folder / "worker.log").open("ab")
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(worker_command(folder), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, preexec_fn=_die_with_parent, start_new_session=True)
        log.close()
        self._procs[job_id] = proc
        return f"pid:{proc.pid}"

    def poll(self, job_id: str, ref: str | None) -> Finished | None:
        """None while running; Finished once the worker is gone (also for a worker of an earlier server)."""
        proc = self._procs.get(job_id)
        if proc is None:
            return Finished(None)  # started by a server that is gone: its worker died with it
        code = proc.poll()
        if code is None:
            return None
        del self._procs[job_id]
        return Finished(code)

    def terminate(self, job_id: str, ref: str | None) -> None:
        """Ask the worker to stop at its next step (SIGTERM is the job's cancel signal)."""
        proc = self._procs.get(job_id)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)

    def kill(self, job_id: str, ref: str | None) -> None:
        proc = self._procs.pop(job_id, None)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def shutdown(self) -> None:
        for job_id in list(self._procs):
            self.kill(job_id, None)


class RayExecutor:
    """Jobs through Ray's job-submission API (`ray[default]`, a cluster at `address`)."""

    name = "ray"

    def __init__(self, address: str, cpus: float = 1.0, gpus: float = 0.0, env: dict[str, str] | None = None):
        try:
            from ray.job_submission import JobSubmissionClient
        except ImportError as err:
            from mentor.errors import MentorError

            raise MentorError("the ray executor needs Ray: pip install 'mentor[ray]'") from err
        self.client = JobSubmissionClient(address)
        self.cpus, self.gpus = cpus, gpus
        self.env = env or {}

    def start(self, job_id: str, folder: Path, attempt: int) -> str:
        submission = f"{job_id}-attempt-{attempt}"
        env_vars = {k: v for k, v in os.environ.items() if k.startswith(("MENTOR_", "HF_", "OMP_", "TOKENIZERS_"))}
        env_vars.update(self.env)
        self.client.submit_job(entrypoint=" ".join(worker_command(folder)), submission_id=submission,
                               entrypoint_num_cpus=self.cpus, entrypoint_num_gpus=self.gpus or None,
                               runtime_env={"env_vars": env_vars})
        return f"ray:{submission}"

    def poll(self, job_id: str, ref: str | None) -> Finished | None:
        from ray.job_submission import JobStatus

        if not ref or not ref.startswith("ray:"):
            return Finished(None)
        try:
            info = self.client.get_job_info(ref.removeprefix("ray:"))
        except Exception:  # noqa: BLE001 - the cluster forgot it (restarted): treat as gone
            return Finished(None)
        if info.status in (JobStatus.PENDING, JobStatus.RUNNING):
            return None
        return Finished(0 if info.status == JobStatus.SUCCEEDED else None)

    def terminate(self, job_id: str, ref: str | None) -> None:
        # the job folder's CANCEL file (written by the scheduler) stops it at a step boundary;
        # Ray's stop_job would kill it between steps
        pass

    def kill(self, job_id: str, ref: str | None) -> None:
        if ref and ref.startswith("ray:"):
            try:
                self.client.stop_job(ref.removeprefix("ray:"))
            except Exception:  # noqa: BLE001 - already gone
                pass

    def shutdown(self) -> None:
        pass


def make_executor(settings):
    if settings.executor == "ray":
        return RayExecutor(settings.ray_address, settings.job_cpus, settings.job_gpus, worker_env(settings))
    return LocalExecutor(worker_env(settings))
