"""Example data that works offline: GSM8K-style word problems with worked solutions, generated
by the `reasoning-gym` package (Apache-2.0), for the quickstart, demos and benchmarks.

Each row has the tuning fields (`input_text`, `output_text` = the final answer), the worked
solution as `rationale`, and `teacher_completion`: the solution written the way a
chain-of-thought teacher writes it ("... The answer is 42."), usable as a recorded teacher.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from mentor.errors import MentorError

INSTRUCTION_TAIL = re.compile(r"\s*Give the result as your final answer\. Do not include units\.\s*$")


def gsm_rows(n: int, seed: int = 0) -> list[dict]:
    """`n` grade-school math problems with worked solutions, deterministic for a seed."""
    try:
        import reasoning_gym
    except ImportError as err:
        raise MentorError("example data needs the 'reasoning-gym' package: pip install reasoning-gym") from err
    rows = []
    for item in reasoning_gym.create_dataset("gsm_symbolic", size=n, seed=seed):
        cot = item["metadata"]["answer_cot"]
        steps = cot.split("####")[0].strip()
        answer = str(item["answer"]).strip()
        rows.append({
            "input_text": INSTRUCTION_TAIL.sub("", item["question"]).strip(),
            "output_text": answer,
            "rationale": steps,
            "teacher_completion": f"{steps}\nThe answer is {answer}.",
        })
    return rows


def write_gsm_splits(folder: str | Path, train: int = 300, eval: int = 40, test: int = 100, seed: int = 0) -> dict[str, Path]:
    """Write train/eval/test JSONL files of example problems (disjoint seeds per split)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for offset, (name, n) in enumerate((("train", train), ("eval", eval), ("test", test))):
        path = folder / f"{name}.jsonl"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in gsm_rows(n, seed * 100 + offset)))
            tmp.replace(path)
        paths[name] = path
    return paths
