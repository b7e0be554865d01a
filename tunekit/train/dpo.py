"""Direct preference optimisation on TRL's DPOTrainer.

Where training starts, and what the reference model is, without a second copy of the weights:

- From the base model with an adapter (lora, qlora, dora, rslora): a fresh adapter is trained;
  the reference is the same base with the adapter switched off (TRL's PEFT path).
- From an SFT adapter (`train.dpo.init_from`: a run directory or its `adapter/`): the SFT
  adapter itself keeps training on the base, so the result is again one adapter on
  `base_model` that eval, export and serve load as usual. The reference is TRL's frozen "ref"
  copy of the starting adapter: the SFT model, at the cost of one more adapter, not a model.
  (The alternative, merging the SFT adapter into the base and training a new one on top, would
  leave an adapter that only fits the merged weights.)
- Full fine-tuning (`train.adapter: full`, from the base, from a run's `model/`, or from an SFT
  adapter merged in memory): the reference log-probabilities of every pair are computed once
  before training (`precompute_ref_log_probs`), so no reference copy stays in memory.
"""

from __future__ import annotations

import json
from pathlib import Path

from tunekit.config import Recipe
from tunekit.console import console
from tunekit.errors import ModelError, RunDirError
from tunekit.models import load_model, resolve_model
from tunekit.runs import RunPaths
from tunekit.train.common import BuiltTrainer, check_train_rows, load_splits, training_arguments
from tunekit.train.manifest import model_fingerprint
from tunekit.train.modeling import load_training_model, peft_config, training_tokenizer


def resolve_init_from(path: Path) -> tuple[str, Path]:
    """('adapter' | 'model', directory) for an init_from path: a run dir, an adapter dir or a model dir."""
    hint = "point train.dpo.init_from at an SFT run directory (holding adapter/ or model/), an adapter directory or a model directory"
    if not path.exists():
        raise RunDirError(f"train.dpo.init_from: {path} not found", hint=hint)
    for kind, candidate, marker in (
        ("adapter", path, "adapter_config.json"),
        ("adapter", path / "adapter", "adapter_config.json"),
        ("model", path / "model", "config.json"),
        ("model", path, "config.json"),
    ):
        if (candidate / marker).is_file():
            return kind, candidate
    raise RunDirError(f"train.dpo.init_from: {path} holds no adapter (adapter_config.json) and no model (config.json)", hint=hint)


def _check_adapter_base(adapter_dir: Path, model_path: str) -> None:
    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    trained_on = config.get("base_model_name_or_path")
    if trained_on and trained_on != model_path:
        console.print(
            f"[yellow]warning:[/] the adapter in {adapter_dir} was trained on '{trained_on}', this recipe's base model is "
            f"'{model_path}'; they must be the same model"
        )


def starting_point(recipe: Recipe, model_path: str, tokenizer=None, added_tokens: list[int] | None = None):
    """(policy model, peft_config for the trainer or None, manifest details, path of the weights loaded).
    From the base model, `tokenizer`'s rows are fitted and the rows of `added_tokens` trained."""
    from peft import PeftModel

    adapter = recipe.train.adapter
    init = recipe.train.dpo.init_from
    load = dict(trust_remote_code=recipe.trust_remote_code, allow_pickle=recipe.allow_pickle)
    if init is None:
        reference = "precomputed from the base model" if adapter == "full" else "the base model (adapter disabled)"
        model = load_training_model(recipe, model_path, tokenizer)
        return model, peft_config(recipe, model, added_tokens), {"start": "base model", "reference": reference}, model_path
    kind, where = resolve_init_from(init)
    details = {"init_from": str(where), "init_kind": kind, "init_sha256": model_fingerprint(str(where)).get("sha256")}
    if kind == "model":
        if adapter != "full":
            raise ModelError(
                f"train.dpo.init_from: {where} holds a full model, and a {adapter} adapter trained on it would not fit base_model",
                hint=f"set base_model: {where} and leave out train.dpo.init_from, or use train.adapter: full",
            )
        return load_model(str(where), **load), None, {**details, "start": "full model", "reference": "precomputed from it"}, str(where)
    _check_adapter_base(where, model_path)
    # Rows for the tokens the chat template added, which an SFT adapter trained with it expects.
    base = load_training_model(recipe, model_path, tokenizer)
    if adapter == "full":
        merged = PeftModel.from_pretrained(base, str(where)).merge_and_unload()
        return merged, None, {**details, "start": "base + adapter merged", "reference": "precomputed from it"}, model_path
    # The adapter's own config (rank, targets, DoRA...) is kept: train.lora does not apply here.
    model = PeftModel.from_pretrained(base, str(where), is_trainable=True)
    return model, None, {**details, "start": "SFT adapter", "reference": "frozen copy of the SFT adapter"}, model_path


def preference_dataset(rows: list[dict]):
    """Prepared preference rows in TRL's conversational form (the `meta` column left out)."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows])


def dpo_args(recipe: Recipe, run: RunPaths, has_val: bool):
    from trl import DPOConfig

    dpo = recipe.train.dpo
    return DPOConfig(
        **training_arguments(recipe, run, has_val),
        beta=dpo.beta,
        loss_type=[dpo.loss_type],
        max_length=recipe.data.max_length,
        # Full fine-tuning keeps no reference copy: its log-probs are computed once up front.
        precompute_ref_log_probs=recipe.train.adapter == "full",
    )


def build(recipe: Recipe, run: RunPaths, callbacks: list | None = None) -> BuiltTrainer:
    """The configured DPOTrainer on the prepared preference splits."""
    from transformers import PrinterCallback
    from trl import DPOTrainer

    check_train_rows(recipe, run)  # before any model is loaded
    model_path = resolve_model(recipe.base_model, allow_pickle=recipe.allow_pickle)
    tokenizer, added_tokens = training_tokenizer(recipe, model_path)
    train_rows, val_rows, details = load_splits(recipe, run, tokenizer)
    model, config, start, weights_path = starting_point(recipe, model_path, tokenizer, added_tokens)
    val_ds = preference_dataset(val_rows) if val_rows else None
    trainer = DPOTrainer(
        model=model,
        args=dpo_args(recipe, run, has_val=val_ds is not None),
        train_dataset=preference_dataset(train_rows),
        eval_dataset=val_ds,
        processing_class=tokenizer,
        peft_config=config,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)
    details.update(start, beta=recipe.train.dpo.beta, loss_type=recipe.train.dpo.loss_type)
    return BuiltTrainer(trainer, weights_path, details)
