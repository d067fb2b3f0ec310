"""Will the job fit? A memory estimate made from the model's config before any weights load.

The parameters are counted exactly on a model built on the meta device (accelerate's
`init_empty_weights`: no memory, any size), LoRA's trainable ones on that model wrapped by PEFT
with the job's LoRA config. Then, in bytes:

- weights: every parameter in the dtype it is held in (bf16 or fp32); with `quantization`, the
  linear layers' weights at 0.516 (NF4 with double-quantized block scales) or 1 byte (8-bit)
  each, and the rest (embeddings, norms) in fp32, where PEFT's k-bit preparation puts them;
- gradients: the trainable parameters, in their dtype;
- optimizer state: AdamW two values per trainable parameter in its dtype, bitsandbytes' 8-bit
  AdamW two bytes (tensors under 4096 values stay 32-bit), Adafactor a row and a column per
  matrix, SGD none;
- activations at the longest batch (rows x longest sequence): what a decoder layer keeps for its
  backward pass per token (`ACTIVATION_WIDTHS`), for every layer, or with gradient checkpointing
  each layer's input plus one layer recomputed; and the logits over the vocabulary, three times
  (the logits, their fp32 copy and its gradient), where they are computed: at the positions that
  predict an output token for tuning and distillation, every position for DPO and RLHF, none for
  a reward model's score head;
- this process: on CPU the resident memory before the weights load (Python, torch and the other
  libraries), and what training itself adds whatever the model (`CPU_RUNTIME`: the Trainer, its
  data loader and TensorBoard writer, the allocator's leftovers; measured); a GPU's driver context
  is already out of its free memory.

With full tuning of fp32 weights under bf16 autocast, the bf16 copies autocast keeps of them for
a step; with quantization on CPU, the peak while the weights load and quantize (the file's pages
beside the quantized weights) when it exceeds training's.

Left out: allocator fragmentation and caching (on CUDA the caching allocator can reserve 10-20%
more than it allocates), transient copies while unquantized weights load, quadratic attention scores where
SDPA falls back to its math kernel (long sequences on some CPUs), the evaluation batch, and the
DPO/RLHF reference and reward models beside the policy (added as copies of the weights for full
DPO and RLHF only). Measured against the peak on a small model in tests/test_memory.py and on
random:llama-1b in bench/memory.py (README, "Memory").
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field, replace

import torch

from mentor.errors import MentorError

log = logging.getLogger("mentor")
GiB = 1024**3

# values a decoder layer keeps per token for its backward pass, as multiples of (hidden, intermediate,
# key-value width): the norms' inputs and outputs (fp32 inside RMSNorm), q/k/v and the attention output,
# the MLP's gate, up, activation and product
ACTIVATION_WIDTHS = (8, 4, 2)
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4 bits, an 8-bit scale per block of 64, an fp32 scale per 256 blocks
BNB_MIN_8BIT_SIZE = 4096  # bitsandbytes keeps 32-bit optimizer state for smaller tensors
# what a CPU training process grows by whatever the model: measured 0.1-0.27 GiB beyond the parts above
# on models of 0.1-10M parameters (tests/test_memory.py)
CPU_RUNTIME = 0.25 * 1024**3


@dataclass
class Estimate:
    """Bytes a training job needs, by part, and where it runs."""

    parts: dict[str, float]
    parameters: int
    trainable: int
    rows: int
    tokens: int
    gradient_checkpointing: bool
    device: str
    available: float | None  # bytes the job may still take on the device (None: unknown)
    process: float = 0.0  # bytes this process holds already (CPU), part of `total`
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    @property
    def needed(self) -> float:
        """What the job adds to what this process holds already."""
        return self.total - self.process

    @property
    def fits(self) -> bool:
        return self.available is None or self.needed <= self.available

    def line(self) -> str:
        parts = ", ".join(f"{k} {v / GiB:.2f}" for k, v in self.parts.items())
        where = (f"{self.available / GiB:.1f} GiB free on {self.device}" if self.available is not None
                 else f"free memory of {self.device} unknown")
        return (f"memory estimate: {self.total / GiB:.2f} GiB ({parts}; activations at {self.rows} x {self.tokens} "
                f"tokens, gradient checkpointing {'on' if self.gradient_checkpointing else 'off'}); {where}")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["parts_gib"] = {k: round(v / GiB, 3) for k, v in d.pop("parts").items()}
        d["total_gib"] = round(self.total / GiB, 3)
        d["available_gib"] = round(self.available / GiB, 3) if self.available is not None else None
        d["process_gib"] = round(d.pop("process") / GiB, 3)
        return d


@dataclass(frozen=True)
class Shape:
    """What the estimate reads from a model's config (and its meta-device build)."""

    parameters: int
    trainable_lora: int  # with the job's LoRA config
    lora_optimizer_small: int  # LoRA parameters in tensors under BNB_MIN_8BIT_SIZE values
    full_optimizer_small: int
    linear: int  # parameters in linear layers that quantization would hold in 4/8 bits
    adafactor_lora: int  # Adafactor's state values (a row and a column per matrix)
    adafactor_full: int
    hidden: int
    intermediate: int
    kv_width: int
    layers: int
    vocab: int
    stored_bytes: int = 4  # bytes a weight takes in the model's files (its config's dtype)


