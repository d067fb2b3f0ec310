"""What the policy-tuning kinds (DPO, RLHF) carry from setup to save, and what their cards say."""

from __future__ import annotations

from dataclasses import dataclass

from mentor.rlhf.render import Renderer
from mentor.rlhf.setup import Fit


@dataclass
class Prepared:
    """A policy's run, set up: its trainer, how its prompts were rendered, and where it started."""
    trainer: object
    renderer: Renderer
    base_ref: str  # the starting model's reference (a merged adapter's folder), recorded beside an adapter
    fitted: Fit
    before: dict  # held-out metrics before the first step


def notes(cfg, before: dict, what: str, on: str) -> list[str]:
    """The card's notes on the policy's prompts and its start."""
    out = []
    if cfg.instruction:
        out.append(f"every prompt was prefixed with the instruction {cfg.instruction!r}: prefix it when predicting")
    if before:
        out.append(f"before {what}, on {on}: " + ", ".join(f"{k} {v:.4f}" for k, v in before.items()))
    return out
