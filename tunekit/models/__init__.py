"""Resolve and load base models: the embedded default, local directories, GGUF files, hub ids."""

from tunekit.models.loading import load_model, load_tokenizer, resolve_model, end_of_turn_ids

__all__ = ["load_model", "load_tokenizer", "resolve_model", "end_of_turn_ids"]
