"""Serving load: concurrent chat requests (1, 4, 16, 64 in flight) against SmolLM2-135M through
`mentor serve` with one and with four LoRA adapters, and the same load against `transformers serve`
on the base model, each server in its own process, measured side by side in one run.

    .venv/bin/python bench/serving_load.py [--max-tokens 24] [--levels 1,4,16,64]

The four adapters are LoRA rank 8 on all linear layers with random weights (their answers differ
from the base and from each other; what they say does not matter for throughput). Prints requests/s,
output tokens/s, p50/p99 latency and errors per level, the servers' peak memory, and the ratios the
serving issue sets as targets.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / ".work" / "serving"
PROMPTS = ["Name a colour.", "What is 2 + 3?", "Say hello in French.", "Give a word that rhymes with cat.",
           "What is the capital of Italy?", "Count from one to five.", "Name a fruit.", "What day follows Monday?"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_adapters(base_folder: str, n: int) -> list[str]:
    """n LoRA adapters of the base with random weights, saved as mentor saves tuned adapters."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from mentor.model_record import ModelRecord

    folders = []
    for i in range(n):
        folder = WORK / f"adapter-{i}"
        folders.append(str(folder))
        if (folder / "adapter_model.safetensors").exists():
            continue
        torch.manual_seed(i)
        model = AutoModelForCausalLM.from_pretrained(base_folder)
        peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                                init_lora_weights=False, task_type="CAUSAL_LM"))
        peft.save_pretrained(folder)
        (folder / "mentor_base.json").write_text(json.dumps({"base_model": "smollm2-135m"}))
        ModelRecord(use_chat_template=True, base_model="smollm2-135m").write(folder)
    return folders


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start(cmd: list[str], port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(os.cpu_count()), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[:3]} exited: see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code < 500:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    raise RuntimeError(f"{cmd[:3]} did not start: see {log}")


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def engine_counts(port: int) -> tuple[int, int] | None:
    """(batches, requests) mentor's engine has run so far (None for another server)."""
    try:
        r = httpx.get(f"http://127.0.0.1:{port}/v1/mentor/serving", timeout=5)
        return (r.json()["batches"], r.json()["requests"]) if r.status_code == 200 else None
    except (httpx.HTTPError, KeyError, ValueError):
        return None


def load(port: int, models: list[str], in_flight: int, n: int, max_tokens: int) -> dict:
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}/v1", timeout=600,
                          limits=httpx.Limits(max_connections=in_flight))

    def one(i: int):
        body = {"model": models[i % len(models)], "max_tokens": max_tokens, "temperature": 0,
                "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]}
        started = time.perf_counter()
        try:
            r = client.post("/chat/completions", json=body)
            ok = r.status_code == 200
            tokens = r.json()["usage"]["completion_tokens"] if ok else 0
        except (httpx.HTTPError, KeyError, ValueError):
            ok, tokens = False, 0
        return time.perf_counter() - started, tokens, ok

    before = engine_counts(port)
    started = time.perf_counter()
    with ThreadPoolExecutor(in_flight) as pool:
        results = list(pool.map(one, range(n)))
    wall = time.perf_counter() - started
    after = engine_counts(port)
    lat = sorted(r[0] for r in results)
    return {"requests_per_s": n / wall, "tokens_per_s": sum(r[1] for r in results) / wall,
            "p50": statistics.median(lat), "p99": lat[min(len(lat) - 1, int(0.99 * len(lat)))],
            "errors": sum(not r[2] for r in results),
            "mean_batch": (after[1] - before[1]) / max(after[0] - before[0], 1) if before and after else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--levels", default="1,4,16,64")
    args = p.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    WORK.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    from mentor.models import resolve

    base = resolve("smollm2-135m")
    adapters = make_adapters(base, 4)
    mentor = [sys.executable, "-m", "mentor.cli", "serve"]
    scenarios = {
        "mentor, 1 adapter": (mentor + [adapters[0]], [adapters[0]]),
        "mentor, 4 adapters": (mentor + adapters, adapters),
        "transformers serve (base)": ([str(Path(sys.executable).with_name("transformers")), "serve", base], [base]),
    }
    table, memory = {}, {}
    for name, (cmd, models) in scenarios.items():
        port = free_port()
        extra = ["--port", str(port), "--insecure-no-auth", "--data-dir", str(WORK / "data")] if cmd[:3] == mentor[:3] \
            else ["--port", str(port), "--host", "127.0.0.1"]
        proc = start(cmd + extra, port, WORK / f"{name.split()[0]}-{port}.log")
        try:
            load(port, models, 2, 4, args.max_tokens)  # warm-up
            for level in levels:
                table[(name, level)] = load(port, models, level, max(16, min(4 * level, 128)), args.max_tokens)
                print(f"{name}, {level} in flight: {table[(name, level)]}", flush=True)
            memory[name] = peak_rss_mb(proc.pid)
        finally:
            stop(proc)

    print(f"\nSmolLM2-135M, chat completions of up to {args.max_tokens} tokens, greedy, {os.cpu_count()} CPU cores\n")
    print("| server | in flight | requests/s | output tokens/s | p50 s | p99 s | errors | mean batch |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for (name, level), r in table.items():
        batch = f"{r['mean_batch']:.1f}" if r["mean_batch"] is not None else "-"
        print(f"| {name} | {level} | {r['requests_per_s']:.2f} | {r['tokens_per_s']:.1f} | {r['p50']:.2f} | "
              f"{r['p99']:.2f} | {r['errors']} | {batch} |")
    print("\n| server | peak memory (MB) |\n|---|---:|")
    for name, mb in memory.items():
        print(f"| {name} | {mb:.0f} |")
    top = max(levels)
    mid = 16 if 16 in levels else top
    one, four, hf = "mentor, 1 adapter", "mentor, 4 adapters", "transformers serve (base)"
    print(f"\nratios: {mid} in flight vs 1, output tokens/s (mentor, 1 adapter): "
          f"{table[(one, mid)]['tokens_per_s'] / table[(one, 1)]['tokens_per_s']:.2f}x (target 4x)")
    print(f"        mentor (1 adapter) vs transformers serve at {mid} in flight: "
          f"{table[(one, mid)]['tokens_per_s'] / table[(hf, mid)]['tokens_per_s']:.2f}x (target 1.5x)")
    print(f"        peak memory, 4 adapters vs 1: {memory[four] / memory[one]:.2f}x (target < 1.3x)")
    shutil.rmtree(WORK / "data", ignore_errors=True)


if __name__ == "__main__":
    main()
