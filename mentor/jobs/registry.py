"""The registry of job kinds: each kind is registered once, by name, with its typed config and its
run function, and everything that starts jobs (command line, Python API, job files, REST) is
derived from it.

The run function is named by a "module:function" string and imported only when a job runs, so
listing kinds (for `mentor --help`, say) loads no ML library.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from mentor.errors import MentorError
from mentor.jobs.config import JobConfig

# what a job of a kind leaves behind: a model that generates (full weights or an adapter), a reward
# model that scores answers and never generates, or a file of answers (no model to register)
PRODUCTS = ("model", "reward-model", "predictions")


@dataclass(frozen=True)
class JobKind:
    name: str
    config: type[JobConfig]
    run: str  # "package.module:function", called as function(config, job) -> TunedModel
    summary: str
    family: str | None = None  # a command that picks this kind by its `--method` (tune, distill)
    method: str | None = None  # this kind's name within its family
    produces: str = "model"  # one of PRODUCTS: the server, the registry and serving ask this, never the name

    def __post_init__(self):
        if self.produces not in PRODUCTS:
            raise ValueError(f"job kind '{self.name}' produces {self.produces!r}; one of {', '.join(PRODUCTS)}")
        if (self.family is None) != (self.method is None):
            raise ValueError(f"job kind '{self.name}': a family kind names its method, and only a family kind does")

    def run_function(self) -> Callable:
        module, _, name = self.run.partition(":")
        return getattr(importlib.import_module(module), name)


_KINDS: dict[str, JobKind] = {}


def register_kind(kind: JobKind, replace: bool = False) -> JobKind:
    if kind.name in _KINDS and not replace:
        if _KINDS[kind.name] == kind:
            return kind
        raise ValueError(f"job kind '{kind.name}' is registered already")
    _KINDS[kind.name] = kind
    return kind


def kinds() -> dict[str, JobKind]:
    """Every registered kind (the built-in ones register when `mentor.recipes` is imported)."""
    return dict(_KINDS)


def get_kind(name: str) -> JobKind:
    if name not in _KINDS:
        raise MentorError(f"unknown job kind '{name}'; known: {', '.join(sorted(_KINDS))}")
    return _KINDS[name]


def produces(name: str) -> str:
    """What a job of kind `name` produces; a kind no longer registered (a model an older or a
    plug-in kind made) made a model."""
    kind = _KINDS.get(name)
    return kind.produces if kind else "model"


def family(name: str) -> dict[str, JobKind]:
    """The kinds a family command chooses between, by method name."""
    return {k.method: k for k in kinds().values() if k.family == name and k.method is not None}
