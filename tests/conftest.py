"""Tests run offline on tiny models built from configs; nothing is fetched from a model hub."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import json  # noqa: E402
import random  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def mentor_home(tmp_path_factory):
    """Tiny models are built once per session into a private cache (MENTOR_HOME)."""
    if "MENTOR_HOME" not in os.environ:
        os.environ["MENTOR_HOME"] = str(tmp_path_factory.mktemp("mentor-home"))
    return Path(os.environ["MENTOR_HOME"])


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def shift_task(n: int, seed: int) -> list[dict]:
    """A learnable task: each letter of the input becomes the next letter of the alphabet."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        word = "".join(rng.choice("abcdefgh") for _ in range(rng.randint(3, 6)))
        rows.append({"input_text": word, "output_text": "".join(chr(ord(c) + 1) for c in word)})
    return rows


def sigkill_when(proc, ready, timeout: float, what: str) -> None:
    """SIGKILL a running subprocess as soon as `ready()` holds (a run killed mid-way, for resume tests);
    fails if it ends by itself or `ready` never holds within `timeout` seconds."""
    import signal
    import time

    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert proc.poll() is None, f"{what}: the run ended by itself"
            assert time.monotonic() < deadline, f"{what}: not reached in {timeout:g} s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def reward_model_folder(folder: Path) -> Path:
    """A reward model as `mentor reward-model` saves one (a one-output sequence classifier with
    mentor's record, kind "reward_model"), made from tiny:llama without training: its scores are
    those of a fresh head, enough to check what scores and what refuses to generate."""
    import torch
    from transformers import AutoTokenizer

    from mentor.models import resolve
    from mentor.rlhf.reward import load_classifier

    source = resolve("tiny:llama")
    torch.manual_seed(0)
    model = load_classifier(source)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    (folder / "mentor_model.json").write_text(json.dumps({"kind": "reward_model", "base_model": "tiny:llama",
                                                          "tuning": "full", "use_chat_template": True}))
    return folder