def _count(model) -> tuple[int, int, int]:
    """(trainable, of them in small tensors, Adafactor's state) of a model's trainable parameters."""
    trainable = small = adafactor = 0
    for p in model.parameters():
        if p.requires_grad:
            trainable += p.numel()
            small += p.numel() if p.numel() < BNB_MIN_8BIT_SIZE else 0
            adafactor += sum(p.shape) if p.dim() >= 2 else p.numel()
    return trainable, small, adafactor


def shape_of(config, lora_config=None, is_seq2seq: bool = False) -> Shape:
    """Parameter counts from a model built on the meta device (no memory), and the sizes the
    activations depend on."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    auto = AutoModelForSeq2SeqLM if is_seq2seq else AutoModelForCausalLM
    with init_empty_weights():
        model = auto.from_config(config)
    model.tie_weights()  # under init_empty_weights tying makes a second meta tensor; tied, it is counted once
    parameters = sum(p.numel() for p in model.parameters())
    full_trainable, full_small, adafactor_full = _count(model)
    output = model.get_output_embeddings()
    linear = sum(m.weight.numel() for m in model.modules()
                 if isinstance(m, torch.nn.Linear) and m is not output)
    lora_trainable = lora_small = adafactor_lora = 0
    if lora_config is not None:
        from peft import get_peft_model

        with init_empty_weights():
            wrapped = get_peft_model(model, lora_config)
        lora_trainable, lora_small, adafactor_lora = _count(wrapped)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = getattr(text, "hidden_size", None) or getattr(text, "d_model", 0)
    heads = getattr(text, "num_attention_heads", None) or getattr(text, "num_heads", 1)
    head_dim = getattr(text, "head_dim", None) or getattr(text, "d_kv", None) or hidden // max(heads, 1)
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    if is_seq2seq:  # encoder and decoder layers both keep activations
        layers = (getattr(text, "num_layers", None) or getattr(text, "encoder_layers", 0)) + (
            getattr(text, "num_decoder_layers", None) or getattr(text, "decoder_layers", 0))
    else:
        layers = getattr(text, "num_hidden_layers", 0)
    intermediate = getattr(text, "intermediate_size", None) or getattr(text, "d_ff", None) or 4 * hidden
    stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    stored = getattr(torch, stored, None) if isinstance(stored, str) else stored
    stored_bytes = stored.itemsize if isinstance(stored, torch.dtype) else 4
    return Shape(parameters, lora_trainable, lora_small, full_small, linear, adafactor_lora, adafactor_full,
                 hidden, intermediate, kv_heads * head_dim, layers, getattr(text, "vocab_size", 0), stored_bytes)


def device_memory() -> tuple[str, float, float]:
    """(device, bytes free for this process, bytes this process holds already). On CPU the free
    RAM is shared by the processes of one machine (torchrun, accelerate)."""
    if torch.cuda.is_available():
        # this process's GPU: before the Trainer sets the device every rank's current one is GPU 0
        index = int(os.environ.get("LOCAL_RANK", torch.cuda.current_device()))
        free, _ = torch.cuda.mem_get_info(index)
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})", float(free), 0.0
    try:
        import psutil

        available, held = psutil.virtual_memory().available, psutil.Process().memory_info().rss
    except ImportError:  # psutil comes with accelerate; without it, the kernel's count
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        held = 0
    sharing = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return "cpu", float(available) / sharing, float(held)


@dataclass(frozen=True)
class Setting:
    """The switches the estimate depends on."""

    tuning: str  # full | lora
    quantization: str  # none | 4bit | 8bit
    optimizer: str
    gradient_checkpointing: bool
    rows: int  # sequences in a step's batch on this device
    tokens: int  # the longest of them
    weight_bytes: int  # 2 (bf16) or 4 (fp32): how the weights are held
    activation_bytes: int  # 2 under bf16 autocast, else 4
    weight_copies: int = 0  # frozen copies beside the trained model (a full DPO/RLHF reference model)
    # positions of a row whose vocabulary logits are computed: tuning and distillation compute them
    # only where an output token is predicted (`logits_to_keep`); None: every position; 0: none (a
    # reward model's score head)
    logit_tokens: int | None = None


def estimate(shape: Shape, s: Setting, device: str = "cpu", available: float | None = None,
             process: float = 0.0) -> Estimate:
    lora = s.tuning == "lora"
    trainable = shape.trainable_lora if lora else shape.parameters
    if s.quantization != "none":
        per_linear = NF4_BYTES if s.quantization == "4bit" else 1.0
        weights = shape.linear * per_linear + (shape.parameters - shape.linear) * 4
    else:
        weights = shape.parameters * s.weight_bytes
    # LoRA's adapters are fp32 (PEFT casts them up on a bf16 base); full tuning trains the weights in their dtype
    grad_bytes = 4 if lora else s.weight_bytes
    weights += trainable * 4 if lora else 0
    weights += s.weight_copies * shape.parameters * s.weight_bytes
    small = shape.lora_optimizer_small if lora else shape.full_optimizer_small
    if s.optimizer in ("adamw_torch", "adamw_torch_fused"):
        optimizer = 2 * trainable * grad_bytes
    elif s.optimizer in ("adamw_8bit", "paged_adamw_8bit"):
        optimizer = 2 * (trainable - small) + 8 * small
    elif s.optimizer == "paged_adamw_32bit":
        optimizer = 8 * trainable
    elif s.optimizer == "adafactor":
        optimizer = 4 * (shape.adafactor_lora if lora else shape.adafactor_full)
    else:  # sgd, without momentum
        optimizer = 0
    per_layer = (ACTIVATION_WIDTHS[0] * shape.hidden + ACTIVATION_WIDTHS[1] * shape.intermediate
                 + ACTIVATION_WIDTHS[2] * shape.kv_width)
    tokens = s.rows * s.tokens
    if s.gradient_checkpointing:
        kept = tokens * (shape.layers * shape.hidden + per_layer)
    else:
        kept = tokens * shape.layers * per_layer
    logit_positions = s.rows * (s.tokens if s.logit_tokens is None else min(s.logit_tokens, s.tokens))
    activations = kept * s.activation_bytes + 3 * logit_positions * shape.vocab * 4
    parts = {"weights": weights, "gradients": trainable * grad_bytes, "optimizer": optimizer,
             "activations": activations}
    if not lora and s.weight_bytes == 4 and s.activation_bytes == 2:
        # bf16 autocast keeps a bf16 copy of every trained fp32 weight for the step (its cast cache)
        parts["autocast copies"] = trainable * 2
    if device == "cpu":
        parts["runtime"] = CPU_RUNTIME
        if s.quantization != "none":
            # quantizing while loading: the file's pages (memory-mapped, so resident) beside the quantized
            # weights; on this CPU that, not training, is the peak
            training = sum(parts.values()) - weights
            loading = shape.parameters * shape.stored_bytes
            if loading > training:
                parts["loading"] = loading - training
    if process:
        parts["process"] = process
    return Estimate({k: float(v) for k, v in parts.items()}, shape.parameters, trainable, s.rows, s.tokens,
                    s.gradient_checkpointing, device, available, process)


def plan(shape: Shape, setting: Setting, checkpointing: str, model: str, quantization_ok: bool = True) -> Estimate:
    """The estimate with gradient checkpointing decided (`checkpointing` auto: on only when the job
    does not fit without it), or a one-line MentorError saying by how much it does not fit and
    which switches make it fit."""
    device, available, process = device_memory()

    def at(s: Setting) -> Estimate:
        return estimate(shape, s, device, available, process)

    on = replace(setting, gradient_checkpointing=True)
    off = replace(setting, gradient_checkpointing=False)
    if checkpointing == "on":
        chosen = at(on)
    elif checkpointing == "off":
        chosen = at(off)
    else:
        chosen = at(off)
        if not chosen.fits and at(on).fits:
            chosen = at(on)
            chosen.notes.append("gradient checkpointing turned on: without it the job does not fit")
    if chosen.fits:
        return chosen
    if sharded():
        # FSDP and ZeRO-3 split weights, gradients and optimizer state across the processes: the
        # estimate counts an unsharded copy, so it only warns
        chosen.notes.append(f"unsharded, this job would need about {chosen.total / GiB:.1f} GiB per device "
                            f"({available / GiB:.1f} GiB free); it runs sharded, which this estimate does not count")
        return chosen
    what = f"{setting.tuning} tuning of {model}" + (f" ({setting.quantization})" if setting.quantization != "none" else "")
    short = (chosen.needed - available) / GiB
    fixes = _fixes(setting, chosen.gradient_checkpointing, at, quantization_ok)
    parts = ", ".join(f"{k} {v / GiB:.1f}" for k, v in chosen.parts.items())
    raise MentorError(f"the job does not fit: {what} needs about {chosen.total / GiB:.1f} GiB ({parts}) and "
                      f"{available / GiB:.1f} GiB is free on {device}, {short:.1f} GiB short; {fixes}")


def sharded() -> bool:
    """Whether this process trains one shard of the model (accelerate's FSDP or DeepSpeed)."""
    return any(os.environ.get(flag, "false").lower() == "true" for flag in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"))


def _fixes(s: Setting, checkpointing: bool, at, quantization_ok: bool) -> str:
    """The switches (one, else together) under which the job fits, with what it needs then."""
    singles: list[tuple[str, Setting]] = []
    if not checkpointing:
        singles.append(("--gradient-checkpointing on", replace(s, gradient_checkpointing=True)))
    if s.tuning == "full":
        # LoRA holds its frozen base in the autocast dtype (bf16 where native)
        singles.append(("--tuning lora", replace(s, tuning="lora", weight_bytes=s.activation_bytes)))
    elif s.quantization == "none" and quantization_ok:
        singles.append(("--quantization 4bit", replace(s, quantization="4bit")))
    if s.tuning == "full" and s.optimizer.startswith("adamw") and "8bit" not in s.optimizer and quantization_ok:
        singles.append(("--optimizer adamw_8bit", replace(s, optimizer="adamw_8bit")))
    if s.rows > 1:
        singles.append(("a smaller --batch-size", replace(s, rows=1)))
    fitting = [(name, at(x)) for name, x in singles]
    fitting = [(name, e) for name, e in fitting if e.fits]
    if fitting:
        return "it fits with " + " or ".join(f"{name} (about {e.total / GiB:.1f} GiB)" for name, e in fitting)
    together = replace(s, gradient_checkpointing=True, tuning="lora", rows=1, weight_bytes=s.activation_bytes,
                       quantization="4bit" if quantization_ok else s.quantization)
    e = at(together)
    switches = ["--gradient-checkpointing on", "--tuning lora"] + (["--quantization 4bit"] if quantization_ok else [])
    switches.append("--batch-size 1 (per device)")
    if e.fits:
        return f"it fits with {' '.join(switches)} together (about {e.total / GiB:.1f} GiB)"
    return (f"even with {' '.join(switches)} it needs about {e.total / GiB:.1f} GiB: use a smaller model, "
            "shorter examples or a device with more memory")


def peak_memory() -> float | None:
    """The peak this process reached: allocated CUDA memory, else its peak resident memory (bytes)."""
    if torch.cuda.is_available():
        return float(torch.cuda.max_memory_allocated())
    try:
        import resource

        return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # kilobytes on Linux
    except (ImportError, OSError):
        return None
