"""The job model: one registry of kinds from which the command line and job files are derived,
and one lifecycle (state, events, lock, cancel, resume) for every kind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import typing
from pathlib import Path

import pytest
import yaml

import mentor
from conftest import shift_task, write_jsonl
from mentor.cli import build_parser
from mentor.cli.jobs import config_from_args
from mentor.errors import DataValidationError, MentorError
from mentor.jobs import kinds, read_events, read_state

REQUIRED_VALUES = {"preference_dataset": "pairs.jsonl", "teacher": "tiny:llama"}


def _required(kind) -> dict:
    fields = {name: REQUIRED_VALUES.get(name, f"{name}-value") for name, f in kind.config.model_fields.items()
              if f.is_required()}
    if "preference_dataset" in kind.config.model_fields:
        fields["preference_dataset"] = "pairs.jsonl"  # RLHF needs pairs or a reward model
    if "teacher" in kind.config.model_fields and kind.name not in ("self",):
        fields["teacher"] = "tiny:llama"
    return fields


def _candidates(annotation, default) -> list:
    """Values of a field's type other than its default, most ordinary first."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _candidates(args[0], default)
    if origin is typing.Literal:
        return [a for a in args if a != default]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return [v for a in args if a is not type(None) for v in _candidates(a, default)]
    if annotation is bool:
        return [not default]
    if annotation is int:
        return [v for v in (4, default + 1, 2, 1, 16, 0) if v != default]
    if annotation is float:
        return [v for v in (0.25, default / 2 if default else 0.5, 0.75, 2.0) if v != default]
    if annotation is str:
        return ["1:2" if default is None else "all-linear" if default == "all-linear" else f"{default}x"]
    if origin is list:
        return [["q_proj", "v_proj"], ["x"]]
    if origin is dict:
        return [{"ft:model": "tiny:llama"}]
    raise AssertionError(f"no sample value for {annotation}")


def _flag(name: str, value) -> list[str]:
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return [flag if value else "--no-" + name.replace("_", "-")]
    if isinstance(value, list):
        return [flag, ",".join(value)]
    if isinstance(value, dict):
        return [flag, json.dumps(value)]
    return [flag, str(value)]


def _from_cli(argv: list[str]):
    return config_from_args(build_parser(argv).parse_args(argv))


@pytest.mark.parametrize("kind_name", sorted(kinds()))
def test_every_field_of_every_kind_is_the_same_through_flags_and_job_files(kind_name, tmp_path):
    kind = kinds()[kind_name]
    base = _required(kind)
    base_flags = [arg for name, value in base.items() for arg in _flag(name, value)]
    checked = 0
    for name, field in kind.config.model_fields.items():
        for value in _candidates(field.annotation, field.default):
            try:
                direct = kind.config(**{**base, name: value})
            except ValueError:
                continue  # not a valid value of this field here (a constraint or a validator says no)
            via_flags = _from_cli(["run", kind_name, *base_flags, *_flag(name, value)])
            job_file = tmp_path / f"{name}.yaml"
            job_file.write_text(yaml.safe_dump({**base, name: value}))
            via_file = _from_cli(["run", kind_name, "--config", str(job_file)])
            assert via_flags == (kind, direct), name
            assert via_file == (kind, direct), name
            checked += 1
            break
        else:  # no other value is valid for this kind: both routes must refuse it alike
            for value in _candidates(field.annotation, field.default)[:1]:
                with pytest.raises(MentorError):
                    _from_cli(["run", kind_name, *base_flags, *_flag(name, value)])
                job_file = tmp_path / f"{name}.yaml"
                job_file.write_text(yaml.safe_dump({**base, name: value}))
                with pytest.raises(MentorError):
                    _from_cli(["run", kind_name, "--config", str(job_file)])
                checked += 1
    assert checked >= len(kind.config.model_fields) - 1  # every field but the kind's fixed method


