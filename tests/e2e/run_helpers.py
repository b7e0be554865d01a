"""A prepared tiny training run and the environment of a real `python -m tunekit train` process,
shared by the resume and multi-process training tests."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tunekit.runs import RunPaths, write_jsonl


def write_prepared_run(root: Path, tiny_model_dir: Path, name: str, **train) -> tuple[Path, RunPaths]:
    """A recipe plus an already-prepared run directory (train/val splits), ready for `tunekit train`."""
    rows = [
        {"messages": [{"role": "user", "content": f"Ticket {i}: parcel {i * 7} is late."},
                      {"role": "assistant", "content": json.dumps({"category": "shipping", "priority": ["low", "high"][i % 2]})}]}
        for i in range(24)
    ]
    write_jsonl(root / "train.jsonl", rows)
    settings = {"batch_size": 4, "logging_steps": 1, "learning_rate": 1e-3, "warmup_ratio": 0.1, **train}
    recipe = root / f"{name}.yaml"
    recipe.write_text(
        f"base_model: {tiny_model_dir}\nname: {name}\noutput_dir: runs\n"
        f"data:\n  train: train.jsonl\n  max_length: 128\n"
        "train:\n" + "".join(f"  {key}: {json.dumps(value)}\n" for key, value in settings.items())
    )
    run = RunPaths(root / "runs" / name)
    write_jsonl(run.split("train"), rows[:20])  # 5 steps per epoch: the run crosses epochs
    write_jsonl(run.split("val"), rows[20:])
    return recipe, run


def tunekit_env() -> dict:
    # One thread per process: the CI machine has 2 cores, and oversubscribed threads slow every step.
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "200", "CUDA_VISIBLE_DEVICES": ""}
