"""Reinforcement fine-tuning (the `reinforcement` kind: GRPO with a grader's rewards) on real tiny
models.

The starting policy is tiny:llama tuned to answer "yes ..." or "no ..." about half of the time;
the grader (OpenAI's string_check, its reference read from each line) rewards answers holding the
line's wanted word. Every measurement is made by this file's own code on held-out prompts, not read
back from the recipe.
"""

import json
import random
import subprocess
import sys

import pytest
import torch

import mentor
from conftest import sigkill_when, write_jsonl
from mentor.errors import DataValidationError, MentorError

YES = ["yes", "oh yes", "i think yes", "well yes sure"]
NO = ["no", "oh no", "i think not", "well no thanks"]
WANTS_YES = {"type": "string_check", "name": "says yes", "input": "{{sample.output_text}}",
             "reference": "{{item.wanted}}", "operation": "like"}


def word(rng) -> str:
    return "".join(rng.choice("abcdefgh") for _ in range(rng.randint(3, 6)))


def prompts(n: int, seed: int) -> list[dict]:
    """OpenAI's reinforcement lines: messages ending with a user turn, and what the grader reads."""
    rng = random.Random(seed)
    return [{"messages": [{"role": "user", "content": f"answer {word(rng)}"}], "wanted": "yes"} for _ in range(n)]


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    d = tmp_path_factory.mktemp("rft")
    rng = random.Random(0)
    sft = [{"input_text": f"answer {word(rng)}", "output_text": rng.choice(YES if i % 2 else NO)} for i in range(400)]
    mentor.tune(model="tiny:llama", data=str(write_jsonl(d / "sft.jsonl", sft)), output=str(d / "start"),
                tuning="full", train_steps=200, batch_size=16, learning_rate_multiplier=100, early_stopping=False,
                checkpoint_selection=False)
    return {"start": str(d / "start"), "train": write_jsonl(d / "train.jsonl", prompts(96, 1)),
            "valid": write_jsonl(d / "valid.jsonl", prompts(16, 2)),
            "held_out": [p["messages"][0]["content"] for p in prompts(24, 3)]}


def yes_rate(model_ref: str, texts: list[str], samples: int = 8) -> float:
    from mentor.serving.predict import Predictor

    predictor = Predictor(model_ref)
    torch.manual_seed(0)
    answers = predictor.predict([t for t in texts for _ in range(samples)], temperature=1.0, max_new_tokens=12,
                                batch_size=64)
    return sum("yes" in a for a in answers) / len(answers)


def test_reinforcement_raises_the_graders_reward_on_held_out_prompts(task, tmp_path):
    out = tmp_path / "job"
    result = mentor.run("reinforcement", model=task["start"], data=str(task["train"]),
                        evaluation_data=str(task["valid"]), grader=WANTS_YES, output=str(out), tuning="full",
                        train_steps=30, batch_size=8, num_generations=8, learning_rate_multiplier=300,
                        max_completion_tokens=12, evaluation_interval=10, eval_samples=4, early_stopping=False)
    before, after = yes_rate(task["start"], task["held_out"]), yes_rate(result.model_path, task["held_out"])
    assert after >= before + 0.25, (before, after)
    # the kind's metrics, under the names OpenAI's reinforcement jobs use (eval_ for valid_)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 0 and "eval_reward_mean" in rows[0]  # the starting point, before the first step
    train_rows = [r for r in rows if "train_reward_mean" in r]
    assert len(train_rows) == 30 and all({"train_kl", "train_response_length_mean"} <= set(r) for r in train_rows)
    assert all(r["train_grader_error_rate"] == 0 for r in train_rows)
    evals = {r["step"]: r["eval_reward_mean"] for r in rows if "eval_reward_mean" in r and r["step"]}
    assert sorted(evals) == [10, 20, 30] and result.best_step == max(evals, key=lambda s: (evals[s], -s))
    assert (out / "curves.png").exists() and not (out / "checkpoints").exists()
    record = json.loads((out / "model" / "mentor_model.json").read_text())
    assert (record["kind"], record["base_model"]) == ("reinforcement", task["start"])
    assert result.extra["graded_samples"] >= 30 * 64 and result.extra["grader_errors"] == 0


