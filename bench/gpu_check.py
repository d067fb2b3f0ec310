"""GPU check: LoRA and full tuning of a 1B model at real size (random weights, Llama 3.2 1B's
architecture, no hub) in bf16 on one GPU, mentor against the expert TRL script (bench/trl_sft.py
--expert), each run in its own process. Prints tokens/s, peak GPU memory and the fraction of the
GPU's bf16 matmul peak (measured in this run) each reaches. Sized to finish within 8 minutes on
one H100/H200-class GPU.

    python bench/gpu_check.py [--model random:llama-1b] [--steps 30] [--batch 16]

On the device machine (torch, transformers, peft and accelerate installed, no package registry),
carry trl and mentor's other pure-Python dependencies as wheels. `--device cpu --model tiny:llama`
runs the same code on a CPU in seconds (a smoke test of the script, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MENTOR_JOB = """
import json, sys, torch
import mentor
kw = json.loads(sys.argv[1])
r = mentor.tune(**kw)
print("RESULT " + json.dumps({"seconds": r.extra["seconds"], "tokens": r.extra["tokens_seen"],
      "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None}))
"""


def worked_problems(n: int, seed: int) -> list[dict]:
    """Arithmetic word problems with worked solutions, 250-400 characters each: no dataset needed."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b, c = rng.randint(2, 90), rng.randint(2, 40), rng.randint(2, 9)
        q = (f"A shop has {a} boxes with {b} pencils in each box. It sells {c} boxes and then gets a delivery of "
             f"{b + c} loose pencils. How many pencils does the shop have now?")
        s = (f"The shop starts with {a} * {b} = {a * b} pencils. Selling {c} boxes removes {c} * {b} = {c * b} "
             f"pencils, leaving {a * b - c * b}. The delivery adds {b + c}, so it has {a * b - c * b + b + c} pencils."
             f"\nThe answer is {a * b - c * b + b + c}.")
        rows.append({"input_text": q, "output_text": s})
    return rows


def matmul_peak_tflops(device: str) -> float:
    import torch

    dtype, n = (torch.bfloat16, 8192) if device == "cuda" else (torch.float32, 1024)
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    start, reps = time.perf_counter(), 20
    for _ in range(reps):
        a @ b
    sync()
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def run(cmd: list[str]) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:160]}
    return json.loads(line[len("RESULT "):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="random:llama-1b")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch

    from mentor.models import load_model, resolve

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA GPU here: run with --device cpu for a smoke test of the script")
    work = Path(tempfile.mkdtemp(prefix="mentor-gpu-check-"))
    data = work / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in worked_problems(args.steps * args.batch, 0)))
    folder = resolve(args.model)
    loaded = load_model(args.model)  # draws a random: model's weights into the cache once, for both scripts
    n_params = sum(p.numel() for p in loaded.model.parameters())
    del loaded
    peak = matmul_peak_tflops(args.device)
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else "CPU (smoke test)"
    print(f"{gpu}: {'bf16' if args.device == 'cuda' else 'fp32'} matmul peak {peak:.1f} TFLOPS; {args.model} "
          f"({n_params / 1e9:.2f}B parameters); {args.steps} steps of {args.batch}", flush=True)

    rows = []
    for tuning, flops_per_token in (("lora", 4), ("full", 6)):  # LoRA: no weight gradients through the base
        lr = 1e-4 if tuning == "lora" else 1e-5
        job = dict(model=args.model, data=str(data), tuning=tuning, train_steps=args.steps, batch_size=args.batch,
                   learning_rate_multiplier=lr / (5e-4 if tuning == "lora" else 5e-5), packing=True,
                   gradient_checkpointing="off", bf16="on" if args.device == "cuda" else "off",
                   output=str(work / f"mentor-{tuning}"))
        trl = [sys.executable, str(ROOT / "bench" / "trl_sft.py"), "--model-dir", folder, "--data", str(data),
               "--output", str(work / f"trl-{tuning}"), "--steps", str(args.steps), "--batch", str(args.batch),
               "--lr", str(lr), "--expert", "--device", args.device] + (["--full"] if tuning == "full" else [])
        for name, cmd in ((f"mentor tune ({tuning}, packing)", [sys.executable, "-c", MENTOR_JOB, json.dumps(job)]),
                          (f"expert TRL SFTTrainer ({tuning})", trl)):
            print(f"running {name} ...", flush=True)
            r = run(cmd)
            r.update(name=name, flops=flops_per_token)
            rows.append(r)

    print("\n| run | tokens/s | peak GPU memory GiB | fraction of bf16 peak |\n|---|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['name']} | failed: {r['error']} | | |")
            continue
        tps = r["tokens"] / r["seconds"]
        mem = f"{r['peak_gpu_mb'] / 1024:.1f}" if r.get("peak_gpu_mb") else "-"
        print(f"| {r['name']} | {tps:,.0f} | {mem} | {r['flops'] * n_params * tps / (peak * 1e12):.3f} |")


if __name__ == "__main__":
    main()
