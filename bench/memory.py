"""Benchmark: peak memory of LoRA, QLoRA (4-bit base) and full tuning, with and without gradient
checkpointing, on random:llama-1b (Llama 3.2 1B's architecture at real size, random weights), beside
mentor's memory estimate made before the weights load.

Each configuration runs a few steps of `mentor.tune` in its own process, so peaks do not mix; the
peak is the process's peak resident memory on CPU (torch.cuda.max_memory_allocated on a GPU). A
configuration the estimate says does not fit is refused before its weights load, and the table
shows the refusal. Prints a Markdown table.

    python bench/memory.py [--model random:llama-1b] [--steps 2] [--batch 2] [--tokens 128]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = [  # (label, fields)
    ("LoRA", {"tuning": "lora"}),
    ("QLoRA (4-bit)", {"tuning": "lora", "quantization": "4bit"}),
    ("full", {"tuning": "full"}),
]


def one(args) -> None:
    """Run one configuration in this process and print its record as one JSON line."""
    import logging

    import mentor
    from mentor.errors import MentorError

    logging.basicConfig(level=logging.WARNING)
    fields = json.loads(args.fields)
    started = time.time()
    try:
        result = mentor.tune(model=args.model, data=args.data, output=args.output, train_steps=args.steps,
                             batch_size=args.batch, max_input_tokens=args.tokens, max_output_tokens=args.tokens,
                             **fields)
    except MentorError as err:
        print(json.dumps({"refused": str(err), "seconds": round(time.time() - started, 1)}))
        return
    memory = result.extra["memory"]
    print(json.dumps({**memory, "seconds": round(time.time() - started, 1),
                      "seconds_per_step": round(result.extra["seconds"] / max(result.steps_run, 1), 1)}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="random:llama-1b")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=128, help="input and output tokens of every example")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--fields", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--output", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        return one(args)
    work = Path(tempfile.mkdtemp(prefix="mentor-memory-"))
    data = work / "train.jsonl"
    # byte-level tokens: one character, one token
    data.write_text("".join(json.dumps({"input_text": f"{i} " + "x" * args.tokens,
                                        "output_text": "y" * args.tokens}) + "\n" for i in range(16)))
    rows = []
    for label, fields in CONFIGS:
        for checkpointing in ("off", "on"):
            run_fields = {**fields, "gradient_checkpointing": checkpointing}
            cmd = [sys.executable, __file__, "--one", "--model", args.model, "--steps", str(args.steps),
                   "--batch", str(args.batch), "--tokens", str(args.tokens), "--fields", json.dumps(run_fields),
                   "--data", str(data), "--output", str(work / f"{label}-{checkpointing}".replace(" ", "_"))]
            out = subprocess.run(cmd, capture_output=True, text=True)
            lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
            record = json.loads(lines[-1]) if lines else {"refused": f"failed: {out.stderr.strip()[-300:]}"}
            rows.append((label, checkpointing, record))
            print(f"{label}, checkpointing {checkpointing}: {json.dumps(record)[:400]}", file=sys.stderr, flush=True)
            shutil.rmtree(work / f"{label}-{checkpointing}".replace(" ", "_"), ignore_errors=True)  # GBs of weights
    shutil.rmtree(work, ignore_errors=True)
    print(f"\n{args.model}, {args.steps} steps of {args.batch} x {2 * args.tokens} tokens\n")
    print("| tuning | gradient checkpointing | estimate (GiB) | measured peak (GiB) | estimate / peak | s/step |")
    print("|---|---|---|---|---|---|")
    for label, checkpointing, r in rows:
        if "refused" in r:
            print(f"| {label} | {checkpointing} | refused before loading: {r['refused']} | - | - | - |")
            continue
        peak = r.get("measured_peak_gib")
        ratio = f"{r['total_gib'] / peak:.2f}" if peak else "-"
        print(f"| {label} | {checkpointing} | {r['total_gib']:.2f} | {peak:.2f} | {ratio} | {r['seconds_per_step']} |")


if __name__ == "__main__":
    main()