def test_a_grader_that_fails_on_samples_scores_them_zero_and_the_job_goes_on(task, tmp_path):
    """A python grader that raises on every other answer: those score 0 and are counted, never kill the job."""
    grader = {"type": "python", "name": "flaky", "source": (
        "def grade(sample, item):\n"
        "    if len(sample['output_text']) % 2:\n"
        "        raise ValueError('odd length')\n"
        "    return 1.0 if item['wanted'] in sample['output_text'] else 0.0\n")}
    result = mentor.run("reinforcement", model=task["start"], data=str(task["train"]), grader=grader,
                        output=str(tmp_path / "job"), train_steps=2, batch_size=4, num_generations=4,
                        max_completion_tokens=8)
    assert result.steps_run == 2 and 0 < result.extra["grader_errors"] < result.extra["graded_samples"] == 2 * 16
    rows = [json.loads(line) for line in (tmp_path / "job" / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("train_grader_error_rate", 0) > 0 for r in rows)


def test_bad_data_and_bad_graders_are_refused_before_any_model_loads(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", prompts(4, 0))
    bad = write_jsonl(tmp_path / "bad.jsonl", [
        prompts(1, 0)[0],
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ho"}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x.png"}}]}]},
        {"wanted": "yes"},
    ])
    job = dict(model="no-such-model-anywhere", output=str(tmp_path / "job"), grader=WANTS_YES)
    with pytest.raises(DataValidationError) as err:
        mentor.run("reinforcement", data=str(bad), **job)
    text = str(err.value)
    assert f"{bad}:2" in text and "must end with a user turn" in text
    assert f"{bad}:3" in text and "messages[0].content[0]" in text and "image_url" in text
    assert f"{bad}:4" in text and "input_text" in text
    # a template naming a field the data does not have: refused with the field, before the model is looked up
    missing = {**WANTS_YES, "reference": "{{item.expected}}"}
    with pytest.raises(MentorError, match="expected"):
        mentor.run("reinforcement", data=str(good), **{**job, "grader": missing})
    with pytest.raises(MentorError, match="field 'source'"):
        mentor.run("reinforcement", data=str(good), **{**job, "grader": {"type": "python", "name": "x",
                                                                          "source": "def grade(:\n"}})
    grader_file = tmp_path / "grader.json"
    grader_file.write_text(json.dumps({**WANTS_YES, "operation": "sounds_like"}))
    with pytest.raises(MentorError, match="grader.json: field 'operation'"):
        mentor.run("reinforcement", data=str(good), **{**job, "grader": str(grader_file)})