def test_flags_override_the_job_file_and_families_pick_kinds_by_method(tmp_path):
    job_file = tmp_path / "job.yaml"
    job_file.write_text("model: tiny:llama\ndata: d.jsonl\noutput: o\ntrain_steps: 50\nmethod: dpo\n")
    kind, cfg = _from_cli(["tune", "--config", str(job_file), "--train-steps", "7"])
    assert kind.name == "dpo" and cfg.train_steps == 7 and cfg.beta == 0.1
    kind, cfg = _from_cli(["distill", "--method", "feature", "--student", "s", "--teacher", "t", "--data", "d",
                           "--output", "o", "--layer-map", "1:2"])
    assert kind.name == "feature" and cfg.model == "s" and cfg.layer_map == "1:2"
    with pytest.raises(MentorError, match="invalid choice: 'nope'"):
        _from_cli(["distill", "--method", "nope", "--data", "d"])
    with pytest.raises(MentorError, match="field 'train_steps'"):
        _from_cli(["tune", "--model", "m", "--data", "d", "--output", "o", "--train-steps", "0"])
    # a flag set to null clears the file's value; a field the file names by its alias is overridden
    # by its own flag, not refused as given twice
    job_file.write_text("student: s\ndata: d\neval_data: e\noutput: o\nteacher: t\nlabels: [a, b]\n")
    kind, cfg = _from_cli(["distill", "--config", str(job_file), "--model", "m", "--evaluation-data", "f",
                           "--labels", "null", "--teacher", "null"])
    assert (cfg.model, cfg.evaluation_data, cfg.labels, cfg.teacher) == ("m", "f", None, None)


def test_every_kind_documents_every_field():
    for kind in kinds().values():
        for name, field in kind.config.model_fields.items():
            assert field.description, f"{kind.name}.{name} has no description (it is the --help text)"


def test_a_new_whitebox_method_is_one_file_and_one_registration(tmp_path):
    """docs/whitebox.md's example: a method's loss and its config, registered as a job kind of its own."""
    from typing import Any, ClassVar, Literal

    from pydantic import Field

    from mentor.jobs import JobKind, register_kind
    from mentor.whitebox.base import Method
    from mentor.whitebox.config import WhiteboxConfig

    class FirstToken(Method):
        def distill_loss(self, student, teacher, batch):
            import torch.nn.functional as F

            s, t = student.logits[:1, : self.width], teacher.logits[:1, : self.width]
            loss = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean")
            return loss, {}

    class FirstTokenConfig(WhiteboxConfig):
        method_class: ClassVar[Any] = FirstToken
        method: Literal["first-token"] = Field("first-token", description="first-token: the first output token only")

    register_kind(JobKind("first-token", FirstTokenConfig, "mentor.recipes.whitebox:run",
                          "white-box: match the teacher's logits at the first output token only",
                          family="distill", method="first-token"))
    assert "first-token" in kinds()
    data = write_jsonl(tmp_path / "train.jsonl", shift_task(16, 0))
    result = mentor.run("first-token", model="tiny:llama", teacher="tiny:llama", data=str(data),
                        output=str(tmp_path / "o"), train_steps=2, batch_size=4)
    assert result.method == "first-token" and result.steps_run == 2
    assert read_state(tmp_path / "o")["state"] == "succeeded"


def test_bad_data_fails_the_job_with_file_line_and_field(tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"input_text": "a", "output_text": "b"}, {"input_text": "a"}])
    with pytest.raises(DataValidationError):
        mentor.tune(model="tiny:llama", data=str(bad), output=str(tmp_path / "o"), train_steps=2)
    state = read_state(tmp_path / "o")
    assert state["state"] == "failed"
    assert (state["error"]["file"], state["error"]["line"], state["error"]["field"]) == (str(bad), 2, "output_text")
    assert read_events(tmp_path / "o")[-1]["type"] == "failed"
    # a job that failed before training may be replaced by the corrected one
    good = write_jsonl(tmp_path / "good.jsonl", shift_task(8, 0))
    result = mentor.tune(model="tiny:llama", data=str(good), output=str(tmp_path / "o"), train_steps=2, batch_size=4)
    assert result.steps_run == 2 and read_state(tmp_path / "o")["state"] == "succeeded"


def test_changed_data_and_a_second_process_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = write_jsonl(tmp_path / "d.jsonl", shift_task(8, 0))
    out = tmp_path / "o"
    mentor.tune(model="tiny:llama", data=str(data), output=str(out), train_steps=2, batch_size=4)
    # the same job, its paths spelled another way: the finished job, not "a different job"
    again = mentor.tune(model="tiny:llama", data="./d.jsonl", output="o/", train_steps=2, batch_size=4)
    assert again.steps_run == 2
    write_jsonl(data, shift_task(8, 1))
    with pytest.raises(MentorError, match="contents of data"):
        mentor.tune(model="tiny:llama", data=str(data), output=str(out), train_steps=2, batch_size=4)
    from mentor.jobs import Job
    from mentor.training.config import TuneConfig

    holder = Job.open("tune", TuneConfig(model="m", data=str(data), output=str(tmp_path / "held")))
    try:
        with pytest.raises(MentorError, match="in use by another running mentor job"):
            Job.open("tune", TuneConfig(model="m", data=str(data), output=str(tmp_path / "held")))
    finally:
        holder.close()


