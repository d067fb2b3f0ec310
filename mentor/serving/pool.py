"""Models held for serving: each base model once, the LoRA adapters of every tuned model on it
attached by name (PEFT), so requests for different adapters share the base weights and run in one
batch (PEFT's mixed-adapter batches, `adapter_names`). Adapters and models load on first use and
are evicted least-recently-used under a memory budget.

`Servable.of(ref)` says what a model reference is: a base model, a full tuned model, or a LoRA
adapter on a base, with what mentor recorded about prompting it (chat template, task prefix,
instruction). `Predictor` and the server both go through here, so they answer alike.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import torch

from mentor.errors import MentorError
from mentor.model_record import ModelRecord
from mentor.models import LoadedModel, load_model, resolve
from mentor.serving.generate import BASE_ADAPTER

log = logging.getLogger("mentor")


def _folder_bytes(folder: Path, patterns=("*.safetensors", "*.bin")) -> int:
    return sum(p.stat().st_size for pattern in patterns for p in folder.glob(pattern))


@dataclass(frozen=True)
class Servable:
    """A model as serving sees it: the base to load and, for a LoRA model, its adapter folder."""

    name: str  # what the client called it
    base: str  # the base model reference (a full model's own folder)
    adapter: str | None  # a LoRA adapter folder on `base`
    record: ModelRecord = field(default_factory=ModelRecord, compare=False, hash=False)  # what mentor recorded

    @classmethod
    def of(cls, ref: str, name: str | None = None) -> Servable:
        folder = Path(resolve(ref))
        record = ModelRecord.read(folder) or ModelRecord()  # a folder mentor did not make: the defaults
        adapter_cfg = folder / "adapter_config.json"
        if not adapter_cfg.exists():
            return cls(name or ref, str(folder) if folder.exists() else ref, None, record)
        base = json.loads(adapter_cfg.read_text())["base_model_name_or_path"]
        recorded = folder / "mentor_base.json"  # the user's reference of the base, beside the adapter
        if recorded.exists():
            base = json.loads(recorded.read_text())["base_model"]
        return cls(name or ref, resolve(base), str(folder.resolve()), record)

    @cached_property  # asked on every chat request: the folder's config is read once
    def is_reward_model(self) -> bool:
        """A scorer (a sequence classifier with one output), not a language model: generating through
        its head answers nonsense. Mentor's record names its kind; a folder without one says so by its
        architecture."""
        if self.record.is_reward_model:
            return True
        config = Path(self.base) / "config.json"
        if self.adapter or not config.is_file():
            return False
        try:
            architectures = json.loads(config.read_text()).get("architectures") or []
        except (OSError, ValueError, AttributeError):
            return False
        return bool(architectures) and all(str(a).endswith("ForSequenceClassification") for a in architectures)

    @property
    def adapter_name(self) -> str:
        """A name PEFT accepts (no dots), the same for the same adapter folder."""
        return "a" + hashlib.sha256(self.adapter.encode()).hexdigest()[:16] if self.adapter else BASE_ADAPTER


@dataclass
class _Base:
    loaded: LoadedModel  # its .model becomes a PeftModel once an adapter is attached
    bytes: int
    adapters: OrderedDict = field(default_factory=OrderedDict)  # adapter name -> bytes, least recent first
    adapter_folders: dict = field(default_factory=dict)  # adapter name -> the folder it was loaded from
    pins: dict = field(default_factory=dict)  # name (or BASE_ADAPTER for the model) -> batches using it now


class ModelPool:
    """Base models and their adapters, loaded on first use, evicted least-recently-used."""

    def __init__(self, memory_budget_bytes: int | None = None, dtype: torch.dtype = torch.float32):
        self.budget = memory_budget_bytes
        self.dtype = dtype
        self._bases: OrderedDict[str, _Base] = OrderedDict()
        self._lock = threading.RLock()
        self.loads = 0
        self.evictions = 0
        self._deleted: set[Path] = set()  # folders whose models are unloaded once no batch uses them

    @property
    def used_bytes(self) -> int:
        return sum(b.bytes + sum(b.adapters.values()) for b in self._bases.values())

    def base_of(self, servable: Servable) -> LoadedModel:
        """The loaded base model (its tokenizer, config) without attaching any adapter."""
        with self._lock:
            return self._base(servable.base, keep=set()).loaded

    def acquire(self, servables: list[Servable]):
        """The loaded base shared by `servables` (all on one base), with every adapter they name
        attached and pinned (not evicted) until `release`; returns (loaded, adapter names in order)."""
        with self._lock:
            bases = {s.base for s in servables}
            if len(bases) != 1:
                raise ValueError("one batch, one base model")
            base = self._base(servables[0].base, keep=set())
            names = []
            for s in servables:
                if s.adapter:
                    self._adapter(base, s, keep={s2.adapter_name for s2 in servables})
                names.append(s.adapter_name)
            self._bases.move_to_end(servables[0].base)
            for name in {*names, BASE_ADAPTER}:
                base.pins[name] = base.pins.get(name, 0) + 1
            return base.loaded, names

    def release(self, servables: list[Servable]) -> None:
        with self._lock:
            base = self._bases.get(servables[0].base)
            if base is None:
                return
            for name in {*(s.adapter_name for s in servables), BASE_ADAPTER}:
                base.pins[name] = max(base.pins.get(name, 0) - 1, 0)
            self._make_room(0, keep_base=None, keep_adapters=set())  # a batch that needed more than fits: trim
            self._drop_deleted()

    def unload(self, folder: str | Path) -> None:
        """Free the models and adapters loaded from `folder` or below it (a deleted model's files):
        now, or for one a batch is generating with, as soon as that batch ends."""
        with self._lock:
            self._deleted.add(Path(folder).resolve())
            self._drop_deleted()

    def _drop_deleted(self) -> None:
        def deleted(path: str) -> bool:
            real = Path(path).resolve()
            return any(real == folder or folder in real.parents for folder in self._deleted)

        if not self._deleted:
            return
        waiting = False
        for ref, base in list(self._bases.items()):
            busy = bool(base.pins.get(BASE_ADAPTER))  # a batch is generating on it: no layer may go now
            if deleted(ref):
                if busy:
                    waiting = True
                else:
                    del self._bases[ref]
                continue
            for name, folder in list(base.adapter_folders.items()):
                if deleted(folder):
                    if busy:
                        waiting = True
                    else:
                        self._drop_adapter(base, name)
        if not waiting:
            self._deleted.clear()

    def _base(self, ref: str, keep: set[str]) -> _Base:
        if ref in self._bases:
            return self._bases[ref]
        folder = Path(ref)
        self._make_room(_folder_bytes(folder) if folder.is_dir() else 0, keep_base=None, keep_adapters=keep)
        loaded = load_model(ref, dtype=self.dtype, adapter_ok=False)
        loaded.model.eval()
        loaded.tokenizer.padding_side = "left"
        size = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
        self._bases[ref] = _Base(loaded, size)
        self.loads += 1
        log.debug("serving: loaded %s (%.1f MB)", ref, size / 2**20)
        return self._bases[ref]

    def _adapter(self, base: _Base, s: Servable, keep: set[str]) -> None:
        name = s.adapter_name
        if name in base.adapters:
            base.adapters.move_to_end(name)
            return
        self._make_room(_folder_bytes(Path(s.adapter)), keep_base=s.base, keep_adapters=keep)
        from peft import PeftModel

        model = base.loaded.model
        try:
            if isinstance(model, PeftModel):
                model.load_adapter(s.adapter, adapter_name=name)
                model.set_adapter(name)  # the active one may have been evicted; rows still pick their own
            else:
                model = PeftModel.from_pretrained(model, s.adapter, adapter_name=name)
                base.loaded = replace(base.loaded, model=model.eval())
        except Exception as err:  # noqa: BLE001 - a damaged or foreign adapter folder
            raise MentorError(f"cannot load the adapter {s.adapter}: its files are incomplete or damaged "
                              f"({str(err).splitlines()[0][:200]})") from None
        size = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if f".{name}." in n)
        base.adapters[name] = size
        base.adapter_folders[name] = s.adapter
        self.loads += 1

    def _make_room(self, needed: int, keep_base: str | None, keep_adapters: set[str]) -> None:
        """Evict least-recently-used adapters, then models, until `needed` more bytes fit."""
        if self.budget is None:
            return
        while self.used_bytes + needed > self.budget:
            victim = self._victim(keep_base, keep_adapters)
            if victim is None:
                log.warning("serving: %.1f MB more does not fit the memory budget of %.1f MB even after eviction",
                            needed / 2**20, self.budget / 2**20)
                return
            self.evictions += 1

    def _victim(self, keep_base: str | None, keep_adapters: set[str]) -> bool | None:
        for base in self._bases.values():  # least recently used base first
            if base.pins.get(BASE_ADAPTER):
                continue  # a batch is generating on this model: deleting a layer under it would break it
            for name in list(base.adapters):
                if name not in keep_adapters and not base.pins.get(name):
                    self._drop_adapter(base, name)
                    return True
        for ref in list(self._bases):
            if ref != keep_base and not self._bases[ref].pins.get(BASE_ADAPTER):
                del self._bases[ref]
                return True
        return None

    @staticmethod
    def _drop_adapter(base: _Base, name: str) -> None:
        base.loaded.model.delete_adapter(name)
        del base.adapters[name]
        base.adapter_folders.pop(name, None)
        if not base.adapters:  # PEFT would keep naming the deleted adapter as the active one
            base.loaded = replace(base.loaded, model=base.loaded.model.unload().eval())

    def loaded_names(self) -> dict[str, list[str]]:
        with self._lock:
            return {ref: list(b.adapters) for ref, b in self._bases.items()}


def adapter_names(loaded, names: list[str], n: int | None = None) -> list[str] | None:
    """The per-row adapter names a PEFT model needs (None for a plain model); `n` rows of one name."""
    from peft import PeftModel

    if not isinstance(loaded.model, PeftModel):
        return None
    return names * n if n is not None else names
