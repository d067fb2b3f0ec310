"""One LoRA builder for every kind: rank `adapter_size`, alpha `lora_alpha` (twice the rank unless
given), dropout `lora_dropout`, DoRA when `lora_variant` is dora; 'all-linear' lets PEFT pick each
architecture's linear layers."""

from __future__ import annotations

from mentor.training.config import FitConfig


def lora_alpha(cfg: FitConfig) -> float:
    return cfg.lora_alpha if cfg.lora_alpha is not None else 2 * cfg.adapter_size


def lora_config(cfg: FitConfig, task_type: str):
    from peft import LoraConfig

    # PEFT annotates lora_alpha as int, but only divides it by the rank: a fractional alpha works as asked
    return LoraConfig(r=cfg.adapter_size, lora_alpha=lora_alpha(cfg),  # pyright: ignore[reportArgumentType]
                      lora_dropout=cfg.lora_dropout,
                      use_dora=cfg.lora_variant == "dora",
                      target_modules=cfg.lora_target_modules, task_type=task_type)


def apply_lora(model, cfg: FitConfig, is_seq2seq: bool):
    """Wrap a model with LoRA adapters as the job's config says (a quantized base is prepared for
    training first: its norms and embeddings in fp32, inputs that carry gradients)."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_quantized", False):
        # checkpointing is the trainer's choice (the memory estimate's), not PEFT's default of on
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return get_peft_model(model, lora_config(cfg, "SEQ_2_SEQ_LM" if is_seq2seq else "CAUSAL_LM"))