def test_a_killed_reinforcement_job_resumes_from_its_last_checkpoint(task, tmp_path):
    out = tmp_path / "job"
    grader = tmp_path / "grader.json"
    grader.write_text(json.dumps(WANTS_YES))
    argv = [sys.executable, "-m", "mentor.cli", "-q", "run", "reinforcement", "--model", task["start"], "--data",
            str(task["train"]), "--grader", str(grader), "--output", str(out), "--train-steps", "8",
            "--batch-size", "4", "--num-generations", "4", "--max-completion-tokens", "8",
            "--evaluation-interval", "2"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sigkill_when(proc, lambda: (out / "checkpoints" / "checkpoint-4" / "trainer_state.json").exists(), 240,
                 "the second checkpoint")
    result = mentor.run("reinforcement", model=task["start"], data=str(task["train"]),
                        grader=str(grader), output=str(out), train_steps=8, batch_size=4, num_generations=4,
                        max_completion_tokens=8, evaluation_interval=2)
    assert result.steps_run == 8
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    resumed = [e for e in events if e["type"] == "resumed"]
    assert resumed and resumed[0]["step"] >= 4
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 8 and (out / "model" / "mentor_model.json").exists()


def test_openais_reinforcement_method_through_the_server(task, tmp_path):
    """OpenAI's reinforcement method, sent by the official client to a real `mentor server`: its
    hyperparameters mapped (compute_multiplier to answers per prompt, eval_interval, eval_samples,
    n_epochs to steps), a bad grader refused at creation naming its field, the job trained and its
    checkpoints carrying the validation reward under OpenAI's name."""
    import openai
    from server_fixtures import Server

    srv = Server(tmp_path / "data", "--allowed-data-roots", json.dumps([str(tmp_path), task["start"]])).start()
    try:
        c = srv.client()
        train = c.files.create(file=open(task["train"], "rb"), purpose="fine-tune").id
        valid = c.files.create(file=open(task["valid"], "rb"), purpose="fine-tune").id
        method = {"type": "reinforcement", "reinforcement": {"grader": WANTS_YES, "hyperparameters": {
            "n_epochs": 1, "batch_size": 32, "compute_multiplier": 1, "eval_interval": 1, "eval_samples": 2,
            "learning_rate_multiplier": 100, "reasoning_effort": "default"}}}
        for wrong, message in (({**WANTS_YES, "reference": "{{item.expected}}"}, "expected"),
                               ({**WANTS_YES, "type": "label_model"}, "label_model"),
                               ({"type": "score_model", "name": "judge", "model": "m@https://judge.example.com/v1",
                                 "input": [{"role": "user", "content": "{{sample.output_text}}"}]}, "judge")):
            with pytest.raises(openai.BadRequestError, match=message) as err:
                c.fine_tuning.jobs.create(model=task["start"], training_file=train, method={
                    "type": "reinforcement", "reinforcement": {"grader": wrong}})
            assert err.value.body["param"].startswith("method.reinforcement.grader")
        with pytest.raises(openai.BadRequestError, match="reasoning_effort"):
            c.fine_tuning.jobs.create(model=task["start"], training_file=train, method={
                "type": "reinforcement", "reinforcement": {"grader": WANTS_YES,
                                                           "hyperparameters": {"reasoning_effort": "high"}}})
        # mentor's own body: a grader named by path is read only inside the folders the server may read
        with pytest.raises(openai.BadRequestError, match="outside the folders") as err:
            c.post("/mentor/jobs", cast_to=object, body={"kind": "reinforcement", "config": {
                "model": task["start"], "data": train, "grader": "/etc/hostname"}})
        assert err.value.body["param"] == "grader"
        job = c.fine_tuning.jobs.create(model=task["start"], training_file=train, validation_file=valid,
                                        method=method, suffix="rft")
        job = srv.wait(job.id, timeout=600)
        assert job.status == "succeeded", job.error
        config = job.model_extra["config"]
        assert (config["train_steps"], config["num_generations"], config["evaluation_interval"],
                config["eval_samples"]) == (3, 4, 1, 2)  # 96 prompts in batches of 32; 4 answers each
        assert job.method.type == "reinforcement" and job.method.reinforcement.grader.name == "says yes"
        assert job.method.reinforcement.hyperparameters.compute_multiplier == 1
        checkpoints = c.fine_tuning.jobs.checkpoints.list(job.id).data
        assert [k.step_number for k in checkpoints] == [3, 2, 1]
        assert all(0 <= k.metrics.model_extra["valid_reward_mean"] <= 1 for k in checkpoints)
        answer = c.chat.completions.create(model=job.fine_tuned_model, max_tokens=4,
                                           messages=[{"role": "user", "content": "answer abc"}])
        assert isinstance(answer.choices[0].message.content, str)
    finally:
        srv.stop()


def test_every_validation_samples_the_same_draws(task, tmp_path):
    """Checkpoints are compared on the same sampled answers: a model that does not move (a learning
    rate of ~1e-11) scores the same at every validation, where unseeded sampling at temperature 1
    scored it differently each time."""
    mentor.run("reinforcement", model=task["start"], data=str(task["train"]), evaluation_data=str(task["valid"]),
               grader=WANTS_YES, output=str(tmp_path / "job"), train_steps=3, batch_size=4, num_generations=2,
               learning_rate_multiplier=1e-6, max_completion_tokens=8, evaluation_interval=1, eval_samples=2,
               early_stopping=False)
    rows = [json.loads(line) for line in (tmp_path / "job" / "metrics.jsonl").read_text().splitlines()]
    rewards = [r["eval_reward_mean"] for r in rows if "eval_reward_mean" in r]
    assert len(rewards) == 4 and len(set(rewards)) == 1, rewards
