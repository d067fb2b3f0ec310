"""Distilling step-by-step end to end on tiny real models, with recorded and live teachers."""

import json
import random
import re
from pathlib import Path

import pytest
import yaml

import mentor
from conftest import write_jsonl
from mentor.cli import main as cli_main
from mentor.distill.config import DistillConfig
from mentor.errors import DataValidationError, MentorError


def arithmetic_rows(n: int, seed: int, wrong_every: int = 0) -> list[dict]:
    """Word-free sums with a recorded chain-of-thought teacher that runs on like real teachers do.
    Every `wrong_every`-th teacher answer is wrong, and a few are unparseable."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        t = a + b + (1 if wrong_every and i % wrong_every == 0 else 0)
        completion = f"We add {a} and {b}. {a} + {b} = {t}. The answer is ({a} + {b + t - a - b}).\n\nQ: What is 2 + 2?\nA: 2 + 2"
        if i % 17 == 5:
            completion = "I am not sure what to do here."
        rows.append({"input_text": f"Problem {seed}.{i}: what is {a} + {b}?", "output_text": str(a + b), "equation": f"( {a} + {b} )",
                     "teacher_completion": completion})
    return rows


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("distill")
    return {
        "train": write_jsonl(d / "train.jsonl", arithmetic_rows(120, 0, wrong_every=5)),
        "eval": write_jsonl(d / "eval.jsonl", arithmetic_rows(12, 1)),
        "test": write_jsonl(d / "test.jsonl", arithmetic_rows(16, 2)),
    }


def distill(cfg):
    return mentor.run(cfg.method, cfg)


def metric_rows(out: Path) -> list[dict]:
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]


def base_job(data, out, **kw):
    job = dict(model="tiny:llama", teacher="recorded:field=teacher_completion", data=str(data["train"]),
               evaluation_data=str(data["eval"]), test_data=str(data["test"]), output=str(out), task="math",
               label_field="equation", tuning="full", train_steps=40, batch_size=8, learning_rate_multiplier=60,
               evaluation_interval=20, early_stopping=False)
    job.update(kw)
    return DistillConfig(**job)


def test_step_by_step_trains_both_tasks_and_reports(data, tmp_path):
    out = tmp_path / "sbs"
    result = distill(base_job(data, out))
    rows = metric_rows(out)
    train = [r for r in rows if "train_label_loss" in r]
    assert len(train) == 40 and all("train_rationale_loss" in r for r in train)
    for name in ("train_label_loss", "train_rationale_loss"):
        first = sum(r[name] for r in train[:5]) / 5
        last = sum(r[name] for r in train[-5:]) / 5
        assert last < 0.8 * first, name
    # the total is the alpha mix of the two
    r = train[-1]
    assert r["train_total_loss"] == pytest.approx(0.5 * r["train_label_loss"] + 0.5 * r["train_rationale_loss"], rel=1e-5)
    # 120 rows: 8 unparseable (i % 17 == 5) are left out, never trained on
    assert result.extra["examples"] == 120 - len([i for i in range(120) if i % 17 == 5])
    assert result.extra["dropped"] == {"teacher unparseable": 7}
    # the teacher's labels, the report and the student's label-only answers
    labeled = [json.loads(l) for l in (out / "teacher_labels.jsonl").read_text().splitlines()]
    assert labeled[0]["rationale"].startswith("We add") and "Q:" not in labeled[0]["rationale"]
    report = (out / "report" / "report.md").read_text()
    assert "student: step-by-step" in report and "teacher" in report and (out / "report" / "report.png").exists()
    meta = json.loads((out / "model" / "mentor_model.json").read_text())
    assert meta["task_prefix"] == "[label] " and meta["rationale_prefix"] == "[rationale] "
    assert "student: step-by-step" in result.extra["test"]
    # the tokens the rationale task costs are counted
    assert result.extra["tokens_seen"] > 0


def test_with_rationale_student_reasons_then_answers(data, tmp_path):
    out = tmp_path / "cot"
    cfg = base_job(data, out, with_rationale=True, mask_wrong_rationales=True, train_steps=200)
    assert cfg.rationale_format == "rationale+label"  # reasoning first needs rationales that end in the answer
    result = distill(cfg)
    tests = result.extra["test"]
    label_only, reasoned = tests["student: step-by-step"], tests["student: step-by-step, rationale then label"]
    assert "answered_from_rationale" not in label_only
    # the student learned to close its own rationale with the answer sentence, and that answer is the label
    assert reasoned["answered_from_rationale"] > 0.5
    assert reasoned["tokens_per_example"] > 3 * label_only["tokens_per_example"]
    preds = [json.loads(l) for l in (out / "report" / "predictions-student__step-by-step__rationale_then_label.jsonl")
             .read_text().splitlines()]
    from_rationale = [p for p in preds if p["prediction"] is None]
    assert from_rationale and all("The answer is" in p["rationale"] for p in from_rationale)
    assert "rationale then label" in (out / "report" / "report.md").read_text()


def test_seq2seq_student_full_and_lora(data, tmp_path):
    """A T5-style student trains on both tasks (full and LoRA) and stops after its answer. (Telling the
    two task prefixes apart takes this tiny T5 about 1,000 steps, too slow to check here.)"""
    full = distill(base_job(data, tmp_path / "full", model="tiny:t5", train_steps=300, evaluation_data=None))
    train = [r for r in metric_rows(tmp_path / "full") if "train_label_loss" in r]
    for name in ("train_label_loss", "train_rationale_loss"):
        assert sum(r[name] for r in train[-10:]) / 10 < 0.2 * sum(r[name] for r in train[:10]) / 10, name
    label_only = full.extra["test"]["student: step-by-step"]
    # every answer is a well-formed equation of 9 bytes, ended by eos rather than max_new_tokens
    assert label_only["answered"] == 1.0 and label_only["tokens_per_example"] <= 10
    lora = distill(base_job(data, tmp_path / "lora", model="tiny:t5", tuning="lora", train_steps=30,
                            evaluation_data=None, test_data=None))
    assert (tmp_path / "lora" / "model" / "adapter_config.json").exists() and lora.extra["tokens_seen"] > 0
    train = [r for r in metric_rows(tmp_path / "lora") if "train_rationale_loss" in r]
    assert train[-1]["train_rationale_loss"] < train[0]["train_rationale_loss"]


def test_alpha_one_is_label_only_and_tokens_show_the_rationale_cost(data, tmp_path):
    both = distill(base_job(data, tmp_path / "both", train_steps=10, test_data=None, evaluation_data=None))
    label_only = distill(base_job(data, tmp_path / "label", train_steps=10, alpha=1.0, test_data=None, evaluation_data=None))
    assert not any("train_rationale_loss" in r for r in metric_rows(tmp_path / "label"))
    assert both.extra["tokens_seen"] > 2 * label_only.extra["tokens_seen"]


def test_baselines_and_filtering(data, tmp_path):
    ft = distill(base_job(data, tmp_path / "ft", method="finetune", train_steps=5, test_data=None))
    assert ft.extra["examples"] == 120 and ft.extra["teacher_stats"] is None
    std = distill(base_job(data, tmp_path / "std", method="standard", train_steps=5, test_data=None))
    assert std.extra["examples"] == 120 - 7
    labeled = [json.loads(l) for l in (tmp_path / "std" / "teacher_labels.jsonl").read_text().splitlines()]
    wrong = [r for r in labeled if r["teacher_agrees"] is False]
    assert len(wrong) == len([i for i in range(120) if i % 5 == 0 and i % 17 != 5])
    filt = distill(base_job(data, tmp_path / "filt", filter_disagreements=True, train_steps=5, test_data=None))
    assert filt.extra["dropped"]["teacher disagrees with gold"] == len(wrong)
    assert filt.extra["examples"] == 120 - 7 - len(wrong)
    masked = distill(base_job(data, tmp_path / "mask", mask_wrong_rationales=True, train_steps=5, test_data=None))
    # masking keeps every gold-labelled example for the label task, as fine-tuning does; the rationale task
    # skips the 7 unparseable completions and the wrong ones
    assert masked.extra["examples"] == 120 and masked.extra["masked_rationales"] == len(wrong) + 7
    assert "dropped" not in masked.extra or not masked.extra["dropped"]


def test_unlabeled_data_uses_teacher_labels(data, tmp_path):
    rows = [{k: v for k, v in r.items() if k not in ("output_text", "equation")} for r in arithmetic_rows(30, 3)]
    path = write_jsonl(tmp_path / "unlabeled.jsonl", rows)
    unlabeled = {**data, "train": path}
    result = distill(base_job(unlabeled, tmp_path / "o", evaluation_data=None, test_data=None, train_steps=3))
    assert result.extra["examples"] == 30 - 2  # rows 5 and 22 are unparseable
    with pytest.raises(MentorError, match="no training examples"):
        distill(base_job(unlabeled, tmp_path / "o2", evaluation_data=None, test_data=None,
                         method="finetune", train_steps=3))


def test_live_local_teacher_and_label_command(data, tmp_path, capsys):
    rows = [{"input_text": f"What is {i} + 1?", "output_text": str(i + 1)} for i in range(6)]
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "labeled.jsonl"
    assert cli_main(["label", "--teacher", "hf:tiny:llama", "--data", str(path), "--output", str(out), "--task", "math"]) == 0
    labeled = [json.loads(l) for l in out.read_text().splitlines()]
    assert len(labeled) == 6 and all("teacher_completion" in r and "parse_ok" in r for r in labeled)
    assert (tmp_path / "teacher_cache.sqlite").exists()
    # the untrained tiny teacher writes nonsense: it is counted as unparseable, not trained on
    first = capsys.readouterr().out
    assert "6 calls, 0 cache hits" in first and "parsed 0/6" in first
    # a second run is answered from the cache
    assert cli_main(["label", "--teacher", "hf:tiny:llama", "--data", str(path), "--output", str(out), "--task", "math"]) == 0
    assert "0 calls, 6 cache hits" in capsys.readouterr().out


def test_bad_rows_and_missing_teacher(tmp_path, data):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"input_text": "ok"}, {"input_text": ""}, "not json"])
    with pytest.raises(DataValidationError) as info:
        distill(base_job({**data, "train": bad}, tmp_path / "o"))
    msg = str(info.value)
    assert f"{bad}:2: field 'input_text'" in msg and f"{bad}:3: field '(line)'" in msg
    with pytest.raises(MentorError, match="needs a --teacher"):
        distill(base_job(data, tmp_path / "o3", teacher=None))
    # a list where an answer's text belongs, choices that are not a list, a test row without its
    # answer: each named, never compared one way here and dropped another way there
    odd = write_jsonl(tmp_path / "odd.jsonl", [{"input_text": "a", "equation": [4], "teacher_completion": "4"},
                                               {"input_text": "b", "choices": "red, blue", "teacher_completion": "x"}])
    with pytest.raises(DataValidationError) as info:
        distill(base_job({**data, "train": odd}, tmp_path / "o4"))
    assert f"{odd}:1: field 'equation': must be text or a number, got list" in str(info.value)
    assert f"{odd}:2: field 'choices': must be a list of option texts" in str(info.value)
    no_answer = write_jsonl(tmp_path / "test.jsonl", [{"input_text": "What is 1 + 1?", "output_text": "2"},
                                                      {"input_text": "What is 2 + 2?"}])
    with pytest.raises(DataValidationError, match=f"{no_answer}:2: field 'output_text': missing"):
        distill(base_job({**data, "test": no_answer}, tmp_path / "o5"))
    # fine-tuning has no teacher to label evaluation rows that lack their label
    with pytest.raises(DataValidationError, match=f"{no_answer}:2: field 'equation': missing"):
        distill(base_job({**data, "eval": no_answer}, tmp_path / "o6", method="finetune", teacher=None))


def test_distill_cli_and_predict_with_prefix(data, tmp_path, capsys):
    out = tmp_path / "cli"
    code = cli_main(["distill", "--student", "tiny:llama", "--teacher", "recorded:field=teacher_completion",
                     "--data", str(data["train"]), "--label-field", "equation", "--task", "math",
                     "--mask-wrong-rationales", "--alpha", "0.8", "--rationale-format", "rationale+label",
                     "--train-steps", "3", "--batch-size", "4", "--output", str(out)])  # the README's recipe
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    assert result["method"] == "step-by-step" and result["tuning"] == "lora"
    assert result["extra"]["masked_rationales"] > 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["alpha"] == 0.8 and saved["rationale_format"] == "rationale+label" and saved["mask_wrong_rationales"]
    assert cli_main(["distill", "--method", "logit", "--student", "tiny:llama-small", "--teacher", "tiny:llama",
                     "--data", str(data["train"]), "--train-steps", "2", "--batch-size", "4",
                     "--output", str(tmp_path / "logit")]) == 0
    assert json.loads((tmp_path / "logit" / "result.json").read_text())["steps_run"] == 2
    assert cli_main(["predict", str(out), "What is 2 + 3?", "--max-new-tokens", "4"]) == 0
    from mentor.serving.predict import Predictor

    p = Predictor(str(out))
    assert p.render("x").endswith("[label] x<|im_end|>\n<|im_start|>assistant\n")


def test_selection_and_early_stopping_on_the_task_metric(data, tmp_path):
    """--selection-metric task: every evaluation generates the student's answers for the eval set and
    scores them; the chosen checkpoint is the best score's, and early stopping watches the same score."""
    out = tmp_path / "task"
    result = distill(base_job(data, out, selection_metric="task", train_steps=120, evaluation_interval=20,
                              mask_wrong_rationales=True))
    scores = {}
    for r in metric_rows(out):  # the first evaluation at each step (the last one re-scores the chosen model)
        if "eval_task_score" in r:
            scores.setdefault(r["step"], r["eval_task_score"])
    assert sorted(scores) == [20, 40, 60, 80, 100, 120] and all(0 <= v <= 1 for v in scores.values())
    assert max(scores.values()) > 0  # the student learns to answer at all
    best = max(scores.values())
    assert result.best_step == min(s for s, v in scores.items() if v == best)  # the first best score's checkpoint

    stopped = tmp_path / "stop"
    result = distill(base_job(data, stopped, selection_metric="task", train_steps=200, evaluation_interval=20,
                              early_stopping=True, early_stopping_patience=2, mask_wrong_rationales=True))
    series = [(r["step"], r["eval_task_score"]) for r in metric_rows(stopped) if "eval_task_score" in r]
    best, stale, expected = -1.0, 0, None
    for step, value in series:  # transformers' EarlyStoppingCallback rule, on the task score
        if value > best + 0.001:
            best, stale = value, 0
        else:
            stale += 1
        if stale >= 2:
            expected = step
            break
    assert expected is not None and result.steps_run == expected < 200
    assert DistillConfig(model="m", data="d", output="o").selection_metric == "next_token_accuracy"


