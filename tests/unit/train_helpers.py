"""A tiny-model training recipe and its run directory, shared by the training tests."""

from __future__ import annotations

from tunekit.config import parse_recipe
from tunekit.runs import RunPaths


def tiny_train_run(tmp_path, tiny_model_dir, **train):
    """A recipe on the tiny model (constant lr, no warmup, a log line per step) and its RunPaths."""
    recipe = parse_recipe(
        {
            "base_model": str(tiny_model_dir),
            "data": {"train": "train.jsonl", "max_length": 128},
            "train": {"batch_size": 4, "logging_steps": 1, "warmup_ratio": 0.0, "lr_scheduler": "constant", **train},
            "output_dir": "runs",
            "name": "t",
        },
        base_dir=tmp_path,
    )
    return recipe, RunPaths(recipe.run_dir)
