"""Quantized loading with bitsandbytes: QLoRA's 4-bit NF4 with double quantization, or 8-bit.

bitsandbytes runs on CUDA, and on CPUs since its multi-backend releases (0.50.2 measured here:
4-bit and 8-bit loading, a LoRA step on them and its 8-bit and paged optimizers all run on CPU,
paged ones without paging). Where it cannot run, the job is refused before anything loads.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os

import torch

from mentor.errors import MentorError

MIN_CPU_VERSION = (0, 49)  # older releases have no CPU backend: their kernels are CUDA only


def bitsandbytes_problem() -> str | None:
    """Why bitsandbytes cannot run here, or None."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed: pip install 'mentor[gpu]' (or bitsandbytes)"
    if not torch.cuda.is_available():
        version = importlib.metadata.version("bitsandbytes")
        parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
        if parts < MIN_CPU_VERSION:
            return (f"bitsandbytes {version} runs on CUDA only: on this CPU-only machine install bitsandbytes "
                    f">={'.'.join(map(str, MIN_CPU_VERSION))} (CPU backend) or run on a CUDA GPU")
    return None


def require_bitsandbytes(what: str) -> None:
    """Refuse `what` (e.g. "quantization 4bit") in one line when bitsandbytes cannot run here."""
    problem = bitsandbytes_problem()
    if problem:
        raise MentorError(f"{what} needs bitsandbytes on CUDA (or its CPU backend), and {problem}")


def quantization_config(quantization: str, compute_dtype: torch.dtype):
    """transformers' BitsAndBytesConfig for "4bit" (QLoRA: NF4, double quantization, computing in
    `compute_dtype`) or "8bit"; None for "none"."""
    if quantization in (None, "none"):
        return None
    require_bitsandbytes(f"quantization {quantization}")
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype)
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise MentorError(f"unknown quantization '{quantization}': none, 4bit or 8bit")


def device_map() -> dict:
    """Where quantized weights go (bitsandbytes quantizes them as they are placed): this process's
    GPU, else the CPU."""
    if torch.cuda.is_available():
        return {"": int(os.environ.get("LOCAL_RANK", torch.cuda.current_device()))}
    return {"": "cpu"}
