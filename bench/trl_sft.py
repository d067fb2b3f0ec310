"""The baselines: the same LoRA job written as a TRL SFTTrainer script, plain (TRL defaults
otherwise) or as an expert would configure it (`--expert`): bf16 only where the CPU computes it
natively, no gradient checkpointing (memory allows), padding-free batches, loss on the completion
only (TRL's default for prompt-completion data, kept explicit).

Run by bench/tune_vs_trl.py in its own process; prints one JSON line with its measurements.
"""

import argparse
import json
import resource
import time

import torch
from datasets import Dataset
from peft import LoraConfig
from trl import SFTConfig, SFTTrainer

parser = argparse.ArgumentParser()
parser.add_argument("--model-dir", required=True)
parser.add_argument("--data", required=True)
parser.add_argument("--output", required=True)
parser.add_argument("--steps", type=int, required=True)
parser.add_argument("--batch", type=int, required=True)
parser.add_argument("--lr", type=float, required=True)
parser.add_argument("--rank", type=int, default=8)
parser.add_argument("--expert", action="store_true")
parser.add_argument("--full", action="store_true", help="train every weight instead of LoRA adapters")
parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
args = parser.parse_args()
on_gpu = args.device == "cuda"
native_bf16 = torch.cuda.is_bf16_supported() if on_gpu else bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())

rows = [json.loads(l) for l in open(args.data)]
dataset = Dataset.from_list([
    {"prompt": [{"role": "user", "content": r["input_text"]}],
     "completion": [{"role": "assistant", "content": r["output_text"]}]}
    for r in rows
])
config = SFTConfig(
    output_dir=args.output,
    max_steps=args.steps,
    per_device_train_batch_size=args.batch,
    learning_rate=args.lr,
    lr_scheduler_type="linear",
    warmup_steps=int(0.03 * args.steps),
    logging_steps=10,
    save_strategy="no",
    report_to="none",
    seed=0,
    include_num_input_tokens_seen="non_padding",
    use_cpu=not on_gpu,  # TRL's default bf16=True refuses to start on a CPU without it
    **(dict(bf16=native_bf16, gradient_checkpointing=False, padding_free=True, completion_only_loss=True,
            max_length=None) if args.expert else {}),
    # on a GPU the weights are held in bf16, as mentor holds them there
    **({"model_init_kwargs": {"dtype": torch.bfloat16}} if args.expert and on_gpu and native_bf16 else {}),
)
peft_config = None if args.full else LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0,
                                                 target_modules="all-linear", task_type="CAUSAL_LM")
trainer = SFTTrainer(model=args.model_dir, args=config, train_dataset=dataset, peft_config=peft_config)
start = time.time()
trainer.train()
seconds = time.time() - start
if not args.full:
    trainer.model.save_pretrained(f"{args.output}/adapter")
print("RESULT " + json.dumps({
    "seconds": seconds,
    "tokens": int(trainer.state.num_input_tokens_seen),
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "adapter": f"{args.output}/adapter",
    "gradient_checkpointing": config.gradient_checkpointing,
    "bf16": config.bf16,
    "padding_free": config.padding_free,
    "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if on_gpu else None,
}))
