"""`mentor label` against a real third-party OpenAI-compatible server: `transformers serve` (one
request at a time, streamed answers without a `[DONE]` marker) on a tiny model saved to a folder,
started by the test. A labeling run is SIGKILLed mid-way; the rerun asks only for what is missing."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import sigkill_when

REPO = Path(__file__).resolve().parents[1]
TRANSFORMERS = Path(sys.executable).with_name("transformers")
ROWS = [
    {
        "input_text": f"Ann has {i} apples and buys {i + 3} more. How many apples does she have?",
        "output_text": str(2 * i + 3),
    }
    for i in range(16)
]
SHOT = {
    "input": "Bo has 2 pens and buys 3 more. How many pens does he have?",
    "rationale": "Bo has 2 pens and buys 3, so 2 + 3 = 5.",
    "label": "2 + 3",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("OPENAI_API_KEY", None)
    return env


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base URL, model folder, server log) of `transformers serve` pinned to a tiny Llama."""
    if not TRANSFORMERS.exists():
        pytest.skip(f"no `transformers` command beside {sys.executable}: transformers is not installed with its CLI")
    missing = [m for m in ("fastapi", "uvicorn", "openai") if not _importable(m)]
    if missing:
        pytest.skip(f"`transformers serve` needs transformers[serving]; missing: {', '.join(missing)}")
    from mentor.models.tiny import build_tiny

    work = tmp_path_factory.mktemp("transformers-serve")
    folder = work / "tiny-llama"
    build_tiny("llama", folder)  # config, weights, tokenizer and chat template: all a local folder needs
    port = _free_port()
    log = work / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(TRANSFORMERS), "serve", str(folder), "--host", "127.0.0.1", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_env(),
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.skip(
                    f"`transformers serve` exited with code {proc.returncode} at start: {log.read_text()[-800:]}"
                )
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.skip(f"`transformers serve` did not answer /health within 60 s: {log.read_text()[-800:]}")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/v1", folder, log
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _cached(path: Path) -> int:
    if not path.exists():
        return 0
    db = sqlite3.connect(path, timeout=5)
    try:
        return db.execute("SELECT COUNT(*) FROM completions").fetchone()[0]
    except sqlite3.OperationalError:  # the table is not there yet
        return 0
    finally:
        db.close()


def test_label_killed_mid_run_resumes_with_only_the_missing(served, tmp_path):
    base_url, folder, log = served
    data, shots, out = tmp_path / "rows.jsonl", tmp_path / "shots.jsonl", tmp_path / "out" / "labeled.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    shots.write_text(json.dumps(SHOT) + "\n")
    out.parent.mkdir()
    cache = out.parent / "teacher_cache.sqlite"
    cmd = [
        sys.executable,
        "-m",
        "mentor.cli",
        "label",
        "--teacher",
        f"openai:{folder}@{base_url}",
        "--data",
        str(data),
        "--output",
        str(out),
        "--task",
        "math",
        "--prompt-examples",
        str(shots),
    ]
    posts_before = log.read_text().count("POST /v1/chat/completions")

    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    sigkill_when(proc, lambda: _cached(cache) >= 3, 45, "the first run's third answer")
    kept = _cached(cache)
    assert 3 <= kept < len(ROWS), f"{kept} answers kept: the run was not killed mid-way"
    assert not out.exists()  # the labeled file is written whole at the end, or not at all

    rerun = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    labeled = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["input_text"] for r in labeled] == [r["input_text"] for r in ROWS]
    # what was kept is the server's whole answer: streamed and assembled, it equals an unstreamed one
    from mentor.tasks.prompts import PromptTemplate

    prompt = PromptTemplate.for_task("math", shots=shots).render(ROWS[0]["input_text"])
    direct = httpx.post(
        f"{base_url}/chat/completions",
        timeout=60,
        json={
            "model": str(folder),
            "max_tokens": 256,
            "temperature": 0.0,
            "messages": [{"role": "user", "content": prompt}],
        },
    )
    assert labeled[0]["teacher_completion"] == direct.json()["choices"][0]["message"]["content"]
    assert direct.json()["usage"]["completion_tokens"] == 256
    assert _cached(cache) == len(ROWS)
    report = out.with_suffix(".report.txt").read_text()
    # the rerun asked for exactly the missing ones, each once, with no retry
    assert f"{len(ROWS) - kept} calls, {kept} cache hits" in report and "0 retries" in report, report
    # the server saw every prompt once, plus at most the killed run's few unfinished ones: no flood
    posts = log.read_text().count("POST /v1/chat/completions") - posts_before - 1  # less the direct one
    assert len(ROWS) <= posts <= len(ROWS) + 3, posts
