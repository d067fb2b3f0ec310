"""The quickstart's pipeline, end to end, with a tiny student (the real run uses SmolLM2-135M)."""

import json
import subprocess
import sys


def test_quickstart_runs_with_a_tiny_student(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mentor.quickstart", "--student", "tiny:llama", "--steps", "2",
                           "--batch-size", "4", "--output", str(tmp_path / "qs")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[mentor] finished in" in proc.stdout
    result = json.loads((tmp_path / "qs" / "student" / "result.json").read_text())
    assert result["steps_run"] == 2 and "test" in result["extra"]
    assert (tmp_path / "qs" / "student" / "report" / "report.md").exists()
