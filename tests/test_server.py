"""The job service, driven as its users drive it: a real `mentor server` on loopback and the
official `openai` client (only `base_url` changed), the cloud's pipeline-job body, restarts."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import openai
import pytest
from safetensors.torch import load_file
from server_fixtures import TOKEN, Server

import mentor
from conftest import shift_task, write_jsonl
from mentor.jobs import read_state


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("server-data")
    rows = shift_task(48, 0)
    return {"dir": d, "train": write_jsonl(d / "train.jsonl", rows), "eval": write_jsonl(d / "eval.jsonl", shift_task(12, 1)),
            "bad": write_jsonl(d / "bad.jsonl", [rows[0], {"input_text": "abc"}, rows[1]]),
            "distill": write_jsonl(d / "distill.jsonl", [{**r, "teacher_completion": f"Shift each letter. The answer "
                                                          f"is {r['output_text']}."} for r in rows[:16]])}


@pytest.fixture(scope="module")
def server(tmp_path_factory, files):
    srv = Server(tmp_path_factory.mktemp("srv") / "data", "--max-concurrent-jobs", "2",
                 "--allowed-data-roots", json.dumps([str(files["dir"])])).start()
    yield srv
    srv.stop()


def upload(client, path) -> str:
    return client.files.create(file=open(path, "rb"), purpose="fine-tune").id


def test_openai_client_end_to_end(server, files):
    c = server.client()
    with pytest.raises(openai.BadRequestError) as bad:
        upload(c, files["bad"])
    assert "bad.jsonl:2: field 'output_text': missing" in bad.value.body["message"]
    assert bad.value.body["param"] == "file:2:output_text"

    train, evald = upload(c, files["train"]), upload(c, files["eval"])
    job = c.fine_tuning.jobs.create(model="tiny:llama", training_file=train, validation_file=evald, suffix="shift",
                                    hyperparameters={"batch_size": 8, "n_epochs": 2, "learning_rate_multiplier": 4,
                                                     "evaluation_interval": 4, "early_stopping": False},
                                    metadata={"team": "tests"})
    assert job.status in ("validating_files", "queued") and job.model == "tiny:llama"
    job = server.wait(job.id)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model.startswith("ft:tiny:llama:shift:") and job.trained_tokens > 0
    assert job.model_extra["config"]["train_steps"] == 12  # 2 epochs of 48 examples in batches of 8
    assert any(j.id == job.id for j in c.fine_tuning.jobs.list(limit=5).data)

    events = c.fine_tuning.jobs.list_events(job.id, limit=100).data[::-1]
    kinds = [e.data["event"] for e in events]
    assert kinds[0] == "created" and "training_started" in kinds and kinds[-1] == "finished"
    assert any(e.type == "metrics" and "valid_loss" in e.data for e in events)

    checkpoints = c.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [k.step_number for k in checkpoints] == [12, 8, 4]
    metrics = checkpoints[0].metrics.model_dump()
    assert metrics["valid_loss"] == metrics["eval_total_loss"] and metrics["train_mean_token_accuracy"] is not None
    assert {"train_total_loss", "train_fraction_of_correct_next_step_preds", "train_num_predictions",
            "eval_total_loss", "eval_fraction_of_correct_next_step_preds", "eval_num_predictions"} <= set(metrics)

    names = [m.id for m in c.models.list().data]
    assert job.fine_tuned_model in names and "tiny:llama" in names
    model = c.models.retrieve(job.fine_tuned_model).model_extra
    assert model["lineage"]["job"]["id"] == job.id and model["lineage"]["base_model"] == "tiny:llama"
    assert set(model["lineage"]["data"]) == {"data", "evaluation_data"}
    derived = httpx.get(server.url + "/v1/models", params={"base_model": "tiny:llama"},
                        headers={"Authorization": f"Bearer {TOKEN}"}).json()["data"]
    assert [m["id"] for m in derived] == [job.fine_tuned_model]

    tuned = mentor.get_tuned_model(job.fine_tuned_model, data_dir=server.data_dir)
    assert isinstance(tuned.predict("abc", max_new_tokens=3), str)

    # a kept checkpoint becomes a model of its own, with its step's metrics
    promoted = c.post("/models/promote", body={"model": job.fine_tuned_model, "step": 4}, cast_to=object)
    assert promoted["id"] == f"{job.fine_tuned_model}:ckpt-step-4" and "eval_total_loss" in promoted["metrics"]
    checkpoint = mentor.get_tuned_model(promoted["id"], data_dir=server.data_dir)
    assert Path(checkpoint.model_path).parts[-2:] == ("promoted", "step-4") and checkpoint.metrics == promoted["metrics"]
    assert isinstance(checkpoint.predict("abc", max_new_tokens=2), str)
    with pytest.raises(openai.BadRequestError, match="no checkpoint at step 5"):
        c.post("/models/promote", body={"model": job.fine_tuned_model, "step": 5}, cast_to=object)
    assert c.models.delete(promoted["id"]).deleted
    assert (Path(job.model_extra["config"]["output"]) / "model").exists()  # the job's own model stays


def test_distillation_and_dpo_methods(server, files):
    c = server.client()
    data = upload(c, files["distill"])
    job = c.fine_tuning.jobs.create(
        model="tiny:llama", training_file=data,
        method={"type": "distillation", "distillation": {"method": "standard", "teacher": "recorded:field=teacher_completion",
                                                          "task": "extract", "hyperparameters": {"train_steps": 2, "batch_size": 4}}})
    job = server.wait(job.id)
    assert job.status == "succeeded", job.error
    assert job.model_extra["kind"] == "standard" and job.method.type == "distillation"
    with pytest.raises(openai.BadRequestError, match="distillation method must be one of"):
        c.fine_tuning.jobs.create(model="tiny:llama", training_file=data,
                                  method={"type": "distillation", "distillation": {"method": "nope"}})
    with pytest.raises(openai.BadRequestError) as bad:
        c.fine_tuning.jobs.create(model="tiny:llama", training_file=data, hyperparameters={"adapter_size": 0})
    assert bad.value.body["param"] == "adapter_size"


def test_a_kept_checkpoint_of_a_full_model_answers_by_name(server, files):
    """NAME:ckpt-step-N of a fully tuned model is that checkpoint's whole model (a LoRA model's is
    an adapter on the base); a checkpoint a kill left half-written is not offered."""
    c = server.client()
    job = c.fine_tuning.jobs.create(model="tiny:llama", training_file=upload(c, files["train"]),
                                    validation_file=upload(c, files["eval"]), suffix="full",
                                    hyperparameters={"batch_size": 8, "train_steps": 4, "evaluation_interval": 2,
                                                     "tuning": "full", "early_stopping": False})
    job = server.wait(job.id)
    assert job.status == "succeeded", job.error
    name = f"{job.fine_tuned_model}:ckpt-step-2"
    r = c.chat.completions.create(model=name, messages=[{"role": "user", "content": "abc"}], max_tokens=3, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length")
    folder = Path(job.model_extra["config"]["output"]) / "checkpoints" / "checkpoint-2"
    (folder / "optimizer.pt").unlink()  # what a kill mid-save leaves
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model=name, messages=[{"role": "user", "content": "abc"}], max_tokens=3)


def test_pause_resume_and_cancel_a_running_job(server, files):
    c = server.client()
    train = upload(c, files["train"])
    job = c.fine_tuning.jobs.create(model="tiny:llama", training_file=train,
                                    hyperparameters={"batch_size": 2, "train_steps": 3000, "evaluation_interval": 500})
    server.wait(job.id, until=lambda j: (j.model_extra.get("progress") or {}).get("step", 0) >= 3, timeout=120)
    c.post(f"/fine_tuning/jobs/{job.id}/pause", cast_to=object)
    paused = server.wait(job.id, ("paused",), timeout=120)
    stopped = paused.model_extra["progress"]["step"]
    folder = Path(paused.model_extra["config"]["output"])
    assert (folder / "checkpoints" / f"checkpoint-{stopped}" / "adapter_model.safetensors").exists()
    c.post(f"/fine_tuning/jobs/{job.id}/resume", cast_to=object)
    server.wait(job.id, until=lambda j: j.status == "running" and j.model_extra["progress"]["step"] > stopped,
                timeout=120)
    c.fine_tuning.jobs.cancel(job.id)
    cancelled = server.wait(job.id, timeout=120)
    assert cancelled.status == "cancelled" and cancelled.model_extra["progress"]["step"] < 3000
    resumed = [e for e in read_events_of(folder) if e["type"] == "resumed"]
    assert [e["step"] for e in resumed] == [stopped]
    with pytest.raises(openai.BadRequestError, match="only a paused job"):
        c.post(f"/fine_tuning/jobs/{job.id}/resume", cast_to=object)


def read_events_of(folder: Path) -> list[dict]:
    from mentor.jobs import read_events

    return read_events(folder)


def test_cloud_shaped_pipeline_job(server, files, tmp_path):
    c = server.client()
    train, evald = upload(c, files["train"]), upload(c, files["eval"])
    tensorboard = files["dir"] / "tb"
    body = {"displayName": "cloud-shaped", "runtimeConfig": {"parameterValues": {
        "large_model_reference": "tiny:llama", "dataset_uri": train, "evaluation_data_uri": evald, "train_steps": 4,
        "learning_rate_multiplier": 2.0, "evaluation_interval": 2, "enable_early_stopping": False,
        "enable_checkpoint_selection": True, "tensorboard_resource_id": str(tensorboard), "project": "p"}}}
    path = "/projects/p1/locations/l1/pipelineJobs"
    made = c.post(path, body=body, cast_to=object)
    assert made["state"] in ("JOB_STATE_PENDING", "JOB_STATE_QUEUED") and made["name"].startswith("projects/p1/locations/l1/pipelineJobs/ftjob-")
    job_id = made["name"].rsplit("/", 1)[1]
    server.wait(job_id)
    got = c.get(f"{path}/{job_id}", cast_to=object)
    assert got["state"] == "JOB_STATE_SUCCEEDED" and got["tunedModel"]["model"].startswith("ft:tiny:llama:")
    assert any((tensorboard / job_id).iterdir())  # the job's TensorBoard logs, where the request asked
    with pytest.raises(openai.BadRequestError, match="outside the folders"):
        c.post(path, body={"parameterValues": {"large_model_reference": "tiny:llama", "dataset_uri": "/etc/passwd"}},
               cast_to=object)


def test_auth_traversal_and_size_limits(server, files, tmp_path):
    assert httpx.get(server.url + "/v1/models").status_code == 401
    assert httpx.get(server.url + "/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for path in ("/v1/files/..%2F..%2Fetc%2Fpasswd", "/v1/files/file-../../etc/passwd/content",
                 "/v1/fine_tuning/jobs/..%2Fx", "/v1/models/..%2F..%2Fetc"):
        r = httpx.get(server.url + path, headers=auth)
        assert r.status_code == 404 and "error" in r.json(), path
    c = server.client()
    for field in ({"training_file": "file-../../../etc/passwd"}, {"training_file": "/etc/passwd"}):
        with pytest.raises((openai.BadRequestError, openai.NotFoundError)):
            c.fine_tuning.jobs.create(model="tiny:llama", **field)
    train = upload(c, files["train"])
    with pytest.raises(openai.BadRequestError, match="outside the folders"):
        c.fine_tuning.jobs.create(model="/etc", training_file=train)
    small = Server(tmp_path / "small", "--max-upload-bytes", "1000", "--max-body-bytes", "2000").start()
    try:
        big = tmp_path / "big.jsonl"
        big.write_text(json.dumps({"input_text": "x" * 200_000, "output_text": "y"}) + "\n")
        r = httpx.post(small.url + "/v1/files", headers=auth, files={"file": big.open("rb")},
                       data={"purpose": "fine-tune"})
        assert r.status_code == 413 and r.json()["error"]["code"]
        r = httpx.post(small.url + "/v1/fine_tuning/jobs", headers=auth, json={"model": "x" * 5000})
        assert r.status_code == 413
        assert not list((tmp_path / "small" / "files").glob("*"))
    finally:
        small.stop()


def test_server_and_worker_kills_resume_to_the_same_weights(tmp_path, files):
    srv = Server(tmp_path / "data").start()
    try:
        c = srv.client()
        train = upload(c, files["train"])
        hyper = {"batch_size": 4, "train_steps": 64, "evaluation_interval": 8, "learning_rate_multiplier": 4}

        def weights(job) -> dict:
            return load_file(str(Path(job.model_extra["config"]["output"]) / "model" / "adapter_model.safetensors"))

        straight = srv.wait(c.fine_tuning.jobs.create(model="tiny:llama", training_file=train, hyperparameters=hyper).id)
        assert straight.status == "succeeded"

        def after_checkpoint(job_id: str, step: int):
            """The job, running, once it has saved a checkpoint at `step` or later."""
            return srv.wait(job_id, statuses=(), timeout=120,
                            until=lambda j: j.status == "running" and j.model_extra["progress"]["step"] > step)

        # the server is SIGKILLed mid-job (its worker dies with it); a new server resumes the job
        job = c.fine_tuning.jobs.create(model="tiny:llama", training_file=train, hyperparameters=hyper)
        after_checkpoint(job.id, 16)
        srv.kill()
        time.sleep(1)
        srv.start()
        c = srv.client()
        done = srv.wait(job.id)
        assert done.status == "succeeded"
        kinds = [e["type"] for e in read_events_of(Path(done.model_extra["config"]["output"]))]
        assert "server_restarted" in kinds and "resumed" in kinds, kinds

        # a worker is SIGKILLed mid-job; the server resumes it
        job2 = c.fine_tuning.jobs.create(model="tiny:llama", training_file=train, hyperparameters=hyper)
        running = after_checkpoint(job2.id, 16)
        os.kill(read_state(running.model_extra["config"]["output"])["pid"], signal.SIGKILL)
        done2 = srv.wait(job2.id)
        assert done2.status == "succeeded"
        assert "worker_died" in [e["type"] for e in read_events_of(Path(done2.model_extra["config"]["output"]))]

        a, b, b2 = weights(straight), weights(done), weights(done2)
        assert a.keys() == b.keys() == b2.keys()
        for k in a:
            assert (a[k] == b[k]).all(), f"after a server kill: {k}"
            assert (a[k] == b2[k]).all(), f"after a worker kill: {k}"
    finally:
        srv.stop()
