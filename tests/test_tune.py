"""Supervised tuning on real tiny models: learning, early stopping, selection, resume, metrics."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import mentor
from conftest import shift_task, write_jsonl
from mentor.cli import main as cli_main
from mentor.errors import MentorError
from mentor.jobs import read_events

TB_NAMES = [f"{m}_{n}" for m in ("train", "eval") for n in ("total_loss", "fraction_of_correct_next_step_preds", "num_predictions")]


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    d = tmp_path_factory.mktemp("task")
    return write_jsonl(d / "train.jsonl", shift_task(400, 0)), write_jsonl(d / "eval.jsonl", shift_task(40, 1))


def eval_rows(out: Path) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "eval_total_loss" in r]


def test_loss_falls_and_metrics_are_recorded(task, tmp_path):
    train, evald = task
    out = tmp_path / "job"
    result = mentor.tune(model="tiny:llama", data=str(train), evaluation_data=str(evald), output=str(out),
                         tuning="full", train_steps=120, batch_size=16, learning_rate_multiplier=100,
                         evaluation_interval=20, early_stopping=False, checkpoint_selection=False)
    rows = eval_rows(out)
    assert [r["step"] for r in rows] == [20, 40, 60, 80, 100, 120]
    assert rows[-1]["eval_total_loss"] < 0.85 * rows[0]["eval_total_loss"]
    assert result.steps_run == 120 and result.best_step is None
    train_rows = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "train_total_loss" in r]
    assert len(train_rows) == 120  # a train row at every step
    assert all(r["train_num_predictions"] > 0 for r in train_rows)

    # the six metric names are in the TensorBoard event files
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert set(TB_NAMES) <= set(acc.Tags()["scalars"])
    assert len(acc.Scalars("eval_total_loss")) == 6

    # what the output folder holds
    for name in ("model/model.safetensors", "model/tokenizer.json", "config.yaml", "curves.png", "README.md", "result.json"):
        assert (out / name).exists(), name
    assert not (out / "checkpoints").exists()
    card = (out / "README.md").read_text()
    assert "tiny:llama" in card and "sha256" in card and "eval_total_loss" in card


def test_checkpoint_selection_returns_best_not_last(task, tmp_path, monkeypatch):
    """The last evaluation is made the worst on every CPU's numerics: before the last step the
    weights are scrambled (a free trajectory may tie its last two evaluations, and did on an
    AVX2-only CPU)."""
    from mentor.training.trainer import MentorTrainer

    step = MentorTrainer.training_step

    def scrambled_before_the_end(self, model, *args, **kwargs):
        loss = step(self, model, *args, **kwargs)
        if self.state.global_step == self.state.max_steps - 1:
            noise = torch.Generator().manual_seed(0)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn(p.shape, generator=noise).to(p) * 2.0)
        return loss

    monkeypatch.setattr(MentorTrainer, "training_step", scrambled_before_the_end)
    train, evald = task
    common = dict(model="tiny:llama", data=str(train), evaluation_data=str(evald), tuning="full", train_steps=200,
                  batch_size=16, learning_rate_multiplier=400, evaluation_interval=20, early_stopping=False)
    best = mentor.tune(output=str(tmp_path / "best"), **common)
    last = mentor.tune(output=str(tmp_path / "last"), checkpoint_selection=False, **common)
    rows = eval_rows(tmp_path / "best")
    accs = {r["step"]: r["eval_fraction_of_correct_next_step_preds"] for r in rows}
    top = max(accs.values())
    assert best.best_step == min(s for s, a in accs.items() if a == top)
    assert best.best_step != 200, "this job is chosen so that the last evaluation is not the best"
    # the returned model is the best checkpoint: re-scoring it gives the best evaluation's numbers
    assert best.metrics["eval_fraction_of_correct_next_step_preds"] == pytest.approx(top)
    assert last.metrics["eval_fraction_of_correct_next_step_preds"] == pytest.approx(accs[200])
    assert last.metrics["eval_fraction_of_correct_next_step_preds"] < top


def test_early_stopping_ends_before_train_steps_on_plateau(task, tmp_path):
    train, evald = task
    # a learning rate far too small to move the model: eval accuracy stays flat
    result = mentor.tune(model="tiny:llama", data=str(train), evaluation_data=str(evald), output=str(tmp_path / "o"),
                         tuning="full", train_steps=300, batch_size=8, learning_rate_multiplier=1e-6,
                         evaluation_interval=10, early_stopping_patience=2)
    assert result.steps_run == 30  # best at step 10, then two evaluations without gain
    assert result.extra["early_stopped"] is True
    # early stopping without keeping the best checkpoint: the same stop, the last model the result
    last = mentor.tune(model="tiny:llama", data=str(train), evaluation_data=str(evald), output=str(tmp_path / "last"),
                       tuning="full", train_steps=300, batch_size=8, learning_rate_multiplier=1e-6,
                       evaluation_interval=10, early_stopping_patience=2, checkpoint_selection=False)
    assert (last.steps_run, last.best_step, last.extra["early_stopped"]) == (30, None, True)


def test_lora_rank_is_what_was_asked(task, tmp_path):
    train, _ = task
    result = mentor.tune(model="tiny:llama", data=str(train), output=str(tmp_path / "o"), tuning="lora",
                         adapter_size=4, train_steps=5, batch_size=4)
    cfg = json.loads((Path(result.model_path) / "adapter_config.json").read_text())
    assert cfg["r"] == 4
    weights = load_file(str(Path(result.model_path) / "adapter_model.safetensors"))
    a_mats = [w for k, w in weights.items() if "lora_A" in k]
    assert a_mats and all(w.shape[0] == 4 for w in a_mats)
    # all linear layers of the architecture carry an adapter (q, k, v, o, gate, up, down in each layer)
    assert len(a_mats) == 7 * 2
    with pytest.raises(Exception, match="adapter_size"):
        mentor.TuneConfig(model="tiny:llama", data="x", output="y", adapter_size=0)
    # at inference the adapter stays an adapter on its base, as the server serves it (many adapters on
    # one base): the same logits as loading base + adapter
    from mentor.models import load_model
    from mentor.serving.predict import Predictor

    predictor = Predictor(result.output)
    assert any("lora" in name for name, _ in predictor.model.named_parameters())
    assert predictor.parameters == sum(p.numel() for p in load_model("tiny:llama").model.parameters())
    unmerged = load_model(result.model_path).model.eval()
    assert any("lora" in name for name, _ in unmerged.named_parameters())
    ids = predictor.tokenizer(["abc def"], return_tensors="pt").input_ids
    with torch.no_grad():
        tuned = unmerged(ids).logits
        assert torch.allclose(predictor.model(ids).logits, tuned, atol=1e-4)
        with unmerged.disable_adapter():  # and the adapter does change them
            assert (unmerged(ids).logits - tuned).abs().max() > 1e-3


def test_seq2seq_model_learns(task, tmp_path):
    train, evald = task
    result = mentor.tune(model="tiny:t5", data=str(train), evaluation_data=str(evald), output=str(tmp_path / "o"),
                         tuning="full", train_steps=60, batch_size=16, learning_rate_multiplier=100,
                         evaluation_interval=20, early_stopping=False, checkpoint_selection=False)
    rows = eval_rows(tmp_path / "o")
    assert rows[-1]["eval_total_loss"] < 0.8 * rows[0]["eval_total_loss"]
    assert isinstance(result.predict("abc", max_new_tokens=5), str)


def test_truncation_counts(tmp_path):
    rows = [{"input_text": "a" * n, "output_text": "b" * m} for n, m in [(5, 3), (50, 3), (60, 40), (5, 40), (10, 10)]]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    result = mentor.tune(model="tiny:llama", data=str(data), output=str(tmp_path / "o"), tuning="full",
                         train_steps=2, batch_size=2, max_input_tokens=30, max_output_tokens=20)
    # chat rendering adds template tokens around the input and after the output; with the byte
    # tokenizer: input = 30 (template) + n bytes, output = m bytes + 2 ("<|im_end|>", "\n")
    counts = result.extra["truncated"]["train"]
    assert counts == {"examples": 5, "truncated_inputs": 2, "truncated_outputs": 2}


def test_resume_after_sigkill_gives_same_weights(task, tmp_path):
    train, evald = task
    args = ["tune", "--model", "tiny:llama-wide", "--data", str(train), "--eval-data", str(evald),
            "--tuning", "full", "--train-steps", "60", "--batch-size", "16", "--learning-rate-multiplier", "50",
            "--evaluation-interval", "10", "--seed", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(out, *, kill_after_checkpoint=None):
        proc = subprocess.Popen([sys.executable, "-m", "mentor.cli", *args, "--output", str(out)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if kill_after_checkpoint is not None:
            marker = out / "checkpoints" / f"checkpoint-{kill_after_checkpoint}" / "trainer_state.json"
            deadline = time.time() + 120
            while not marker.exists() and proc.poll() is None and time.time() < deadline:
                time.sleep(0.005)
            assert proc.poll() is None, "the job ended before it could be killed"
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return proc.returncode
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-2000:]
        return 0

    run(tmp_path / "straight")
    assert run(tmp_path / "killed", kill_after_checkpoint=20) == -signal.SIGKILL
    assert not (tmp_path / "killed" / "result.json").exists()
    # half-written checkpoints (as a kill during saving leaves) must be ignored, not loaded
    (tmp_path / "killed" / "checkpoints" / "checkpoint-999").mkdir()
    half = tmp_path / "killed" / "checkpoints" / "checkpoint-998"
    shutil.copytree(tmp_path / "killed" / "checkpoints" / "checkpoint-20", half)
    (half / "trainer_state.json").write_text('{"global_step": 99')
    run(tmp_path / "killed")
    a = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ra = json.loads((tmp_path / "straight" / "result.json").read_text())
    rb = json.loads((tmp_path / "killed" / "result.json").read_text())
    assert ra["best_step"] == rb["best_step"] and ra["metrics"] == rb["metrics"]
    # one clean curve after resume: every step logged exactly once
    steps = [r["step"] for r in map(json.loads, (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines())
             if "train_total_loss" in r]
    assert steps == sorted(set(steps))
    # the job's state and events tell the story: started, killed while running, resumed, succeeded
    state = json.loads((tmp_path / "killed" / "state.json").read_text())
    assert state["state"] == "succeeded" and state["attempts"] == 2 and state["step"] == 60
    types = [e["type"] for e in read_events(tmp_path / "killed")]
    assert types[:2] == ["started", "training_started"] and types[-1] == "finished"
    assert types.count("started") == 2 and "restarted" in types
    assert [e["step"] for e in read_events(tmp_path / "killed") if e["type"] == "resumed"] == [20]
    # training time counts both runs (up to the checkpoint resumed from), so tokens per second stay true
    assert 0.5 < rb["extra"]["seconds"] / ra["extra"]["seconds"] < 2.0
    assert rb["extra"]["tokens_seen"] == ra["extra"]["tokens_seen"]


def test_yaml_job_file_with_flag_override(task, tmp_path, capsys):
    train, _ = task
    job = tmp_path / "job.yaml"
    job.write_text(f"model: tiny:llama\ndata: {train}\noutput: {tmp_path / 'o'}\ntuning: lora\ntrain_steps: 50\nbatch_size: 2\n")
    assert cli_main(["tune", "--config", str(job), "--train-steps", "3", "--adapter-size", "1"]) == 0
    result = json.loads((tmp_path / "o" / "result.json").read_text())
    assert result["steps_run"] == 3
    assert json.loads((tmp_path / "o" / "model" / "adapter_config.json").read_text())["r"] == 1
    assert "[mentor] done" in capsys.readouterr().out

    job.write_text("model: tiny:llama\nbogus_field: 1\n")
    assert cli_main(["tune", "--config", str(job)]) == 2
    err = capsys.readouterr().err
    assert "bogus_field" in err and str(job) in err


def test_rerun_of_finished_job_is_a_no_op_and_different_job_is_refused(task, tmp_path):
    train, _ = task
    kw = dict(model="tiny:llama", data=str(train), output=str(tmp_path / "o"), train_steps=2, batch_size=2)
    first = mentor.tune(**kw)
    again = mentor.tune(**kw)
    assert again.model_path == first.model_path
    with pytest.raises(MentorError, match="different job.*train_steps"):
        mentor.tune(**{**kw, "train_steps": 3})


def test_predict_cli_text_and_file(task, tmp_path, capsys):
    train, _ = task
    result = mentor.tune(model="tiny:llama", data=str(train), output=str(tmp_path / "o"), tuning="lora",
                         train_steps=3, batch_size=4)
    assert cli_main(["predict", result.output, "abc", "--max-new-tokens", "4"]) == 0
    inp = write_jsonl(tmp_path / "in.jsonl", [{"input_text": "abc"}, {"messages": [{"role": "user", "content": "de"}]}])
    assert cli_main(["predict", result.output, "--input", str(inp), "--output", str(tmp_path / "p.jsonl"),
                     "--max-new-tokens", "4"]) == 0
    rows = [json.loads(l) for l in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all("prediction" in r for r in rows) and rows[0]["input_text"] == "abc"
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"input_text": "ok"}, {"text": "no"}])
    assert cli_main(["predict", result.output, "--input", str(bad), "--output", str(tmp_path / "x.jsonl")]) == 2
    assert f"{bad}:2: field 'input_text'" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()


def test_data_parallel_with_torchrun(task, tmp_path):
    """Scale-out is the Trainer's: two CPU processes (gloo) train one job and write one output."""
    train, evald = task
    out = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run([str(torchrun), "--nproc_per_node", "2", "-m", "mentor.cli", "tune", "--model", "tiny:llama",
                           "--data", str(train), "--eval-data", str(evald), "--output", str(out), "--train-steps", "10",
                           "--evaluation-interval", "5", "--batch-size", "4"],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert result["steps_run"] == 10 and (out / "model" / "adapter_model.safetensors").exists()
    assert json.loads((out / "model" / "mentor_model.json").read_text())["tuning"] == "lora"
    # a step is batch_size examples however many processes share it, and the metrics are of the
    # whole evaluation set: as one process sees them
    one = mentor.tune(model="tiny:llama", data=str(train), evaluation_data=str(evald), output=str(tmp_path / "one"),
                      train_steps=10, evaluation_interval=5, batch_size=4)
    assert result["metrics"]["eval_num_predictions"] == one.metrics["eval_num_predictions"]
    assert result["extra"]["tokens_seen"] == pytest.approx(one.extra["tokens_seen"], rel=0.25)
    # the same examples make each step, so the losses are one process's (to float rounding)
    assert loss_curve(out) == pytest.approx(loss_curve(tmp_path / "one"), rel=1e-3)


def loss_curve(out: Path) -> list[float]:
    rows = map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
    return [r.get("train_total_loss", r.get("eval_total_loss")) for r in rows
            if "train_total_loss" in r or "eval_total_loss" in r]


def test_full_tuning_with_accelerate_launch_gives_one_process_losses(task, tmp_path):
    """The shipped CPU configuration (examples/accelerate/ddp-cpu.yaml) with `accelerate launch`."""
    train, evald = task
    config = Path(__file__).resolve().parents[1] / "examples" / "accelerate" / "ddp-cpu.yaml"
    args = ["--model", "tiny:llama", "--data", str(train), "--eval-data", str(evald), "--train-steps", "6",
            "--evaluation-interval", "3", "--batch-size", "4", "--tuning", "full"]
    accelerate = Path(sys.executable).with_name("accelerate")
    proc = subprocess.run([str(accelerate), "launch", "--config_file", str(config), "-m", "mentor.cli", "tune", *args,
                           "--output", str(tmp_path / "two")], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert cli_main(["tune", *args, "--output", str(tmp_path / "one")]) == 0
    assert len(loss_curve(tmp_path / "two")) == 6 + 2
    assert loss_curve(tmp_path / "two") == pytest.approx(loss_curve(tmp_path / "one"), rel=1e-3)


@pytest.mark.parametrize("rows, learned", [
    ([{"messages": [{"role": "user", "content": "abc"}, {"role": "assistant", "content": "bcd"}]}], "chat"),
    ([{"input_text": "abc", "output_text": "bcd"}], "text"),
    # a file mixing both is trained as conversations throughout, as its warning says
    ([{"input_text": "abc", "output_text": "bcd"},
      {"messages": [{"role": "user", "content": "abc"}, {"role": "assistant", "content": "bcd"}]}], "chat"),
])
def test_a_plain_prompt_is_rendered_as_the_model_learned_prompts(rows, learned, tmp_path):
    """Without a chat template, conversations train as "user: ...\\nassistant: " and text rows as the
    bare input: `mentor eval` and `predict` with an input_text render it the way training did."""
    from mentor.serving.predict import Predictor

    data = write_jsonl(tmp_path / "d.jsonl", rows * 4)
    mentor.tune(model="tiny:llama", data=str(data), output=str(tmp_path / "o"), chat_template="never", train_steps=1,
                batch_size=4, tuning="full")
    prompt = Predictor(str(tmp_path / "o")).render("xyz")
    assert prompt == {"chat": "user: xyz\nassistant: ", "text": "xyz"}[learned]


def test_a_loss_gone_to_nan_fails_the_job_naming_the_step(tmp_path):
    """A rate the config refuses (here forced past validation, as any rate that diverges would be)
    trains NaN weights from its second step: the job fails there, with no model handed over."""
    from mentor.jobs import read_state
    from mentor.training.config import TuneConfig

    data = write_jsonl(tmp_path / "d.jsonl", shift_task(16, 0))
    cfg = TuneConfig(model="tiny:llama", data=str(data), output=str(tmp_path / "o"), train_steps=6, batch_size=4)
    cfg.learning_rate_multiplier = 1e30  # set after validation, which refuses it
    with pytest.raises(MentorError, match=r"loss \(train_total_loss\) became nan at step 2"):
        mentor.run("tune", cfg)
    state = read_state(tmp_path / "o")
    assert state["state"] == "failed" and "at step 2" in state["error"]["message"] and state["step"] == 2
    assert not (tmp_path / "o" / "result.json").exists() and not (tmp_path / "o" / "model").exists()
    assert "diverged" in [e["type"] for e in read_events(tmp_path / "o")]


def test_token_limits_beyond_the_models_context_are_cut_to_it_and_said(tmp_path, caplog, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", [{"input_text": "a" * 1500, "output_text": "b"},
                                              {"input_text": "abc", "output_text": "bcd"}])
    with caplog.at_level("WARNING", logger="mentor"):  # the defaults, 7168 and 1024, against tiny:llama's 2048
        result = mentor.tune(model="tiny:llama", data=str(data), output=str(tmp_path / "o"), train_steps=1,
                             batch_size=2)
    assert "do not fit the model's context of 2048 tokens: using 1024 and 1024" in caplog.text
    assert result.extra["token_limits"] == {"max_input_tokens": 1024, "max_output_tokens": 1024}
    assert result.extra["truncated"]["train"]["truncated_inputs"] == 1
    assert json.loads((tmp_path / "o" / "model" / "mentor_model.json").read_text())["max_input_tokens"] == 1024
    # a seed numpy cannot take is refused with the job's parameters, before anything starts
    assert cli_main(["tune", "--model", "tiny:llama", "--data", str(data), "--output", str(tmp_path / "s"),
                     "--seed", "-1"]) == 2
    err = capsys.readouterr().err
    assert "field 'seed'" in err and "Traceback" not in err and not (tmp_path / "s").exists()
