"""Stop strings, applied the way OpenAI-compatible servers apply them."""

from __future__ import annotations


def apply_stop(text: str, stop: list[str] | None) -> str:
    """Cut the text at the first stop string, the way OpenAI-compatible servers do (stop excluded)."""
    if not stop:
        return text
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return text if cut < 0 else text[:cut]
