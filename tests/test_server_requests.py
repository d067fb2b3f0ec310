"""The job service in-process (no workers run): what a request may name, what it gets for bad input,
what may be deleted while jobs still need it, and the scheduler's bookkeeping of finished jobs."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from mentor.jobs import TunedModel
from mentor.server.app import create_app
from mentor.server.db import JobRow, ModelRow
from mentor.server.executors import Finished
from mentor.server.scheduler import Scheduler
from mentor.server.settings import ServerSettings

TOKEN = "requests-token"
ROWS = b"".join(json.dumps({"input_text": f"q{i}", "output_text": f"a{i}"}).encode() + b"\n" for i in range(8))


@pytest.fixture
def service(tmp_path):
    os.environ["MENTOR_API_TOKEN"] = TOKEN
    settings = ServerSettings(data_dir=tmp_path / "server", max_body_bytes=4096,
                              allowed_teacher_urls=["http://127.0.0.1:9/v1"]).prepared()
    app = create_app(settings, start_scheduler=False)
    client = TestClient(app, raise_server_exceptions=False, headers={"Authorization": f"Bearer {TOKEN}"})
    client.ctx = app.state.ctx
    return client


def upload(client) -> str:
    r = client.post("/v1/files", files={"file": ("d.jsonl", ROWS)}, data={"purpose": "fine-tune"})
    assert r.status_code == 200, r.text
    return r.json()["id"]


def error(r, status: int) -> str:
    assert r.status_code == status, r.text
    return r.json()["error"]["message"]


def test_jobs_name_only_what_the_server_allows(service, tmp_path):
    data = upload(service)

    def create(kind="tune", **config):
        return service.post("/v1/mentor/jobs", json={"kind": kind, "config": {"model": "tiny:llama", "data": data,
                                                                              **config}})

    assert "chosen by the server" in error(create("logit", teacher="tiny:llama", teacher_logits_dir=str(tmp_path)), 400)
    assert "outside the folders" in error(create("step-by-step", teacher="hf:/etc"), 400)
    assert "outside the folders" in error(create(model="x/../../../../etc"), 400)
    assert "outside the folders" in error(create("rlhf", prompt_dataset=data, reward_model="/etc"), 400)
    assert "not a teacher server this server may call" in error(
        create("step-by-step", teacher="openai:m@http://elsewhere.example/v1"), 400)
    assert create("step-by-step", teacher="openai:m@http://127.0.0.1:9/v1/").status_code == 200
    # a white-box teacher is loaded as a model: it stays a model reference, not a teacher spec
    r = create("logit", teacher="tiny:llama")
    assert r.status_code == 200, r.text
    with service.ctx.db.session() as s:
        assert s.get(JobRow, r.json()["id"]).config["teacher"] == "tiny:llama"
    assert "teacher_logits_dir" not in json.dumps(service.get("/v1/mentor/kinds").json())
    # so is the on-policy kind's, and its served teacher (openai:MODEL@URL) is a server the owner allowed
    assert "not a teacher server this server may call" in error(
        create("on-policy", teacher="openai:m@http://elsewhere.example/v1"), 400)
    for teacher in ("tiny:llama", "openai:m@http://127.0.0.1:9/v1"):
        r = create("on-policy", teacher=teacher)
        assert r.status_code == 200, r.text
        with service.ctx.db.session() as s:
            assert s.get(JobRow, r.json()["id"]).config["teacher"] == teacher
    # a batch answers the models it names through `models`, each checked like any model
    batch = {"kind": "batch", "config": {"input": data}}
    assert "outside the folders" in error(service.post("/v1/mentor/jobs", json={
        **batch, "config": {"input": data, "models": {"m": "/etc"}}}), 400)
    r = service.post("/v1/mentor/jobs", json=batch)
    assert r.status_code == 200, r.text
    with service.ctx.db.session() as s:
        assert s.get(JobRow, r.json()["id"]).config["listed_models_only"] is True
    assert "chosen by the server" in error(service.post("/v1/mentor/jobs", json={
        **batch, "config": {"input": data, "listed_models_only": False}}), 400)


def test_bad_bodies_are_400s_not_500s(service, tmp_path):
    data = upload(service)
    cloud = "/v1/projects/p/locations/l/pipelineJobs"
    bodies = [("/v1/mentor/jobs", {"kind": "tune", "config": {"model": 5, "data": data}}),
              (cloud, {"parameterValues": {"base_model": 5, "dataset_uri": data}}),
              (cloud, {"runtimeConfig": {"parameterValues": "xx"}}),
              ("/v1/fine_tuning/jobs", {"model": "tiny:llama", "training_file": data,
                                        "method": {"type": "distillation", "distillation": {"method": ["a"]}}}),
              ("/v1/fine_tuning/jobs", {"model": "tiny:llama", "training_file": data,
                                        "method": {"type": "supervised", "supervised": {"hyperparameters": [1]}}})]
    for path, body in bodies:
        assert service.post(path, json=body).status_code == 400, body
    a_file = tmp_path / "server" / "not-a-folder"
    a_file.write_text("x")
    service.ctx.settings.allowed_data_roots.append(tmp_path)
    r = service.post(cloud, json={"parameterValues": {"base_model": "tiny:llama", "dataset_uri": data,
                                                      "tensorboard_resource_id": str(a_file)}})
    assert "cannot make the folder" in error(r, 400)
    assert service.get(cloud).json()["pipelineJobs"] == []  # no job was made


def test_a_chunked_body_is_held_to_the_limit(service):
    def chunks():
        for _ in range(10):
            yield b" " * 1024

    r = service.post("/v1/fine_tuning/jobs", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"


def test_what_queued_jobs_need_cannot_be_deleted(service, tmp_path):
    data = upload(service)
    folder = tmp_path / "tuned"
    (folder / "model").mkdir(parents=True)
    with service.ctx.db.begin() as s:
        s.add(JobRow(id="ftjob-" + "a" * 24, kind="tune", config={}, status="succeeded", folder=str(folder),
                     base_model="tiny:llama"))
        s.add(ModelRow(name="ft:tiny:llama:mentor:aaaa", job_id="ftjob-" + "a" * 24, base_model="tiny:llama",
                       kind="tune", method="tune", weights="full", path=str(folder / "model"), job_folder=str(folder),
                       data_hashes={}, parameters={}, metrics={}))
    job = service.post("/v1/fine_tuning/jobs", json={"model": "ft:tiny:llama:mentor:aaaa", "training_file": data})
    assert job.status_code == 200, job.text
    assert "still needed by " + job.json()["id"] in error(service.delete("/v1/models/ft:tiny:llama:mentor:aaaa"), 409)
    assert "still read by " + job.json()["id"] in error(service.delete(f"/v1/files/{data}"), 409)
    assert (folder / "model").is_dir() and service.get(f"/v1/files/{data}").status_code == 200
    service.post(f"/v1/fine_tuning/jobs/{job.json()['id']}/cancel")
    with service.ctx.db.begin() as s:  # the scheduler would settle the cancel
        s.get(JobRow, job.json()["id"]).status = "cancelled"
    assert service.delete("/v1/models/ft:tiny:llama:mentor:aaaa").status_code == 200
    assert service.delete(f"/v1/files/{data}").status_code == 200


def test_batches_are_not_fine_tuning_jobs_and_lists_page_in_order(service):
    data = upload(service)
    ids = [service.post("/v1/fine_tuning/jobs", json={"model": "tiny:llama", "training_file": data}).json()["id"]
           for _ in range(3)]
    with service.ctx.db.begin() as s:
        s.add(JobRow(id="batch_" + "b" * 24, kind="batch", api="batch", config={}, status="queued",
                     folder=str(Path(ids[0]).parent), base_model="-"))
    first = service.get("/v1/fine_tuning/jobs", params={"limit": 2}).json()
    rest = service.get("/v1/fine_tuning/jobs", params={"limit": 2, "after": first["last_id"]}).json()
    assert [j["id"] for j in first["data"] + rest["data"]] == ids[::-1]
    assert (first["has_more"], rest["has_more"]) == (True, False)


class Finishes:
    """An executor whose workers have all ended."""

    name = "fake"

    def poll(self, job_id, ref):
        return Finished(0)

    def start(self, *args):
        return "ref"

    def terminate(self, *args):
        pass


def test_a_job_that_ends_beside_a_settled_cancel_is_registered(service, tmp_path):
    """One scheduler pass cancels a queued job and records a finished one: the registry's write goes
    through the pass's own transaction (a second one waited 30 s on SQLite's lock, then failed the job)."""
    data = upload(service)
    queued = service.post("/v1/fine_tuning/jobs", json={"model": "tiny:llama", "training_file": data}).json()["id"]
    service.post(f"/v1/fine_tuning/jobs/{queued}/cancel")
    done = tmp_path / "done"
    (done / "model").mkdir(parents=True)
    (done / "result.json").write_text(TunedModel(output=str(done), model_path=str(done / "model"), base_model="tiny:llama",
                                                 method="tune", best_step=None, steps_run=1).to_json())
    (done / "state.json").write_text(json.dumps({"state": "succeeded"}))
    with service.ctx.db.begin() as s:
        s.add(JobRow(id="ftjob-" + "c" * 24, kind="tune", config={}, status="running", folder=str(done),
                     base_model="tiny:llama", executor_ref="ref"))
    settings = service.ctx.settings.model_copy(update={"max_concurrent_jobs": 1})
    Scheduler(settings, service.ctx.db, Finishes()).tick()
    with service.ctx.db.session() as s:
        finished = s.get(JobRow, "ftjob-" + "c" * 24)
        assert (finished.status, finished.error) == ("succeeded", None)
        assert s.get(ModelRow, finished.fine_tuned_model) is not None
        assert s.get(JobRow, queued).status == "cancelled"


def test_a_damaged_or_emptied_database_is_refused_in_one_line(tmp_path, capsys):
    """Garbage or a cut-off mentor.db is one line naming the file, not SQLAlchemy's traceback; an
    emptied one (0 bytes) beside the server's jobs and files is refused, never a fresh start over them."""
    from mentor.cli import main
    from mentor.errors import MentorError
    from mentor.server.db import Database

    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "mentor.db").write_bytes(b"not a database at all\n" * 200)
    assert main(["server", "--data-dir", str(garbage), "--insecure-no-auth"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(garbage / "mentor.db") in err and "Traceback" not in err

    cut = tmp_path / "cut"
    db = Database(cut)
    with db.begin() as s:
        for i in range(300):
            s.add(JobRow(id=f"ftjob-{i:024d}", kind="tune", config={"x": "y" * 200}, status="succeeded",
                         folder=str(cut), base_model="tiny:llama"))
    db.engine.dispose()
    data = (cut / "mentor.db").read_bytes()
    assert len(data) > 16384
    (cut / "mentor.db").write_bytes(data[: len(data) // 2])
    with pytest.raises(MentorError, match="mentor.db is (damaged|not a readable)"):
        Database(cut)

    emptied = tmp_path / "emptied"
    (emptied / "jobs" / ("ftjob-" + "a" * 24)).mkdir(parents=True)
    (emptied / "mentor.db").write_bytes(b"")
    with pytest.raises(MentorError, match=r"mentor.db is empty \(0 bytes\) but .*jobs/ hold"):
        Database(emptied)
    assert (emptied / "mentor.db").stat().st_size == 0  # nothing was written over it
    (emptied / "mentor.db").unlink()
    with pytest.raises(MentorError, match=r"mentor.db is missing but .*jobs/ hold"):
        Database(emptied)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "mentor.db").write_bytes(b"")  # empty, and nothing beside it: a new server may start
    Database(fresh)


def test_a_second_server_on_one_data_folder_refuses_to_start_naming_the_holder(tmp_path):
    """Two schedulers on one folder fight over its workers; the second `mentor server` refuses in
    one line naming the first. The lock is the OS's: a killed holder leaves none behind."""
    import signal
    import subprocess
    import sys

    from server_fixtures import free_port

    from mentor.errors import MentorError
    from mentor.server.folder_lock import lock_data_folder

    data = tmp_path / "data"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from mentor.server.folder_lock import lock_data_folder; "
                               "lock = lock_data_folder(Path(sys.argv[1]), '127.0.0.1', 8123); "
                               "print('held', flush=True); time.sleep(120)", str(data)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        second = subprocess.run([sys.executable, "-m", "mentor.cli", "server", "--data-dir", str(data), "--port",
                                 str(free_port()), "--insecure-no-auth"], capture_output=True, text=True, timeout=60)
        assert second.returncode == 2, second.stderr
        [line] = [x for x in second.stderr.splitlines() if x.strip()]
        assert line.startswith("mentor: error: the data folder") and f"pid {holder.pid}" in line, line
        assert "http://127.0.0.1:8123" in line
        with pytest.raises(MentorError, match=f"pid {holder.pid}"):
            lock_data_folder(data)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = lock_data_folder(data)  # the dead holder's lock went with it
    del lock


def openai_client(service):
    """The official client, talking to the in-process app (TestClient is an httpx.Client)."""
    import openai

    return openai.OpenAI(base_url="http://testserver/v1", api_key=TOKEN, http_client=service, max_retries=0)


def test_inputs_the_inference_api_cannot_honour_are_refused_naming_them(service):
    """An image (or any part that is not text) is not dropped from the conversation, and an unknown
    field is not ignored: a 400 names it. What the official client and harnesses send is accepted."""
    import openai

    c = openai_client(service)
    text = {"type": "text", "text": "abc"}
    for part in ({"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                 {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}, {"type": "text"}):
        with pytest.raises(openai.BadRequestError) as err:
            c.chat.completions.create(model="tiny:llama", messages=[{"role": "system", "content": "be brief"},
                                                                    {"role": "user", "content": [text, part]}],
                                      max_tokens=2)
        assert err.value.body["param"] == "messages[1].content[1]", err.value.body
        assert "not supported" in err.value.body["message"]
    for create in (lambda **kw: c.chat.completions.create(messages=[{"role": "user", "content": "abc"}], **kw),
                   lambda **kw: c.completions.create(prompt="abc", **kw)):
        with pytest.raises(openai.BadRequestError) as err:
            create(model="tiny:llama", max_tokens=2, extra_body={"top_k": 5})
        assert err.value.body["param"] == "top_k" and "top_k" in err.value.body["message"]
        with pytest.raises(openai.BadRequestError) as err:  # known, not implemented: also named as the param
            create(model="tiny:llama", max_tokens=2, logprobs=True)
        assert err.value.body["param"] == "logprobs"
        # chat: not implemented; completions: a count of top log-probs, of prompt tokens only
        assert err.value.body["message"] in ("logprobs: 'logprobs' is not supported by this server",
                                             "logprobs: 'logprobs' of a completion is how many top "
                                             "log-probs to return (0 to 256)")
        # what clients and evaluation harnesses send along: accepted
        answer = create(model="tiny:llama", max_tokens=2, temperature=0, seed=1234, n=1, user="u-1", logprobs=False,
                        stream_options=None, stop=["\n\n"])
        assert answer.usage.completion_tokens > 0
    streamed = list(c.chat.completions.create(model="tiny:llama", messages=[{"role": "user", "content": [text]}],
                                              max_tokens=2, stream=True, stream_options={"include_usage": True},
                                              metadata={"run": "a"}, store=False, tool_choice="none"))
    assert streamed[-1].usage.completion_tokens > 0


def register(service, name: str, folder: Path, kind: str = "tune", weights: str = "full") -> None:
    """A model in the registry as a succeeded job leaves it (its folder made by the test)."""
    job_id = "ftjob-" + name.rsplit(":", 1)[-1].ljust(24, "0")[:24]
    with service.ctx.db.begin() as s:
        s.add(JobRow(id=job_id, kind=kind, config={}, status="succeeded", folder=str(folder.parent),
                     base_model="tiny:llama"))
        s.add(ModelRow(name=name, job_id=job_id, base_model="tiny:llama", kind=kind, method=kind, weights=weights,
                       path=str(folder), job_folder=str(folder.parent), data_hashes={}, parameters={}, metrics={}))


def test_a_reward_model_scores_and_is_never_generated_from(service, tmp_path):
    import openai

    from conftest import reward_model_folder
    from mentor.rlhf.reward import RewardModel

    folder = reward_model_folder((tmp_path / "rm-job" / "model").resolve())
    name = "ft:tiny:llama:rm:abcdef"
    register(service, name, folder, kind="reward-model")
    c = openai_client(service)
    with pytest.raises(openai.BadRequestError, match="is a reward model") as err:
        c.chat.completions.create(model=name, messages=[{"role": "user", "content": "abc"}], max_tokens=2)
    assert err.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError, match="is a reward model"):
        c.completions.create(model=name, prompt="abc", max_tokens=2)
    listed = {m.id: m.model_extra for m in c.models.list().data}
    assert listed[name]["kind"] == "reward-model" and listed[name]["endpoints"] == ["/v1/mentor/score"]
    assert "/v1/chat/completions" in listed["tiny:llama"]["endpoints"]
    assert c.models.retrieve(name).model_extra["endpoints"] == ["/v1/mentor/score"]

    answers = ["bcd", "a long and rambling answer"]
    r = service.post("/v1/mentor/score", json={"model": name, "prompt": "abc", "responses": answers})
    assert r.status_code == 200, r.text
    expected = RewardModel(str(folder)).score(["abc", "abc"], answers)
    assert [d["score"] for d in r.json()["data"]] == pytest.approx(expected, abs=1e-5)
    r = service.post("/v1/mentor/score", json={"model": name, "messages": [{"role": "user", "content": "abc"}],
                                               "response": "bcd"})
    assert r.json()["data"][0]["score"] == pytest.approx(expected[0], abs=1e-5)
    assert "not a reward model" in error(service.post("/v1/mentor/score", json={"model": "tiny:llama", "prompt": "a",
                                                                                "response": "b"}), 400)
    assert error(service.post("/v1/mentor/score", json={"model": name, "prompt": "a"}), 400)  # no answer to score


def test_deleting_a_served_model_frees_its_memory(service, tmp_path):
    """A deleted model (a full model, or a LoRA adapter on a base still in use) leaves the serving
    pool with its files: /v1/mentor/serving no longer holds it."""
    import shutil

    from peft import LoraConfig, get_peft_model

    from mentor.models import load_model, resolve

    full = tmp_path / "full-job" / "model"
    shutil.copytree(resolve("tiny:llama"), full)
    adapter = tmp_path / "lora-job" / "model"
    get_peft_model(load_model("tiny:llama").model, LoraConfig(r=2, target_modules="all-linear")).save_pretrained(adapter)
    (adapter / "mentor_base.json").write_text(json.dumps({"base_model": "tiny:llama"}))
    names = {"ft:tiny:llama:full:aaaaaa": (full, "full"), "ft:tiny:llama:lora:bbbbbb": (adapter, "adapter")}
    for name, (folder, weights) in names.items():
        register(service, name, folder, weights=weights)
        r = service.post("/v1/chat/completions", json={"model": name, "messages": [{"role": "user", "content": "a"}],
                                                       "max_tokens": 2})
        assert r.status_code == 200, r.text

    def loaded() -> dict:
        return service.get("/v1/mentor/serving").json()["loaded"]

    base = resolve("tiny:llama")
    assert str(full) in loaded() and len(loaded()[base]) == 1  # the full model, and the adapter on its base
    used = service.get("/v1/mentor/serving").json()["used_bytes"]
    assert service.delete("/v1/models/ft:tiny:llama:lora:bbbbbb").status_code == 200
    assert loaded()[base] == [] and service.get("/v1/mentor/serving").json()["used_bytes"] < used
    assert service.delete("/v1/models/ft:tiny:llama:full:aaaaaa").status_code == 200
    assert str(full) not in loaded()


def test_counting_a_cloud_jobs_data_closes_the_file(service):
    """The server runs for weeks: the uploaded file read to count its lines is closed at once, not
    left to the garbage collector (a ResourceWarning per request)."""
    import gc
    import warnings

    data = upload(service)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        r = service.post("/v1/projects/p/locations/l/pipelineJobs",
                         json={"parameterValues": {"base_model": "tiny:llama", "dataset_uri": data, "epoch_count": 1}})
        gc.collect()
    assert r.status_code == 200, r.text
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], [str(w.message) for w in caught]


def test_a_job_order_is_written_whole_or_not_at_all(service):
    """A job's config.yaml (the worker's order) is written atomically: a disk that fills up mid-write
    (here the file size limit) leaves no half order for a worker or a restarted server to read."""
    import resource
    import signal

    data = upload(service)
    jobs_before = set(service.ctx.settings.jobs_dir.iterdir())
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (200, hard))
    try:
        r = service.post("/v1/fine_tuning/jobs", json={"model": "tiny:llama", "training_file": data})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert r.status_code == 500
    assert set(service.ctx.settings.jobs_dir.iterdir()) == jobs_before  # no config.yaml, whole or cut, nor its folder


@pytest.mark.parametrize("fails", ["config.yaml", "events.jsonl", "database"])
def test_a_full_disk_while_a_job_is_created_is_a_507_leaving_no_half_job(service, monkeypatch, fails):
    """The disk fills while the job's order, its first event or its row is written: an OpenAI-shaped
    error that says so (not a generic 500), and neither a folder a worker could take nor a row."""
    import errno

    import sqlalchemy.exc
    from sqlalchemy.orm import Session

    from mentor.server import scheduler
    from mentor.server.services import jobs

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(args[0]))

    def add(self, row, *args, **kwargs):
        if isinstance(row, JobRow):  # SQLite's own word for it
            raise sqlalchemy.exc.OperationalError("INSERT INTO jobs", {}, Exception("database or disk is full"))
        return add_row(self, row, *args, **kwargs)

    data = upload(service)
    jobs_before = set(service.ctx.settings.jobs_dir.iterdir())
    add_row = Session.add
    if fails == "config.yaml":
        monkeypatch.setattr(jobs, "write_job_config", full)
    elif fails == "events.jsonl":
        monkeypatch.setattr(scheduler, "append_line", full)
    else:
        monkeypatch.setattr(Session, "add", add)
    r = service.post("/v1/fine_tuning/jobs", json={"model": "tiny:llama", "training_file": data})
    assert r.status_code == 507, r.text
    body = r.json()["error"]
    assert "no space left on device" in body["message"] and body["type"] == "server_error", body
    assert set(service.ctx.settings.jobs_dir.iterdir()) == jobs_before
    monkeypatch.undo()
    assert service.get("/v1/fine_tuning/jobs").json()["data"] == []


def test_service_events_go_through_the_shared_append(tmp_path):
    """A line a killed worker left torn is cut before the server's event is appended (appended to
    it, the event was glued onto the torn line and lost with it)."""
    from mentor.jobs import read_events
    from mentor.server.scheduler import service_event

    (tmp_path / "events.jsonl").write_text(json.dumps({"type": "started", "message": "m"}) + '\n{"type": "chec')
    service_event(tmp_path, "server_restarted", "the server restarted")
    assert [e["type"] for e in read_events(tmp_path)] == ["started", "server_restarted"]


def test_every_input_file_is_recorded_by_its_role(service, tmp_path):
    """An RLHF job reusing a reward model reads a prompt dataset (its third input field) and no
    preference pairs (its first): the upload is its training file, and the lineage of its model
    names every input by role with the upload's id (by position, the prompt dataset was lost)."""
    from mentor.server import registry

    prompts = upload(service)
    r = service.post("/v1/mentor/jobs", json={"kind": "rlhf", "config": {"model": "tiny:llama",
                                                                         "reward_model": "tiny:llama",
                                                                         "prompt_dataset": prompts}})
    assert r.status_code == 200, r.text
    with service.ctx.db.begin() as s:
        job = s.get(JobRow, r.json()["id"])
        assert (job.training_file, job.validation_file) == (prompts, None)
        path = job.config["prompt_dataset"]
        job.status = "succeeded"
        s.add(ModelRow(name="ft:tiny:llama:mentor:rlhf01", job_id=job.id, base_model="tiny:llama", kind="rlhf",
                       method="rlhf", weights="full", path=str(tmp_path), job_folder=job.folder,
                       data_hashes={"prompt_dataset": "0" * 64}, parameters=dict(job.config), metrics={}))
    data = registry.lineage(service.ctx.db, "ft:tiny:llama:mentor:rlhf01").data
    assert data == {"prompt_dataset": {"path": path, "sha256": "0" * 64, "file_id": prompts}}


class Unnoticing:
    """An engine that has not noticed its worker died (its poll still says running)."""

    name = "test"

    def __init__(self):
        self.killed, self.started = [], []

    def poll(self, job_id, ref):
        return None

    def start(self, job_id, folder, attempt):
        self.started.append(job_id)
        return f"pid:{os.getpid()}"  # a new worker, alive, that has not recorded itself yet

    def terminate(self, *args):
        pass

    def kill(self, job_id, ref):
        self.killed.append(ref)


def test_a_job_whose_worker_died_is_never_shown_running(service, tmp_path):
    """The job's folder says running, but the process it names is gone and the scheduler has not
    noticed: every view shows the job as the scheduler will record it (resumed, or failed after its
    last restart), recording nothing; the scheduler then records the death once, from the same
    folder, and a worker started since is shown running. A folder that says succeeded is never failed."""
    import subprocess
    import sys

    from mentor.jobs import read_events

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    ids = {"ftjob-" + "d" * 24: 0, "ftjob-" + "e" * 24: 3, "ftjob-" + "f" * 24: 0}  # id: worker deaths so far
    for job_id, deaths in ids.items():
        folder = tmp_path / job_id
        folder.mkdir()
        done = job_id.endswith("f")  # its worker recorded success, then went
        (folder / "state.json").write_text(json.dumps({"kind": "tune", "state": "succeeded" if done else "running",
                                                       "pid": None if done else dead, "attempts": 1, "step": 3,
                                                       "total_steps": 10}))
        with service.ctx.db.begin() as s:
            s.add(JobRow(id=job_id, kind="tune", config={}, status="running", folder=str(folder), api="cloud",
                         base_model="tiny:llama", executor_ref=f"pid:{dead}", worker_deaths=deaths,
                         job_metadata={"project": "p", "location": "l"}))
    resumed, failed, succeeded = ids
    cloud = "/v1/projects/p/locations/l/pipelineJobs"

    job = service.get(f"/v1/fine_tuning/jobs/{resumed}").json()
    assert (job["status"], job["error"], job["progress"]["state"]) == ("queued", None, "failed")
    assert job["estimated_finish"] is None
    job = service.get(f"/v1/fine_tuning/jobs/{failed}").json()
    assert job["status"] == "failed" and job["error"]["code"] == "worker_died" and "4 times" in job["error"]["message"]
    assert service.get(f"/v1/fine_tuning/jobs/{succeeded}").json()["status"] == "running"  # until it is registered
    listed = {j["id"]: j["status"] for j in service.get("/v1/fine_tuning/jobs").json()["data"]}
    assert listed == {resumed: "queued", failed: "failed", succeeded: "running"}
    assert service.get(f"{cloud}/{resumed}").json()["state"] == "JOB_STATE_QUEUED"
    assert {j["name"].rsplit("/", 1)[1]: j["state"] for j in service.get(cloud).json()["pipelineJobs"]} == {
        resumed: "JOB_STATE_QUEUED", failed: "JOB_STATE_FAILED", succeeded: "JOB_STATE_RUNNING"}
    assert [read_events(tmp_path / i) for i in ids] == [[], [], []]  # shown, not recorded

    engine = Unnoticing()
    Scheduler(service.ctx.settings.model_copy(update={"max_concurrent_jobs": 2}), service.ctx.db, engine).tick()
    assert sorted(engine.killed) == [f"pid:{dead}"] * 2 and engine.started == [resumed]
    with service.ctx.db.session() as s:
        rows = {i: s.get(JobRow, i) for i in ids}
    assert (rows[resumed].status, rows[resumed].worker_deaths) == ("running", 1)
    assert (rows[failed].status, rows[failed].error["code"]) == ("failed", "worker_died")
    assert rows[succeeded].status == "running"  # its engine has not said it ended: nothing is made up
    assert [e["type"] for e in read_events(tmp_path / resumed)] == ["worker_died", "dispatched"]
    job = service.get(f"/v1/fine_tuning/jobs/{resumed}").json()  # its new worker has yet to record itself
    assert (job["status"], job["progress"]["state"]) == ("running", "pending")


SAME = {"type": "string_check", "name": "same", "input": "{{sample.output_text}}", "reference": "{{item.output_text}}",
        "operation": "eq"}
CLOUD = "/v1/projects/p/locations/l/pipelineJobs"


def judge_at(url: str) -> dict:
    return {"type": "score_model", "name": "j", "model": f"m@{url}",
            "input": [{"role": "user", "content": "Rate {{sample.output_text}}"}]}


def test_a_judge_is_held_to_the_servers_allowed_urls_by_every_route(service, monkeypatch):
    """One allow-list for teachers and judges, the server's (--allowed-teacher-urls): /graders/run used
    the environment's and let any loopback port through (a database, an admin API: the answers, the
    API key, and the reply's first 200 characters back in the errors), while jobs used the server's."""
    monkeypatch.setenv("MENTOR_GRADERS_ALLOWED_JUDGE_URLS", json.dumps(["http://127.0.0.1:6379/v1"]))  # not the server's
    data = upload(service)
    for url in ("http://127.0.0.1:6379/v1", "http://localhost:9/v1", "http://127.0.0.1:9/v1/../admin"):
        for path, body in (("/v1/fine_tuning/alpha/graders/run", {"grader": judge_at(url), "model_sample": "x"}),
                           ("/v1/fine_tuning/alpha/graders/validate", {"grader": judge_at(url)}),
                           ("/v1/mentor/jobs", {"kind": "reinforcement", "config": {
                               "model": "tiny:llama", "data": data, "grader": judge_at(url)}}),
                           (CLOUD, {"parameterValues": {"base_model": "tiny:llama", "dataset_uri": data,
                                                        "grader": judge_at(url)}})):
            r = service.post(path, json=body)
            assert re.search(r"field 'model': .* is not (allowed|a plain http)", error(r, 400)), (path, url)
            assert r.json()["error"]["param"] == "grader", r.json()
    listed = judge_at("http://127.0.0.1:9/v1/")
    assert service.post("/v1/fine_tuning/alpha/graders/validate", json={"grader": listed}).status_code == 200
    r = service.post("/v1/mentor/jobs", json={"kind": "reinforcement", "config": {"model": "tiny:llama", "data": data,
                                                                                  "grader": listed}})
    assert r.status_code == 200, r.text


def test_a_data_path_whose_first_line_is_no_json_is_a_400_naming_the_file_and_line(service, tmp_path):
    service.ctx.settings.allowed_data_roots.append(tmp_path.resolve())
    for content in (b"{not json\n", b"\n\xff\xfe\n"):
        path = tmp_path / "rl.jsonl"
        path.write_bytes(content)
        r = service.post("/v1/mentor/jobs", json={"kind": "reinforcement", "config": {
            "model": "tiny:llama", "data": str(path), "grader": SAME}})
        message = error(r, 400)
        assert str(path) in message and f"line {content.index(next(c for c in content if c != 10)) + 1}" in message, \
            message
        assert r.json()["error"]["param"] == "data"


def test_the_cloud_shape_with_a_grader_is_a_reinforcement_job(service):
    """A cloud pipeline body with `grader` (or `reward_grader`) became a tune job, and was refused."""
    data = upload(service)  # 8 lines
    for name in ("grader", "reward_grader"):
        r = service.post(CLOUD, json={"runtimeConfig": {"parameterValues": {
            "large_model_reference": "tiny:llama", "dataset_uri": data, name: SAME, "epoch_count": 1, "batch_size": 4,
            "num_generations": 2}}})
        assert r.status_code == 200, r.text
        with service.ctx.db.session() as s:
            row = s.get(JobRow, r.json()["name"].rsplit("/", 1)[1])
            assert row.kind == "reinforcement", row.kind
            assert (row.config["grader"], row.config["train_steps"], row.config["num_generations"]) == (SAME, 2, 2)
    # the grader is checked against the data's first line, naming the parameter the body used
    r = service.post(CLOUD, json={"parameterValues": {"base_model": "tiny:llama", "dataset_uri": data,
                                                      "reward_grader": {**SAME, "reference": "{{item.answer}}"}}})
    assert "answer" in error(r, 400) and r.json()["error"]["param"] == "reward_grader"
    r = service.post(CLOUD, json={"parameterValues": {"base_model": "tiny:llama", "dataset_uri": data, "grader": SAME,
                                                      "teacher_model_reference": "tiny:llama"}})
    assert "not from a teacher" in error(r, 400)
    r = service.post(CLOUD, json={"parameterValues": {"base_model": "tiny:llama", "dataset_uri": data,
                                                      "method": "reinforcement"}})
    assert "needs a grader" in error(r, 400)
