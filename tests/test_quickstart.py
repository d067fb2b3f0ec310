"""The quickstart's pipeline, end to end, with a tiny student (the real run uses SmolLM2-135M), and
how it scales its work to a slow CPU."""

import json
import logging
import subprocess
import sys

import pytest

from mentor import quickstart


def test_quickstart_runs_with_a_tiny_student(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mentor.quickstart", "--student", "tiny:llama", "--steps", "2",
                           "--test", "8", "--batch-size", "4", "--output", str(tmp_path / "qs")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[mentor] finished in" in proc.stdout
    result = json.loads((tmp_path / "qs" / "student" / "result.json").read_text())
    assert result["steps_run"] == 2 and "test" in result["extra"]
    assert (tmp_path / "qs" / "student" / "report" / "report.md").exists()


@pytest.mark.parametrize("per_step, planned", [(4.6, (60, 60)), (8.0, (20, 20)), (21.0, (20, 20)), (3.0, (60, 60))])
def test_the_quickstart_trains_less_where_the_full_job_would_take_far_longer(per_step, planned, monkeypatch, caplog):
    """An AVX2-only CPU trains the job in fp32 at about 21 s a step (4.6 s with native bf16): it is
    told so, and trains fewer steps on fewer test problems, unless the user asked for the full job."""
    monkeypatch.setattr(quickstart, "seconds_per_step", lambda student: (per_step, "fp32"))
    with caplog.at_level(logging.INFO, logger="mentor.quickstart"):
        assert quickstart.plan(None, None, "smollm2-135m") == planned
    assert ("--steps 60 --test 60 runs the full job" in caplog.text) == (planned != (60, 60))
    assert quickstart.plan(60, 60, "smollm2-135m") == (60, 60)
    assert quickstart.plan(None, 10, "smollm2-135m") == (planned[0], 10)


def test_the_speed_probe_times_the_jobs_own_model():
    per_step, dtype = quickstart.seconds_per_step("tiny:llama")
    assert 0 < per_step < 60 and dtype in ("bf16", "fp32")