def test_validation_split_held_out_of_the_training_rows(data, tmp_path):
    """Without evaluation data, validation_split holds rows out (the same ones for every seed):
    they are evaluated on and never trained on."""
    out = tmp_path / "val"
    result = distill(base_job(data, out, evaluation_data=None, validation_split=0.1, train_steps=20,
                              evaluation_interval=10, method="finetune", teacher=None))
    held = [json.loads(l) for l in (out / "validation.jsonl").read_text().splitlines()]
    assert len(held) == 12 and result.extra["examples"] == 120 - 12
    assert any("eval_total_loss" in r for r in metric_rows(out)) and result.best_step in (10, 20)
    again = tmp_path / "val2"
    distill(base_job(data, again, evaluation_data=None, validation_split=0.1, train_steps=2, seed=7,
                     method="finetune", teacher=None))
    assert (again / "validation.jsonl").read_text() == (out / "validation.jsonl").read_text()


def test_unlabeled_data_with_a_live_teacher_end_to_end(tmp_path, caplog):
    """`mentor distill` on inputs without labels, the teacher a live OpenAI-compatible server over HTTP:
    its parsed labels and rationales are what the student learns, the rows it gave no answer for are
    left out, and the report says how many."""
    from teacher_server import TeacherServer

    rows = [{"input_text": f"Problem {i}: what is {i % 9 + 1} + {i % 5 + 2}?"} for i in range(36)]
    for i in (4, 11, 25):
        rows[i]["input_text"] = f"Problem {i}: an unclear question about apples."
    train = write_jsonl(tmp_path / "unlabeled.jsonl", rows)
    test = write_jsonl(tmp_path / "test.jsonl", [{"input_text": f"What is {a} + 3?", "output_text": str(a + 3)}
                                                 for a in range(6)])
    out = tmp_path / "live"
    with TeacherServer() as server:
        server.state.backend = "sums"
        code = cli_main(["distill", "--method", "step-by-step", "--teacher", f"openai:sums@{server.base_url}",
                         "--student", "tiny:llama", "--data", str(train), "--test-data", str(test), "--task", "math",
                         "--train-steps", "4", "--batch-size", "8", "--output", str(out)])
        asked = server.state.total_requests
    assert code == 0 and asked == 36 + 6  # every training and test input asked once
    labeled = [json.loads(l) for l in (out / "teacher_labels.jsonl").read_text().splitlines()]
    parsed = [l for l in labeled if l["parse_ok"]]
    assert len(parsed) == 33 and all(l["teacher_label"] is None for l in labeled if not l["parse_ok"])
    for item in parsed:  # the teacher's own answers, not gold ones (there are none)
        a, b = (int(x) for x in re.findall(r"what is (\d+) \+ (\d+)", item["input_text"])[0])
        assert item["teacher_label"] == str(a + b) and item["rationale"].startswith(f"We start with {a}")
    result = json.loads((out / "result.json").read_text())
    assert result["extra"]["examples"] == 33 and result["extra"]["dropped"] == {"teacher unparseable": 3}
    report = (out / "report" / "report.md").read_text()
    assert "parsed 33/36 completions" in report and "teacher (openai:sums@" in report
    assert "33 teacher-labelled examples" in caplog.text and "at least 1,000 unlabeled inputs" in caplog.text


