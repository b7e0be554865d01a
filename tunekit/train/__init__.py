"""Training stage: SFT, DPO and continued pre-training with LoRA, QLoRA, DoRA, rsLoRA or full fine-tuning.

`run_training(recipe, run)` is the one entry point; the method comes from `recipe.train.method`.
The names are resolved on first use, so importing a light submodule (advice, estimate) from the
CLI does not pay for importing transformers.
"""

from __future__ import annotations

import importlib

_EXPORTS = {"TrainResult": "tunekit.train.common", "run_sft": "tunekit.train.runner", "run_training": "tunekit.train.runner"}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tunekit.train' has no attribute {name!r}")
