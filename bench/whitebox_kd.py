"""Online vs offline logit KD on one teacher/student pair: peak memory and time of each.

Teacher: smollm2-135m (SmolLM2-135M-Instruct, converted once and cached under MENTOR_HOME).
Student: a 2-layer Llama built from a config with the teacher's tokenizer and vocabulary (49152).
Both modes run the same `mentor.run("logit", ...)` job, each in a fresh process:

- online:  the teacher is loaded in the training process and runs on every batch;
- offline: the teacher's top-k log-probs are computed once (a subprocess the recipe starts) and
           the training process reads them from disk: it never loads the teacher.

Peak memory is each process's peak resident set (getrusage ru_maxrss): for offline, the training
process and the precompute subprocess separately.

    OMP_NUM_THREADS=1 .venv/bin/python bench/whitebox_kd.py [--steps 24] [--examples 64] [--top-k 64]
    (--tiny: tiny:llama teacher and tiny:llama-small student instead, for a quick check)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

WORDS = ("river stone cloud amber forest lantern copper meadow harbor violet candle orbit thunder maple "
         "silver garden falcon winter ember pocket marble island breeze shadow ladder summit canyon").split()


def write_data(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with path.open("w") as f:
        for _ in range(n):
            words = [rng.choice(WORDS) for _ in range(rng.randint(8, 14))]
            f.write(json.dumps({"input_text": "Reverse the order of these words: " + " ".join(words),
                                "output_text": " ".join(reversed(words))}) + "\n")


def build_student(teacher_ref: str, folder: Path) -> None:
    """A small Llama from a config, with the teacher's tokenizer and vocabulary size."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from mentor.models import resolve

    if (folder / "config.json").exists():
        return
    source = resolve(teacher_ref)
    tok = AutoTokenizer.from_pretrained(source)
    tcfg = AutoConfig.from_pretrained(source)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=tcfg.vocab_size, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      tie_word_embeddings=True, pad_token_id=tcfg.pad_token_id, bos_token_id=tcfg.bos_token_id,
                      eos_token_id=tcfg.eos_token_id)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)


def child(mode: str, work: Path, args) -> None:
    import mentor

    started = time.time()
    result = mentor.run("logit", teacher=args.teacher, student=args.student, data=str(work / "train.jsonl"),
                            output=str(work / f"run-{mode}"), train_steps=args.steps, batch_size=args.batch_size,
                            evaluation_interval=args.steps, learning_rate_multiplier=20, early_stopping=False,
                            bf16="off", offline_logits=mode == "offline", top_k=args.top_k,
                            teacher_logits_dir=str(work / "logits") if mode == "offline" else None)
    wall = time.time() - started
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    logits_s = result.extra.get("teacher_logits", {}).get("seconds_this_run", 0.0)
    print("BENCH " + json.dumps({
        "mode": mode, "wall_s": wall, "train_s": result.extra["seconds"], "logits_s": logits_s,
        "rss_train_mb": self_kb / 1024, "rss_precompute_mb": children_kb / 1024 if mode == "offline" else None,
        "train_kd_loss": result.metrics.get("train_kd_loss"), "steps": result.steps_run}), flush=True)


def run_child(mode: str, work: Path, argv: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, "--work", str(work), *argv],
                         capture_output=True, text=True)
    lines = [l for l in out.stdout.splitlines() if l.startswith("BENCH ")]
    if out.returncode != 0 or not lines:
        sys.stderr.write(out.stdout[-3000:] + out.stderr[-3000:])
        raise SystemExit(f"{mode} run failed (exit code {out.returncode})")
    return json.loads(lines[-1][len("BENCH "):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--examples", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--top-k", type=int, default=64)
    p.add_argument("--tiny", action="store_true", help="tiny:llama -> tiny:llama-small instead of smollm2-135m")
    p.add_argument("--work", default=None, help="scratch folder (default: a new one under /tmp)")
    p.add_argument("--child", choices=["online", "offline", "prepare"], help=argparse.SUPPRESS)
    p.add_argument("--teacher", help=argparse.SUPPRESS)
    p.add_argument("--student", help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    if args.child:
        work = Path(args.work)
        if args.child == "prepare":
            from mentor.models import resolve

            resolve(args.teacher)  # converts/builds once, cached, outside the measured runs
            if not args.student.startswith("tiny:"):
                build_student(args.teacher, Path(args.student))
            else:
                resolve(args.student)
            print("BENCH {}", flush=True)
        else:
            child(args.child, work, args)
        return

    import tempfile

    work = Path(args.work or tempfile.mkdtemp(prefix="mentor-bench-wb-"))
    work.mkdir(parents=True, exist_ok=True)
    teacher = "tiny:llama" if args.tiny else "smollm2-135m"
    student = "tiny:llama-small" if args.tiny else str(work / "student")
    write_data(work / "train.jsonl", args.examples)
    argv = ["--teacher", teacher, "--student", student, "--steps", str(args.steps), "--batch-size", str(args.batch_size),
            "--top-k", str(args.top_k)]
    print(f"[bench] teacher {teacher}, student {student}; {args.examples} examples, {args.steps} steps of "
          f"{args.batch_size}, top-k {args.top_k}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    run_child("prepare", work, argv)
    online = run_child("online", work, argv)
    offline = run_child("offline", work, argv)

    rows = [
        ("online KD (teacher in the training process)", online["rss_train_mb"], online["train_s"], online["wall_s"]),
        ("offline: teacher logits precompute (subprocess)", offline["rss_precompute_mb"], offline["logits_s"], offline["logits_s"]),
        ("offline: student training from stored logits", offline["rss_train_mb"], offline["train_s"],
         offline["wall_s"] - offline["logits_s"]),
    ]
    print("\n| run | peak RSS (MB) | training loop (s) | process wall (s) |\n|---|---:|---:|---:|")
    for name, rss, train_s, wall in rows:
        print(f"| {name} | {rss:.0f} | {train_s:.1f} | {wall:.1f} |")
    print(f"\npeak RSS of the training process, offline / online: {offline['rss_train_mb'] / online['rss_train_mb']:.2f}")
    print(f"training loop time, offline / online: {offline['train_s'] / online['train_s']:.2f}")
    print(f"end to end (offline = precompute + training), offline / online: {offline['wall_s'] / online['wall_s']:.2f}")
    print(f"final train_kd_loss: online {online['train_kd_loss']:.4f}, offline top-{args.top_k} {offline['train_kd_loss']:.4f}")
    print(f"(work folder: {work})")


if __name__ == "__main__":
    main()
