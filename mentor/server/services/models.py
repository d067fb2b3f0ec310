"""The model service: what a `model` field names (a registered tuned model, a kept checkpoint, a base
model, or in `mentor serve` one of the models it was given), what each model answers, and removing
a tuned model with its weights out of memory."""

from __future__ import annotations

import re
from pathlib import Path

from mentor.errors import MentorError
from mentor.jobs import produces
from mentor.server import registry
from mentor.server.errors import ApiError, not_found
from mentor.serving.pool import Servable

CHECKPOINT = re.compile(r"^(?P<name>.+):ckpt-step-(?P<step>\d+)$")
GENERATES = ["/v1/chat/completions", "/v1/completions"]
SCORES = ["/v1/mentor/score"]


def base_models() -> list[str]:
    from mentor.models.resolve import ALIASES

    return sorted(ALIASES)


def endpoints(product: str) -> list[str]:
    """What a model answers, by what its kind produces: a reward model scores answers and never generates."""
    return SCORES if product == "reward-model" else GENERATES


def endpoints_of_kind(kind: str | None) -> list[str]:
    """What a registered model answers, asked of the kind that made it (a base model: None)."""
    return endpoints(produces(kind) if kind else "model")


def servable(ctx, name: str) -> Servable:
    """What a `model` field names, or a 404 naming it."""
    if ctx.served:  # `mentor serve`: the models it was given, nothing else
        if name not in ctx.served:
            raise not_found("model", name[:200], "model")
        return ctx.served[name]
    if not registry.NAME_PATTERN.match(name):
        raise not_found("model", name[:80], "model")
    try:
        row = registry.get_model(ctx.db, name)
        return Servable.of(row.path, name=name)
    except registry.UnknownModel:
        pass
    if match := CHECKPOINT.match(name):  # a checkpoint the job kept, not promoted
        try:
            row = registry.get_model(ctx.db, match["name"])
        except registry.UnknownModel:
            raise not_found("model", name, "model") from None
        from mentor.training.checkpoints import checkpoint_complete

        folder = Path(row.job_folder) / "checkpoints" / f"checkpoint-{match['step']}"
        if not folder.is_dir() or not checkpoint_complete(folder):  # a kill can leave one half-written
            raise not_found("model", name, "model")
        own = Servable.of(row.path)
        if own.adapter:  # a LoRA model's checkpoint is an adapter on the same base
            return Servable(name, own.base, str(folder.resolve()), own.record)
        return Servable(name, str(folder.resolve()), None, own.record)  # a full model's is a whole model
    if name.startswith(("/", ".", "~")) or name.startswith("ft:"):
        raise not_found("model", name, "model")
    try:
        return Servable.of(name)
    except MentorError:
        raise not_found("model", name, "model") from None


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve() == folder.resolve() or folder.resolve() in path.resolve().parents


def delete(ctx, name: str) -> None:
    """A tuned model out of the registry, its files removed and its weights (and its kept
    checkpoints') out of memory; refused while a job or an adapter still needs it."""
    try:
        removed = registry.delete_model(ctx.db, name)
    except registry.UnknownModel:
        raise not_found("model", name, "model") from None
    except registry.ModelInUse as err:
        raise ApiError(409, str(err), "model", "model_in_use") from None
    for folder in removed:
        ctx.pool.unload(folder)
        with ctx.scorers_lock:
            for path in [p for p in ctx.scorers if _inside(Path(p), folder)]:
                del ctx.scorers[path]