def test_one_teacher_cache_shared_by_label_and_distill_pays_once(tmp_path, capsys):
    """`mentor label` then `mentor distill` (or a sweep of jobs) on one --teacher-cache: the second
    job asks the teacher nothing it already answered."""
    from teacher_server import TeacherServer

    rows = [{"input_text": f"what is {i} + {i + 2}?", "output_text": str(2 * i + 2)} for i in range(12)]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    cache = tmp_path / "shared" / "teacher.sqlite"
    with TeacherServer() as server:
        server.state.backend = "sums"
        spec = f"openai:sums@{server.base_url}"
        assert cli_main(["label", "--teacher", spec, "--data", str(train), "--output", str(tmp_path / "labeled.jsonl"),
                         "--teacher-cache", str(cache)]) == 0
        assert server.state.total_requests == 12 and cache.exists()
        assert cli_main(["distill", "--teacher", spec, "--student", "tiny:llama", "--data", str(train),
                         "--teacher-cache", str(cache), "--train-steps", "2", "--batch-size", "4",
                         "--output", str(tmp_path / "student")]) == 0
        assert server.state.total_requests == 12  # every training prompt came from the shared cache
    assert not (tmp_path / "student" / "teacher_cache.sqlite").exists()
    assert "0 calls, 12 cache hits" in capsys.readouterr().out