def _cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mentor.cli", *args], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)


def test_cancel_keeps_the_last_checkpoint_and_a_rerun_resumes(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", shift_task(64, 0))
    out = tmp_path / "job"
    args = ["tune", "--model", "tiny:llama", "--data", str(data), "--output", str(out), "--train-steps", "400",
            "--batch-size", "4", "--evaluation-interval", "50"]
    proc = _cli(*args)
    deadline = time.time() + 120
    while read_state(out).get("step", 0) < 5 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert subprocess.run([sys.executable, "-m", "mentor.cli", "cancel", str(out)]).returncode == 0
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()[-2000:]
    state = read_state(out)
    stopped = state["step"]
    assert state["state"] == "cancelled" and 5 <= stopped < 400
    assert (out / "checkpoints" / f"checkpoint-{stopped}" / "optimizer.pt").exists()
    assert "cancelled" in err.decode()
    for name in ("metrics.jsonl", "events.jsonl"):  # as a kill in the middle of writing a line leaves them
        with (out / name).open("a") as f:
            f.write('{"step": 7, "trai')

    rerun = _cli(*args)
    _, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err.decode()[-2000:]
    events = read_events(out)
    types = [e["type"] for e in events]
    assert types.count("started") == 2 and types[-1] == "finished"
    assert [e["step"] for e in events if e["type"] == "resumed"] == [stopped]
    assert read_state(out)["state"] == "succeeded"
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 400  # one clean curve: the torn line was cut, nothing glued to it


def test_torchrun_preference_job_is_written_by_rank_zero_only(tmp_path):
    """Two processes (gloo) train one DPO job; the job's files come from rank 0 alone."""
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": f"say yes {i}", "chosen": "yes", "rejected": "no"}
                                                    for i in range(32)])
    out = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run([str(torchrun), "--nproc_per_node", "2", "-m", "mentor.cli", "tune", "--method", "dpo",
                           "--model", "tiny:llama", "--data", str(pairs), "--output", str(out), "--train-steps", "4",
                           "--batch-size", "2", "--evaluation-interval", "2"],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = read_events(out)
    assert [e["type"] for e in events].count("started") == 1
    assert [e["type"] for e in events].count("finished") == 1
    assert len({e.get("pid") for e in events if e["type"] == "started"}) == 1
    result = json.loads((out / "result.json").read_text())
    assert result["steps_run"] == 4 and (out / "model" / "adapter_model.safetensors").exists()
    assert not list(out.glob(".*.tmp")) and not list(out.glob(".model*"))


class Killed(BaseException):
    """Stands in for SIGKILL."""


def killed_while_recording_then_rerun(job: dict, monkeypatch):
    """Run the tuning job, killed after training while its success is recorded; then run it again."""
    from mentor.jobs.lifecycle import Job

    def killed(self, result):
        raise Killed

    monkeypatch.setattr(Job, "succeed", killed)
    with pytest.raises(Killed):
        mentor.tune(**job)
    monkeypatch.undo()
    return mentor.tune(**job)


@pytest.mark.parametrize("selection", [False, True])
def test_a_kill_while_a_finished_job_is_recorded_does_not_redo_its_training(tmp_path, monkeypatch, selection):
    """Checkpoints are deleted only once the job is recorded as succeeded: killed in between, the
    rerun resumes at the last step instead of training from step 0."""
    data = write_jsonl(tmp_path / "d.jsonl", shift_task(16, 0))
    job = dict(model="tiny:llama", data=str(data), output=str(tmp_path / "job"), train_steps=6, batch_size=4,
               evaluation_interval=3)
    if selection:  # the best checkpoint is the result: it is loaded, not the last one
        job.update(evaluation_data=str(write_jsonl(tmp_path / "e.jsonl", shift_task(8, 1))), early_stopping=False,
                   learning_rate_multiplier=400)
    result = killed_while_recording_then_rerun(job, monkeypatch)
    assert result.steps_run == 6
    events = read_events(tmp_path / "job")
    assert [e["step"] for e in events if e["type"] == "resumed"] == [6]
    assert [e["type"] for e in events].count("training_started") == 1
    assert not (tmp_path / "job" / "checkpoints").exists()  # deleted once the success was recorded
    if selection:
        rows = [json.loads(line) for line in (tmp_path / "job" / "metrics.jsonl").read_text().splitlines()]
        accuracy = {r["step"]: r["eval_fraction_of_correct_next_step_preds"] for r in rows
                    if "eval_fraction_of_correct_next_step_preds" in r}
        assert result.best_step == max(accuracy, key=lambda s: (accuracy[s], -s))
        assert result.metrics["eval_fraction_of_correct_next_step_preds"] == pytest.approx(accuracy[result.best_step])


def test_a_kill_while_an_early_stopped_job_is_recorded_does_not_train_on(tmp_path, monkeypatch):
    """The checkpoint of the evaluation that stopped the training is where a rerun ends: Trainer
    would restore the patience counter and train one more evaluation interval before stopping."""
    # a learning rate far too small to move the model: evaluation accuracy stays flat, the job
    # stops at step 30 (best at 10, then two evaluations without gain)
    job = dict(model="tiny:llama", data=str(write_jsonl(tmp_path / "d.jsonl", shift_task(16, 0))),
               evaluation_data=str(write_jsonl(tmp_path / "e.jsonl", shift_task(8, 1))), output=str(tmp_path / "job"),
               tuning="full", train_steps=300, batch_size=4, learning_rate_multiplier=1e-6, evaluation_interval=10,
               early_stopping_patience=2)
    result = killed_while_recording_then_rerun(job, monkeypatch)
    assert (result.steps_run, result.best_step, result.extra["early_stopped"]) == (30, 10, True)
    events = read_events(tmp_path / "job")
    assert [(e["step"], e["message"]) for e in events if e["type"] == "resumed"] == [
        (30, "resumed at the early stop, step 30: nothing left to train")]
    assert [e["type"] for e in events].count("training_started") == 1


# -- issue 23: what a hostile user broke -----------------------------------------------------------

def test_a_folder_of_the_users_own_files_is_not_written_into(tmp_path, capsys):
    from mentor.cli import main
    from mentor.jobs import Job
    from mentor.training.config import TuneConfig

    data = write_jsonl(tmp_path / "d.jsonl", shift_task(8, 0))
    notes = tmp_path / "mydocs"
    notes.mkdir()
    (notes / "README.md").write_text("my notes\n")
    tune = ["tune", "--model", "tiny:llama", "--data", str(data), "--train-steps", "1", "--batch-size", "4"]
    assert main([*tune, "--output", str(notes)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not empty and holds no mentor job" in err and "README.md" in err
    assert (notes / "README.md").read_text() == "my notes\n" and sorted(p.name for p in notes.iterdir()) == ["README.md"]
    # another job's folder reached through a symlink: its model, or a new folder inside it
    other = tmp_path / "other"
    (other / "model").mkdir(parents=True)
    (other / "config.yaml").write_text("kind: tune\n")
    (other / "model" / "adapter_model.safetensors").write_text("weights")
    for name, target in (("to_model", other / "model"), ("to_inside", other / "model" / "new")):
        (tmp_path / name).symlink_to(target)
        assert main([*tune, "--output", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "mentor: error: output" in err, err
    assert not (other / "model" / "new").exists() and not (other / "model" / "README.md").exists()
    # an empty folder, and a job's own folder, are the job's to use
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "empty", tmp_path / "empty"):  # the second time, it is this job's folder
        Job.open("tune", TuneConfig(model="m", data=str(data), output=str(folder))).close()
    # a stage's folder inside its job's (RLHF's reward model), named through a symlink above both (a
    # linked home folder, say), is a plain nesting, not a symlink into another job
    (tmp_path / "home").symlink_to(tmp_path)
    Job.open("tune", TuneConfig(model="m", data=str(data), output=str(tmp_path / "home" / "empty" / "stage"))).close()
    assert (tmp_path / "empty" / "stage" / "config.yaml").exists()


@pytest.mark.parametrize("kind_name", sorted(kinds()))
def test_every_float_field_refuses_inf_and_nan_and_seeds_are_checked(kind_name):
    from mentor.jobs import build_config

    kind = kinds()[kind_name]
    floats = [name for name, f in kind.config.model_fields.items() if float in _types(f.annotation)]
    for name in floats:
        for bad in (float("inf"), float("-inf"), float("nan")):
            with pytest.raises(MentorError, match=f"field '{name}'"):
                build_config(kind.config, {**_required(kind), name: bad})
    if "seed" in kind.config.model_fields:
        for bad in (-1, 2**32):
            with pytest.raises(MentorError, match="field 'seed'"):
                build_config(kind.config, {**_required(kind), "seed": bad})
        assert build_config(kind.config, {**_required(kind), "seed": 2**32 - 1}).seed == 2**32 - 1
    for name in (n for n in floats if n.endswith("rate_multiplier")):  # a rate no training survives
        with pytest.raises(MentorError, match=f"{name} makes the learning rate .* above 1"):
            build_config(kind.config, {**_required(kind), name: 1e30})


def _types(annotation) -> set:
    args = typing.get_args(annotation)
    return {annotation} if not args else {t for a in args for t in _types(a)} | {annotation}


def test_a_batch_job_renders_each_chat_prompt_once(tmp_path, monkeypatch):
    from mentor.recipes import batch

    rendered = []
    render = batch.chat_prompt
    monkeypatch.setattr(batch, "chat_prompt", lambda p, body: rendered.append(body) or render(p, body))
    lines = write_jsonl(tmp_path / "in.jsonl", [
        {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "tiny:llama", "max_tokens": 2, "messages": [{"role": "user", "content": f"hi {i}"}]}}
        for i in range(2)])
    result = mentor.run("batch", input=str(lines), output=str(tmp_path / "b"))
    assert result.metrics == {"completed": 2, "failed": 0, "total": 2}
    assert len(rendered) == 2


def test_a_batch_line_asking_to_score_is_refused_naming_the_field(tmp_path):
    """CompletionRequest takes the scoring fields, and the batch kind never asked scoring_problem(): a
    line asking for log-probs got 16 generated tokens and none, a token-id prompt reached render(int).
    Each such line is an error naming its field; echo alone is answered, the prompt before the answer."""
    def line(i: int, **body) -> dict:
        return {"custom_id": f"r{i}", "method": "POST", "url": "/v1/completions",
                "body": {"model": "tiny:llama", "prompt": "abc", "max_tokens": 2, "temperature": 0, **body}}

    asks = [({"echo": True, "logprobs": 2, "max_tokens": 0}, "logprobs"), ({"prompt_logprobs": 1}, "prompt_logprobs"),
            ({"max_tokens": 0}, "max_tokens"), ({"prompt": [97, 98]}, "prompt"), ({"logprobs": 1}, "logprobs")]
    lines = write_jsonl(tmp_path / "in.jsonl", [line(0), line(1, echo=True)] + [line(i + 2, **a) for i, (a, _) in
                                                                                 enumerate(asks)])
    result = mentor.run("batch", input=str(lines), endpoint="/v1/completions", output=str(tmp_path / "b"))
    assert result.metrics == {"completed": 2, "failed": len(asks), "total": 2 + len(asks)}
    errors = [json.loads(x) for x in (tmp_path / "b" / "errors.jsonl").read_text().splitlines()]
    for error, (_, field) in zip(errors, asks):
        assert error["error"]["code"] == "invalid_request" and f"field 'body.{field}'" in error["error"]["message"]
    plain, echoed = [json.loads(x)["response"]["body"]["choices"][0]["text"]
                     for x in (tmp_path / "b" / "output.jsonl").read_text().splitlines()]
    assert echoed == "abc" + plain


def test_a_worker_reads_its_order_through_the_job_layer_and_a_damaged_one_is_one_line(tmp_path, capsys):
    """The server writes a job's config with write_job_config and its worker reads it back with
    read_job_config: the same fields, and a damaged file is one line naming it, not a traceback."""
    from mentor.jobs import read_job_config, write_job_config
    from mentor.server import worker

    write_job_config(tmp_path, "tune", {"model": "tiny:llama", "train_steps": 3})
    assert read_job_config(tmp_path) == {"kind": "tune", "model": "tiny:llama", "train_steps": 3}
    (tmp_path / "config.yaml").write_text("- a list, not the job's fields\n")
    assert worker.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{tmp_path / 'config.yaml'} is damaged" in err, err
