"""The model-reference resolver's reading of a reference (mentor.models.resolve): a hub id, a folder,
a finished job's folder, a GGUF file, or a refusal in one line saying what is wrong; no model is
built or loaded here."""

from __future__ import annotations

import json

import pytest

from mentor.errors import MentorError
from mentor.job_files import STATE_FILE
from mentor.model_record import ModelRecord
from mentor.models import load_model, resolve


@pytest.mark.parametrize("ref", ["HuggingFaceTB/SmolLM2-135M-Instruct", "gpt2"])
def test_a_hub_id_is_left_to_the_hub(ref):
    assert resolve(ref) == ref


@pytest.mark.parametrize("ref", ["./missing-folder", "/no/such/folder", "~/no-such-folder", "a/b/c"])
def test_a_path_that_is_not_there_is_refused_without_asking_the_hub(ref):
    with pytest.raises(MentorError, match="model folder not found"):
        resolve(ref)


def test_org_slash_name_is_a_path_when_its_first_part_is_a_folder_here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(MentorError, match="model folder not found: runs/x"):
        resolve("runs/x")


def test_a_folder_is_a_model_with_a_config_or_an_adapter(tmp_path):
    for marker in ("config.json", "adapter_config.json"):
        folder = tmp_path / marker.split(".")[0]
        folder.mkdir()
        (folder / marker).write_text("{}")
        assert resolve(str(folder)) == str(folder)
    with pytest.raises(MentorError, match="not a model folder: it has no config.json"):
        resolve(str(tmp_path))
    (tmp_path / "weights.bin").write_text("x")
    with pytest.raises(MentorError, match="is a file; give a model folder"):
        resolve(str(tmp_path / "weights.bin"))


def test_a_finished_job_folder_is_its_model_and_an_unfinished_one_is_refused_with_its_state(tmp_path):
    job = tmp_path / "job"
    job.mkdir()
    (job / STATE_FILE).write_text(json.dumps({"state": "running", "step": 3, "total_steps": 10}))
    with pytest.raises(MentorError, match=r"job has not finished \(state running, step 3 of 10\).*rerun"):
        resolve(str(job))
    (job / "model").mkdir()
    ModelRecord(base_model="tiny:llama").write(job / "model")
    assert resolve(str(job)) == str(job / "model")


def test_a_gguf_reference_must_be_a_gguf_file(tmp_path):
    with pytest.raises(MentorError, match="GGUF file not found"):
        resolve(str(tmp_path / "x.gguf"))
    (tmp_path / "fake.gguf").write_bytes(b"PK\x03\x04 not gguf")
    with pytest.raises(MentorError, match="is not a GGUF file"):
        resolve(str(tmp_path / "fake.gguf"))


def test_model_reference_errors(tmp_path):
    with pytest.raises(MentorError, match="not in the local Hugging Face cache.*HF_HUB_OFFLINE"):
        load_model("nobody/no-such-model")
    with pytest.raises(MentorError, match="GGUF file not found"):
        load_model(str(tmp_path / "x.gguf"))
    with pytest.raises(MentorError, match="unknown tiny model"):
        load_model("tiny:nothing")
    with pytest.raises(MentorError, match="model folder not found"):
        load_model("./missing-folder")
