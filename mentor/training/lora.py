"""One LoRA builder for every kind: rank `adapter_size`, alpha twice the rank, no dropout;
'all-linear' lets PEFT pick each architecture's linear layers."""

from __future__ import annotations


def lora_config(cfg, task_type: str):
    from peft import LoraConfig

    return LoraConfig(r=cfg.adapter_size, lora_alpha=2 * cfg.adapter_size, lora_dropout=0.0,
                      target_modules=cfg.lora_target_modules, task_type=task_type)


def apply_lora(model, cfg, is_seq2seq: bool):
    """Wrap a model with LoRA adapters as the job's config says."""
    from peft import get_peft_model

    return get_peft_model(model, lora_config(cfg, "SEQ_2_SEQ_LM" if is_seq2seq else "CAUSAL_LM"))
