"""What a run produced and how to load it: the one place eval, export and serve ask.

A run's training leaves exactly one trained artifact: a PEFT adapter in `adapter/` (LoRA, QLoRA,
DoRA, DPO on an adapter) or, for a full fine-tune, a complete model in `model/`. The merged export
(`export/merged`) is derived from it and is only used when asked for by name (eval target
`merged`, or serving that directory). Every adapter is attached through `attach_adapter`, which
turns a base/adapter mismatch into one clear error instead of a PEFT shape traceback.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tunekit.errors import ModelError, RunDirError
from tunekit.runs import RunPaths

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


@dataclass(frozen=True)
class Trained:
    kind: Literal["adapter", "full"]
    path: Path  # the adapter directory, or the full model's directory


def trained_artifact(run: RunPaths) -> Trained:
    """The artifact training left in `run`: `model/` for a full fine-tune, else `adapter/`."""
    if (run.model_dir / "config.json").is_file():
        return Trained("full", run.model_dir)
    if (run.adapter_dir / ADAPTER_CONFIG).is_file():
        return Trained("adapter", run.adapter_dir)
    raise RunDirError(
        f"no trained model in {run.root}: neither {run.adapter_dir / ADAPTER_CONFIG} nor {run.model_dir / 'config.json'} found",
        hint="run `tunekit train` first (or `tunekit run` for every stage)",
    )


def check_adapter_dir(adapter_dir: Path, *, allow_pickle: bool = False) -> dict:
    """The adapter's `adapter_config.json`, after checking the directory really holds a PEFT adapter
    (and that its weights are safetensors unless pickled weights were allowed)."""
    adapter_dir = Path(adapter_dir)
    config_path = adapter_dir / ADAPTER_CONFIG
    present = [name for name in ADAPTER_WEIGHTS if (adapter_dir / name).is_file()]
    if not config_path.is_file() or not present:
        raise RunDirError(
            f"{adapter_dir} is not a PEFT adapter directory ({ADAPTER_CONFIG} and adapter weights expected)",
            hint="point at the adapter/ folder of a trained run, or run `tunekit train` again to write it",
        )
    if present == ["adapter_model.bin"] and not allow_pickle:
        raise ModelError(
            f"{adapter_dir} holds only pickled adapter weights (adapter_model.bin), which can run arbitrary code when loaded",
            hint="convert them to safetensors, or set `allow_pickle: true` if you trust the files",
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{config_path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ModelError(f"{config_path} is not a JSON object")
    return config


def tokenizer_source(adapter_dir: Path, base_path: str) -> str:
    """Training saves the tokenizer (chat template included) next to the adapter; prefer it over the base's."""
    return str(adapter_dir) if (Path(adapter_dir) / "tokenizer_config.json").is_file() else base_path


def _fit_added_tokens(model, adapter_dir: Path, config: dict) -> None:
    """An adapter trained with tokens its chat template added (its embeddings in `modules_to_save`)
    expects a base with rows for them: grow the base as training did, from the tokenizer saved
    next to the adapter."""
    trains_embeddings = config.get("modules_to_save") or config.get("trainable_token_indices")
    if not trains_embeddings or not (Path(adapter_dir) / "tokenizer_config.json").is_file():
        return
    from transformers import AutoTokenizer

    from tunekit.models.templates import resize_for_tokenizer

    resize_for_tokenizer(model, AutoTokenizer.from_pretrained(str(adapter_dir)))


def attach_adapter(model, adapter_dir: Path, base_label: str, *, name: str = "default", allow_pickle: bool = False):
    """`model` with the adapter in `adapter_dir` attached under `name`.

    A plain model becomes a PeftModel; on a PeftModel the adapter is added next to the ones it has
    (one shared copy of the base weights). An adapter trained on another base (other shapes or
    module names) or with unreadable weights raises ModelError with the reason; a PeftModel is left
    as it was.
    """
    from peft import PeftModel
    from safetensors import SafetensorError

    config = check_adapter_dir(adapter_dir, allow_pickle=allow_pickle)
    if not isinstance(model, PeftModel):
        _fit_added_tokens(model, adapter_dir, config)
    try:
        if isinstance(model, PeftModel):
            model.load_adapter(str(adapter_dir), adapter_name=name)
            return model
        return PeftModel.from_pretrained(model, str(adapter_dir), adapter_name=name)
    except (RuntimeError, ValueError, KeyError, OSError, SafetensorError) as exc:  # other shapes or modules, a corrupt file
        if isinstance(model, PeftModel) and name in getattr(model, "peft_config", {}):
            model.delete_adapter(name)  # a half-loaded adapter must not stay behind
        first_line = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"the adapter in {adapter_dir} does not fit base model '{base_label}': {first_line}",
            hint="use the base_model the adapter was trained on",
        ) from None


def load_with_adapter(
    base_path: str,
    adapter_dir: Path,
    *,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
):
    """(PeftModel, tokenizer) for base + adapter, on the CPU, the tokenizer the adapter was trained with."""
    from tunekit.models.loading import load_model, load_tokenizer

    check_adapter_dir(adapter_dir, allow_pickle=allow_pickle)
    tokenizer = load_tokenizer(tokenizer_source(adapter_dir, base_path), trust_remote_code=trust_remote_code)
    base = load_model(base_path, dtype=dtype, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    return attach_adapter(base, adapter_dir, base_path, allow_pickle=allow_pickle), tokenizer
