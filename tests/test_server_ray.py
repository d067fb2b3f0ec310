"""The `ray` executor on a real local Ray head (`ray start --head` on loopback): a job runs as a Ray
job, another is cancelled; mentor's database stays the source of truth."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from server_fixtures import Server, free_port

from conftest import shift_task, write_jsonl

RAY = Path(sys.executable).with_name("ray")


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    if not RAY.exists():
        pytest.skip("Ray is not installed (pip install 'mentor[ray]')")
    temp = Path("/tmp") / f"ray-mentor-{os.getpid()}"  # Ray's socket paths must stay short
    port, dashboard = free_port(), free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.run([str(RAY), "start", "--head", "--num-cpus", "2", "--port", str(port), "--node-ip-address",
                           "127.0.0.1", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
                           "--include-dashboard=true", "--disable-usage-stats", "--temp-dir", str(temp)],
                          capture_output=True, text=True, env=env, timeout=180)
    if proc.returncode != 0:
        pytest.skip(f"a local Ray head could not start here: {proc.stderr.strip().splitlines()[-1:]}")
    yield f"http://127.0.0.1:{dashboard}"
    subprocess.run([str(RAY), "stop", "--force"], capture_output=True, env=env, timeout=120)
    shutil.rmtree(temp, ignore_errors=True)


def test_jobs_run_and_cancel_through_ray(ray_head, tmp_path):
    from ray.job_submission import JobSubmissionClient

    data = write_jsonl(tmp_path / "train.jsonl", shift_task(32, 0))
    srv = Server(tmp_path / "data", "--executor", "ray", "--ray-address", ray_head, "--max-concurrent-jobs", "2").start()
    try:
        c = srv.client()
        train = c.files.create(file=open(data, "rb"), purpose="fine-tune").id
        short = c.fine_tuning.jobs.create(model="tiny:llama", training_file=train,
                                          hyperparameters={"batch_size": 4, "train_steps": 6, "evaluation_interval": 3})
        long = c.fine_tuning.jobs.create(model="tiny:llama", training_file=train,
                                         hyperparameters={"batch_size": 2, "train_steps": 5000, "evaluation_interval": 100})
        done = srv.wait(short.id, timeout=300)
        assert done.status == "succeeded", done.error
        assert done.fine_tuned_model in [m.id for m in c.models.list().data]
        srv.wait(long.id, statuses=(), timeout=300,
                 until=lambda j: j.status == "running" and j.model_extra["progress"]["step"] >= 2)
        c.fine_tuning.jobs.cancel(long.id)
        cancelled = srv.wait(long.id, timeout=300)
        assert cancelled.status == "cancelled" and cancelled.model_extra["progress"]["step"] < 5000
        ray_jobs = {j.submission_id: j.status for j in JobSubmissionClient(ray_head).list_jobs()}
        assert ray_jobs[f"{short.id}-attempt-1"] == "SUCCEEDED"  # each mentor job ran as a Ray job
        assert f"{long.id}-attempt-1" in ray_jobs
    finally:
        srv.stop()
