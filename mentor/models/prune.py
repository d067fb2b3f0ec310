"""`prune:REF:layers=SPEC`: a model made from REF by keeping some of its decoder layers, the way model
families are shrunk (drop layers, then distil the smaller model from the larger).

SPEC lists the kept layers, counted from 0, as numbers and inclusive ranges: `layers=0-5,12-17`.
They are kept in ascending order; the embeddings, the final norm and the output matrix are REF's.
REF is any model reference (a hub id, a folder, a mentor output, `tiny:llama`, ...); a LoRA adapter
is merged into its base first. The model is built once (in float32) and cached under MENTOR_HOME/models; the layer list is checked
against REF's config before any weights load.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import torch
from torch import nn

from mentor.errors import MentorError
from mentor.model_record import ModelRecord

log = logging.getLogger("mentor")

PREFIX = "prune:"
_SPEC = re.compile(r"^(.+):layers=([^:]*)$")
_PART = re.compile(r"^(\d+)(?:-(\d+))?$")
SYNTAX = "prune:REF:layers=SPEC, SPEC as numbers and ranges of layers counted from 0, e.g. prune:tiny:llama:layers=0-5,12-17"


def parse(ref: str) -> tuple[str, str]:
    """The reference pruned and the layer list as written; a one-line error when it is not the syntax."""
    m = _SPEC.match(ref[len(PREFIX):])
    if not ref.startswith(PREFIX) or not m:
        raise MentorError(f"model reference '{ref}' is not {SYNTAX}")
    return m.group(1), m.group(2)


def kept_layers(spec: str, total: int, ref: str = "") -> list[int]:
    """The layers a SPEC keeps, ascending: refused in one line when it keeps none, names a layer out
    of 0..total-1, a range that runs backwards, or a layer twice."""
    where = f"prune: {ref}" if ref else "prune:"
    parts = [p.strip() for p in spec.split(",")] if spec.strip() else []
    if not parts:
        raise MentorError(f"{where}: the layer list is empty; name the layers to keep, e.g. layers=0-{max(total - 1, 0)}")
    kept: list[int] = []
    for part in parts:
        m = _PART.match(part)
        if not m:
            raise MentorError(f"{where}: '{part}' is not a layer number or a range like 2-5 (layers=0-5,12-17)")
        first, last = int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))
        if last < first:
            raise MentorError(f"{where}: range '{part}' runs backwards; write {last}-{first}")
        if last >= total:
            raise MentorError(f"{where}: layer {last} is out of range: the model has {total} layers (0-{total - 1})")
        kept += range(first, last + 1)
    twice = sorted({i for i in kept if kept.count(i) > 1})
    if twice:
        raise MentorError(f"{where}: layer{'s' if len(twice) > 1 else ''} {', '.join(map(str, twice))} named twice")
    return sorted(kept)


def layer_count(config) -> int:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(config, "is_encoder_decoder", False) or not isinstance(getattr(text, "num_hidden_layers", None), int):
        raise MentorError(f"prune: keeps decoder layers of a causal model; {type(config).__name__} is not one")
    return text.num_hidden_layers


def cache_name(source: str, kept: list[int]) -> str:
    """The cached folder's name: the source's identity (a folder's path and when its files last
    changed), and the layers."""
    path = Path(source)
    stamp = ""
    if path.is_dir():
        stamp = str(max((f.stat().st_mtime_ns for f in path.iterdir() if f.is_file()), default=0))
        source = str(path.resolve())
    key = hashlib.sha256(f"{source}:{stamp}:{kept}".encode()).hexdigest()[:12]
    return f"prune-{re.sub(r'[^A-Za-z0-9_.-]+', '-', Path(source).name)[:40]}-{key}"


def decoder_layers(model) -> tuple[nn.Module, str, nn.ModuleList]:
    """The module holding the decoder layers, the attribute's name, and the layers: the one
    ModuleList as long as the config's layer count."""
    total = model.config.get_text_config().num_hidden_layers
    found = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if isinstance(child, nn.ModuleList) and len(child) == total]
    if len(found) != 1:
        raise MentorError(f"prune: cannot tell the decoder layers of {type(model).__name__} apart "
                          f"({len(found)} lists of {total} modules)")
    return found[0]


def build(ref: str, kept: list[int], folder: Path, load_model, source: str | None = None) -> None:
    """Load REF, keep the layers `kept` (checked by `kept_layers`), save the smaller model (and REF's
    tokenizer) to `folder`, in float32, with the record of REF's folder `source` where mentor made it:
    the smaller model is prompted as REF learned (chat template, prompt format, instruction, prefix)."""
    loaded = load_model(ref, dtype=torch.float32)
    model = loaded.model.merge_and_unload() if loaded.adapter else loaded.model
    text_config = model.config.get_text_config()
    total = text_config.num_hidden_layers
    parent, name, layers = decoder_layers(model)
    setattr(parent, name, nn.ModuleList([layers[i] for i in kept]))
    for new, layer in enumerate(getattr(parent, name)):
        # attention modules index the KV cache by their layer number: it must follow the new order
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new
    text_config.num_hidden_layers = len(kept)
    for field in ("layer_types", "sliding_window_pattern_layers"):  # per-layer settings keep their layers'
        value = getattr(text_config, field, None)
        if isinstance(value, list) and len(value) == total:
            setattr(text_config, field, [value[i] for i in kept])
    log.info("prune: %s keeps %d of its %d layers (%s), built once", ref, len(kept), total,
             ",".join(map(str, kept)))
    model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    record = ModelRecord.read(source) if source and Path(source).is_dir() else None
    if record is not None:
        # the weights are whole now (an adapter merged in); how it is prompted stays the source's
        record.model_copy(update={"base_model": ref, "tuning": "full", "merged_from": loaded.adapter,
                                  "pruned_layers": kept}).write(folder)