def test_label_reads_teachers_that_run_on_in_the_prompts_format(tmp_path, capsys):
    """`mentor label --task nli` with a recorded teacher whose completions run on into invented
    examples in the prompt's format (the corpus's NLI run-ons, and a user format's own fields):
    every completion is read, as the first block's answer, and its rationale kept."""
    corpus = [json.loads(line) for line in (Path(__file__).parent / "data" / "cot_corpus" /
                                            "runon_prompt_format.jsonl").read_text().splitlines()]
    nli = [r for r in corpus if r["task"] == "nli" and r["expected"] and not r.get("labels")]
    rows = [{"input_text": f"Premise: p{i}\nHypothesis: h{i}", "teacher_completion": r["completion"]}
            for i, r in enumerate(nli)]
    data = write_jsonl(tmp_path / "nli.jsonl", rows)
    out = tmp_path / "labeled.jsonl"
    assert cli_main(["label", "--teacher", "recorded:field=teacher_completion", "--data", str(data),
                     "--output", str(out), "--task", "nli"]) == 0
    labeled = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["teacher_label"] for r in labeled] == [r["expected"] for r in nli]
    assert all(r["parse_ok"] and r["rationale"] and "Premise:" not in r["rationale"].split("\n")[-1] for r in labeled)
    assert f"parsed {len(nli)}/{len(nli)}" in capsys.readouterr().out
    # A user's own format: its fields ("Review:") start the run-on too.
    shots = write_jsonl(tmp_path / "shots.jsonl", [
        {"input": "Review: Love it.", "rationale": "Loving a product is praise.", "label": "positive"},
        {"input": "Review: Broke at once.", "rationale": "Breaking at once is a defect.", "label": "negative"}])
    reviews = write_jsonl(tmp_path / "reviews.jsonl", [{"input_text": "Review: Sturdy and fast.", "teacher_completion":
                          "Sturdy and fast is praise. So the answer is positive.\n\nReview: Meh.\nAnswer: negative\n\nRev"}])
    out = tmp_path / "reviews_labeled.jsonl"
    assert cli_main(["label", "--teacher", "recorded:field=teacher_completion", "--data", str(reviews), "--output",
                     str(out), "--task", "classify", "--labels", "positive,negative", "--prompt-examples", str(shots)]) == 0
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert (row["teacher_label"], row["rationale"]) == ("positive", "Sturdy and fast is praise.")


def test_the_teacher_is_closed_when_the_job_fails_after_it_was_made(data, tmp_path, monkeypatch):
    """Its SQLite cache (and a live teacher's connections) would stay open in a long-running server."""
    from mentor.recipes import distill as recipe

    closed, make = [], recipe.make_teacher

    def make_teacher(*args, **kwargs):
        teacher = make(*args, **kwargs)
        close = teacher.close
        teacher.close = lambda: (closed.append(teacher), close())[1]
        return teacher

    def load_student(cfg, **kwargs):
        raise MentorError("the student cannot be loaded")

    monkeypatch.setattr(recipe, "make_teacher", make_teacher)
    monkeypatch.setattr(recipe.setup, "load_student", load_student)
    with pytest.raises(MentorError, match="cannot be loaded"):
        distill(base_job(data, tmp_path / "o", test_data=None))
    assert len(closed) == 1
