"""Hyperparameter guidance and warnings for settings that often waste a run.

The starting points below are the usual ones for instruction tuning of 0.1B-70B decoder models;
they are where to begin, not limits. `risky_settings` turns the clearest ways to go wrong into
plain warnings, printed by `tunekit validate`, `tunekit estimate` and at the start of training.
"""

from __future__ import annotations

import json
import math

from tunekit.config import Recipe
from tunekit.runs import RunPaths

LORA_FAMILY = ("lora", "qlora", "dora", "rslora")

# (topic, advice): shown in `tunekit train --help` and at the top of docs/recipe.md.
GUIDE: list[tuple[str, str]] = [
    ("adapter", "start with LoRA; QLoRA when the base model's bf16 weights do not fit in GPU memory; "
     "full fine-tuning only with many examples (10k+) and memory for 16 bytes per parameter."),
    ("lora.r", "8-16 to teach a format, style or task; 32-64 to add domain knowledge; above 128 rarely helps."),
    ("lora.alpha", "about 2 x r; keep alpha / r fixed when you change r so the update scale stays the same."),
    ("lora.target_modules", "all-linear learns more per step than attention-only for ~3x the adapter size."),
    ("learning_rate", "LoRA/QLoRA/DoRA 1e-4 to 2e-4; full fine-tuning 1e-5 to 2e-5; DPO about ten times lower."),
    ("epochs", "1-3; more passes over a small set (< 1k examples) memorise it: watch the validation loss."),
    ("batch", "16-64 examples per optimizer step (batch_size x gradient_accumulation_steps); "
     "lower batch_size and raise accumulation when memory is short."),
    ("memory", "run `tunekit estimate recipe.yaml` first; gradient_checkpointing cuts activation memory "
     "several-fold for ~30% more time."),
]


def guide_text(paragraph_sep: str = "\n\n") -> str:
    return paragraph_sep.join(f"{topic}: {advice}" for topic, advice in GUIDE)


def _lora_scale(recipe: Recipe) -> float:
    lora = recipe.train.lora
    return lora.alpha / (math.sqrt(lora.r) if recipe.train.adapter == "rslora" else lora.r)


def _learning_rate(recipe: Recipe) -> list[str]:
    train = recipe.train
    lr, uses_adapter = train.learning_rate, train.adapter in LORA_FAMILY
    if train.method == "dpo":
        limit = 5e-5 if uses_adapter else 5e-6
        if lr > limit:
            return [f"train.learning_rate {lr:g} is high for DPO with {train.adapter} (> {limit:g}); DPO is tuned about "
                    "ten times lower than SFT and collapses the policy at high rates"]
        return []
    if uses_adapter and lr > 5e-4:
        return [f"train.learning_rate {lr:g} is high for {train.adapter} (> 5e-4); LoRA usually trains well at 1e-4 to "
                "2e-4 and tends to diverge or forget above 5e-4"]
    if uses_adapter and lr < 1e-5:
        return [f"train.learning_rate {lr:g} is very low for {train.adapter} (< 1e-5); the adapter will barely move "
                "(LoRA usually uses 1e-4 to 2e-4)"]
    if train.adapter == "full" and lr > 5e-5:
        return [f"train.learning_rate {lr:g} is high for full fine-tuning (> 5e-5); it risks wiping out what the base "
                "model knows (usual: 1e-5 to 2e-5)"]
    return []


def _lora_shape(recipe: Recipe) -> list[str]:
    if recipe.train.adapter not in LORA_FAMILY:
        return []
    lora, warnings = recipe.train.lora, []
    if lora.r > 128:
        warnings.append(f"train.lora.r {lora.r} is above 128: rarely better than 64, and it costs memory and time; "
                        "for that much capacity consider full fine-tuning")
    scale = _lora_scale(recipe)
    low, high = (1.0, 32.0) if recipe.train.adapter == "rslora" else (0.5, 4.0)
    rule = "alpha / sqrt(r)" if recipe.train.adapter == "rslora" else "alpha / r"
    if not low <= scale <= high:
        warnings.append(f"train.lora.alpha {lora.alpha} with r {lora.r} scales updates by {rule} = {scale:g}, outside "
                        f"{low:g}-{high:g}; updates will be {'tiny' if scale < low else 'large and unstable'} "
                        "(alpha = 2 x r is a common start)")
    return warnings


def _schedule(recipe: Recipe, n_train: int | None) -> list[str]:
    train, warnings = recipe.train, []
    if n_train is None:
        return warnings
    if train.max_steps <= 0 and train.epochs > 5 and n_train < 1000:
        warnings.append(f"train.epochs {train.epochs:g} on {n_train} training examples: more than 5 passes over fewer "
                        "than 1k examples usually memorises them; use 1-3 epochs and watch the validation loss")
    per_step = train.batch_size * train.gradient_accumulation_steps
    steps = train.max_steps if train.max_steps > 0 else math.ceil(math.ceil(n_train / per_step) * train.epochs)
    if steps < 10:
        warnings.append(f"only {steps} optimizer step(s) in total ({n_train} examples, {per_step} per step); "
                        "the learning-rate schedule barely applies: lower batch_size x gradient_accumulation_steps")
    return warnings


def risky_settings(recipe: Recipe, n_train_examples: int | None) -> list[str]:
    """Plain-language warnings for settings that often ruin or waste a run (empty when none).

    `n_train_examples` is the number of training rows when known (the checks that need it are
    skipped otherwise).
    """
    warnings = [*_learning_rate(recipe), *_lora_shape(recipe), *_schedule(recipe, n_train_examples)]
    if recipe.train.warmup_ratio > 0.2:
        ratio = recipe.train.warmup_ratio
        warnings.append(f"train.warmup_ratio {ratio:g} spends over 20% of training warming up (usual: 0.03-0.1)")
    return warnings


def count_train_examples(recipe: Recipe) -> int | None:
    """Training rows without reading the data deeply: the prepared count, else the non-blank lines
    of a JSONL train file less the held-out share; None for other formats."""
    run = RunPaths(recipe.run_dir)
    if run.data_report.is_file():
        return json.loads(run.data_report.read_text(encoding="utf-8"))["splits"]["train"]["rows"]
    path = recipe.data.train
    if path.suffix.lower() not in (".jsonl", ".ndjson") or not path.is_file():
        return None
    with path.open("rb") as fh:
        lines = sum(1 for line in fh if line.strip())
    data = recipe.data
    held_out = (data.val_fraction if data.eval is None else 0.0) + (data.test_fraction if data.test is None else 0.0)
    return round(lines * (1 - held_out))
