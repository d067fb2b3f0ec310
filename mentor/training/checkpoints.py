"""Finding the checkpoint to resume from: the newest one that was written whole."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

log = logging.getLogger("mentor")
WEIGHT_FILES = ("model.safetensors", "adapter_model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
# The weights and optimizer state as each engine saves them: Trainer's own files, FSDP's
# (pytorch_model_fsdp*, optimizer.bin or optimizer_0/) and DeepSpeed's (global_stepN/).
WEIGHT_PATTERNS = ("pytorch_model_fsdp*", "global_step*")
OPTIMIZER_PATTERNS = ("optimizer.pt", "optimizer.bin", "optimizer_*", "global_step*")


def checkpoint_complete(d: Path) -> bool:
    """Trainer writes trainer_state.json last; a kill can still leave it half-written, and a kill
    during rotation can leave a folder whose weights are already deleted."""
    try:
        json.loads((d / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    weights = any((d / f).exists() for f in WEIGHT_FILES) or any(any(d.glob(p)) for p in WEIGHT_PATTERNS)
    return weights and any(any(d.glob(p)) for p in OPTIMIZER_PATTERNS)


def last_complete_checkpoint(folder: Path, remove: bool = True) -> str | None:
    """The newest checkpoint that was fully written; incomplete ones (killed mid-save) are removed
    when `remove` (by one process only: the main one)."""
    if not folder.is_dir():
        return None
    found = []
    for d in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        if not d.name.split("-")[-1].isdigit():
            continue
        if checkpoint_complete(d):
            found.append((int(d.name.split("-")[-1]), d))
        elif remove:
            log.info("removing incomplete checkpoint %s", d)
            shutil.rmtree(d, ignore_errors=True)
    return str(max(found)[1]) if found else None
