"""Model references: resolve and load any model a user names (hub id, folder, GGUF, alias, tiny, random)."""

from mentor.models.resolve import LoadedModel, cache_root, load_model, load_tokenizer, model_config, resolve

__all__ = ["LoadedModel", "cache_root", "load_model", "load_tokenizer", "model_config", "resolve"]
