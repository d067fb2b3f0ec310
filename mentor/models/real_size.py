"""Real architectures at real size with random weights, built from a config, needing no model hub:
speed and memory can be measured at size (`bench/memory.py`) on any machine.

References: `random:llama-1b` (Llama 3.2 1B's architecture: hidden 2048, 16 layers, 32 heads, 8
key-value heads, intermediate 8192, vocabulary 128256, tied embeddings; 1.24B parameters),
`random:llama-8b` (Llama 3.1 8B's: hidden 4096, 32 layers, intermediate 14336, untied; 8.03B) and
`random:qwen2.5-0.5b` (Qwen2.5 0.5B's: hidden 896, 24 layers, 14 heads, 2 key-value heads,
intermediate 4864, vocabulary 151936, tied; 0.49B).

Resolving a reference writes only its config and tokenizer (the byte tokenizer of `tiny:` models;
the config's vocabulary keeps its real size, so the embeddings and the output layer do too), so a
job's memory estimate reads the architecture before any weights exist. The weights are drawn
(seeded: the same reference is always the same model) and saved in bf16 into the model cache the
first time a job loads them: 2.5 GB for llama-1b, 16 GB for llama-8b.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, Qwen2Config

from mentor.errors import MentorError
from mentor.models.tiny import byte_tokenizer

log = logging.getLogger("mentor")

MARKER = "mentor_random.json"  # beside the config of a reference whose weights are not drawn yet

_LLAMA3 = dict(vocab_size=128256, num_attention_heads=32, num_key_value_heads=8, hidden_act="silu",
               max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0)
REAL_SIZE_CONFIGS = {
    "llama-1b": (LlamaConfig, dict(_LLAMA3, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                   head_dim=64, tie_word_embeddings=True)),
    "llama-8b": (LlamaConfig, dict(_LLAMA3, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                   head_dim=128, tie_word_embeddings=False)),
    "qwen2.5-0.5b": (Qwen2Config, dict(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                                       num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                                       max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0,
                                       tie_word_embeddings=True)),
}


def known() -> str:
    return ", ".join(f"random:{n}" for n in REAL_SIZE_CONFIGS)


def build_config(name: str, folder: Path) -> None:
    """Write the config and tokenizer of `random:NAME` (no weights) to `folder`."""
    if name not in REAL_SIZE_CONFIGS:
        raise MentorError(f"unknown model 'random:{name}'; known: {known()}")
    config_cls, fields = REAL_SIZE_CONFIGS[name]
    tokenizer = byte_tokenizer()
    config = config_cls(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                        bos_token_id=tokenizer.bos_token_id, dtype=torch.bfloat16, **fields)  # as the weights are saved
    config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / MARKER).write_text(json.dumps({"reference": f"random:{name}", "seed": 0}))


def build_weights(config_folder: Path, folder: Path) -> None:
    """Draw the weights of a `random:` config (seeded) and save the model, in bf16, to `folder`."""
    config = AutoConfig.from_pretrained(config_folder, local_files_only=True)
    reference = json.loads((config_folder / MARKER).read_text())["reference"]
    log.info("drawing the random weights of %s once (cached under %s)", reference, folder.parent)
    torch.manual_seed(0)
    # bf16 halves the file and the memory of building it; a job loads it in the dtype it trains in
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    tokenizer = byte_tokenizer()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
