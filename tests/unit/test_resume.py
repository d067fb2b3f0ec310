"""Resume decisions: which checkpoint a job resumes from (mentor.training.checkpoints), whether the
training it belongs to had already ended (mentor.training.run._training_ended), and what a job's
recorded state means once its process is gone (mentor.jobs.lifecycle, the server's scheduler)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
from transformers.trainer_callback import TrainerState

from mentor.jobs.lifecycle import observed_state, process_gone
from mentor.training.checkpoints import checkpoint_complete, last_complete_checkpoint
from mentor.training.run import _training_ended


def checkpoint(folder: Path, step: int, files=("trainer_state.json", "model.safetensors", "optimizer.pt")) -> Path:
    d = folder / f"checkpoint-{step}"
    d.mkdir(parents=True)
    for name in files:
        (d / name).write_text("{}" if name.endswith(".json") else "x")
    return d


@pytest.mark.parametrize("files, complete", [
    (("trainer_state.json", "model.safetensors", "optimizer.pt"), True),
    (("trainer_state.json", "adapter_model.safetensors", "optimizer.pt"), True),  # LoRA
    (("trainer_state.json", "pytorch_model_fsdp_0", "optimizer_0"), True),  # FSDP
    (("trainer_state.json", "global_step7"), True),  # DeepSpeed: weights and optimizer in one folder
    (("model.safetensors", "optimizer.pt"), False),  # killed before the state, written last
    (("trainer_state.json", "optimizer.pt"), False),  # killed while rotating: weights gone
    (("trainer_state.json", "model.safetensors"), False),  # no optimizer state to resume
])
def test_a_checkpoint_is_complete_with_its_state_weights_and_optimizer(tmp_path, files, complete):
    assert checkpoint_complete(checkpoint(tmp_path, 5, files)) is complete


def test_a_half_written_state_makes_a_checkpoint_incomplete(tmp_path):
    d = checkpoint(tmp_path, 5)
    (d / "trainer_state.json").write_text('{"global_step": ')
    assert not checkpoint_complete(d)


def test_the_newest_complete_checkpoint_is_resumed_and_incomplete_ones_removed(tmp_path):
    assert last_complete_checkpoint(tmp_path / "none") is None
    checkpoint(tmp_path, 10)
    checkpoint(tmp_path, 9)
    checkpoint(tmp_path, 30, ("model.safetensors",))  # killed mid-save
    (tmp_path / "checkpoint-final").mkdir()  # not a step: never chosen nor removed
    assert last_complete_checkpoint(tmp_path, remove=False) == str(tmp_path / "checkpoint-10")  # by number, not name
    assert (tmp_path / "checkpoint-30").exists()
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")
    assert not (tmp_path / "checkpoint-30").exists() and (tmp_path / "checkpoint-final").exists()


def trainer(max_steps: int) -> SimpleNamespace:
    return SimpleNamespace(args=SimpleNamespace(max_steps=max_steps))


def stopped(counter: int, patience: int = 3) -> dict:
    return {"args": {"early_stopping_patience": patience}, "attributes": {"early_stopping_patience_counter": counter}}


def test_a_checkpoint_of_the_last_step_ended_the_training():
    assert _training_ended(trainer(20), TrainerState(global_step=20)) == "last step"
    assert _training_ended(trainer(20), TrainerState(global_step=19)) is None


@pytest.mark.parametrize("saved, ended", [
    (stopped(3), "early stop"),
    (stopped(2), None),
    ([stopped(1), stopped(3)], "early stop"),  # several early-stopping callbacks: any that stopped
    (None, None),
])
def test_a_checkpoint_of_an_early_stop_ended_the_training(tmp_path, saved, ended):
    callbacks = {} if saved is None else {"EarlyStoppingCallback": saved}
    path = tmp_path / "trainer_state.json"
    path.write_text(json.dumps({"global_step": 8, "stateful_callbacks": callbacks}))  # as a checkpoint holds it
    assert _training_ended(trainer(20), TrainerState.load_from_json(str(path))) == ended


def a_dead_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def test_a_running_state_whose_process_is_gone_here_reads_failed_saying_how_to_resume(tmp_path):
    dead = a_dead_pid()
    assert process_gone({"state": "running", "pid": dead})
    assert process_gone({"state": "running", "pid": dead, "host": socket.gethostname()})
    assert not process_gone({"state": "running", "pid": dead, "host": "another-machine"})  # its pid says nothing here
    assert not process_gone({"state": "running", "pid": os.getpid()})
    assert not process_gone({"state": "succeeded", "pid": dead})
    assert not process_gone({"state": "running"})
    (tmp_path / "state.json").write_text(json.dumps({"state": "running", "pid": dead, "step": 3}))
    state = observed_state(tmp_path)
    assert state["state"] == "failed" and state["step"] == 3
    assert f"pid {dead}" in state["error"]["message"] and "rerun the same command" in state["error"]["message"]
    (tmp_path / "state.json").write_text(json.dumps({"state": "running", "pid": os.getpid()}))
    assert observed_state(tmp_path)["state"] == "running"


def test_a_dead_worker_is_resumed_a_few_times_then_fails_and_only_its_own_record_counts():
    from mentor.server.db import JobRow
    from mentor.server.executors import recorded_by
    from mentor.server.scheduler import after_worker_death, worker_gone

    job = JobRow(status="running", folder="/jobs/j", executor_ref="pid:123")
    assert after_worker_death(job, 1, 2, -9) == ("queued", None)
    assert after_worker_death(job, 2, 2, -9) == ("queued", None)
    status, error = after_worker_death(job, 3, 2, -9)
    assert status == "failed" and error["code"] == "worker_died" and "3 times (exit code -9)" in error["message"]
    dead = a_dead_pid()
    assert not worker_gone(job, {"state": "running", "pid": dead})  # an earlier worker's record: not this one's
    job.executor_ref = f"pid:{dead}"
    assert worker_gone(job, {"state": "running", "pid": dead})
    job.status = "queued"
    assert not worker_gone(job, {"state": "running", "pid": dead})
    assert recorded_by("ray:j-attempt-2", {"attempts": 2}) and not recorded_by("ray:j-attempt-2", {"attempts": 1})
    assert not recorded_by(None, {"pid": dead})
