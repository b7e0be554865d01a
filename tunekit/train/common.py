"""What every training method shares: the trainer arguments, the row-kind checks, the result.

`training_arguments` is the one place where recipe settings become `TrainingArguments` fields;
each method adds only its own fields (max_length, packing, beta...) on top of its dict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tunekit.config import Recipe
from tunekit.data.formats import KIND_FOR_METHOD, METHOD_FOR_KIND, row_kind
from tunekit.errors import DataError
from tunekit.runs import RunPaths

_NEEDS = {
    "sft": "chat rows (messages, sharegpt, alpaca or prompt/completion)",
    "dpo": "preference rows (prompt, chosen, rejected)",
    "cpt": "raw text rows ({\"text\": ...})",
}


@dataclass
class TrainResult:
    output_dir: Path  # run.adapter_dir, or run.model_dir for full fine-tuning
    steps: int
    train_loss: float | None
    eval_loss: float | None
    runtime_s: float
    trainable_params: int
    total_params: int
    method: str = "sft"
    adapter: str = "lora"
    metrics: dict = field(default_factory=dict)  # last logged values (e.g. DPO rewards/margins)

    @property
    def adapter_dir(self) -> Path | None:
        """The PEFT adapter directory; None for full fine-tuning, which writes a whole model."""
        return None if self.adapter == "full" else self.output_dir


@dataclass
class BuiltTrainer:
    """A configured TRL trainer plus what the manifest needs to know about how it was built."""

    trainer: object
    model_path: str
    details: dict = field(default_factory=dict)


def split_key(split_name: str) -> str:
    """The recipe key a prepared split came from, for messages."""
    return "data.eval" if split_name == "val" else f"data.{split_name}"


def require_rows(rows: list[dict], split_name: str, method: str, key: str | None = None) -> None:
    """Each method learns from one kind of row; say which method fits the rows that are there."""
    other = next((kind for kind in map(row_kind, rows) if kind != KIND_FOR_METHOD[method]), None)
    if other is None:
        return
    hint = {
        "sft": "preference pairs are for DPO and raw text for continued pre-training (train.method dpo / cpt); "
        "for sft, point the recipe at chat data",
        "dpo": f"{other} rows are for train.method {METHOD_FOR_KIND[other]}; for dpo, point data.train at rows with "
        "prompt, chosen and rejected",
        "cpt": f"{other} rows are for train.method {METHOD_FOR_KIND[other]}; for cpt, point data.train at rows of raw text",
    }[method]
    raise DataError(f"{key or split_key(split_name)} holds {other} rows; train.method {method} needs {_NEEDS[method]}", hint=hint)


def training_arguments(recipe: Recipe, run: RunPaths, has_val: bool) -> dict:
    """Keyword arguments of `TrainingArguments` common to every method (SFTConfig, DPOConfig...)."""
    import torch

    from tunekit.train.robust import checkpoint_args

    train = recipe.train
    cuda = torch.cuda.is_available()
    eval_strategy = "no" if not has_val else ("steps" if train.eval_steps else "epoch")
    return dict(
        output_dir=str(run.checkpoints_dir),
        num_train_epochs=train.epochs,
        max_steps=train.max_steps,
        per_device_train_batch_size=train.batch_size,
        per_device_eval_batch_size=train.batch_size,
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        learning_rate=train.learning_rate,
        lr_scheduler_type=train.lr_scheduler,
        warmup_steps=train.warmup_ratio,  # a float in [0, 1) is a ratio of total steps
        weight_decay=train.weight_decay,
        max_grad_norm=train.max_grad_norm,
        logging_steps=train.logging_steps,
        logging_first_step=True,
        eval_strategy=eval_strategy,
        eval_steps=train.eval_steps,
        # Trackers (train.report_to) are added as callbacks by tunekit.train.robust, with their own log dirs.
        report_to="none",
        seed=train.seed,
        data_seed=train.seed,
        # Always explicit: TRL turns it on by default, which costs ~30-40% speed for memory that a
        # small model on CPU does not need. (transformers 5 warns that the name is deprecated.)
        gradient_checkpointing=train.gradient_checkpointing,
        # QLoRA computes in bf16 by design; elsewhere bf16 where the GPU supports it (TRL's configs
        # default to bf16=True, which fails on CPU).
        bf16=cuda and (train.adapter == "qlora" or torch.cuda.is_bf16_supported()),
        use_cpu=not cuda,
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=True,
        dataloader_num_workers=0,
        # Checkpoint cadence, rotation, best-by-validation-loss and resume switches.
        **checkpoint_args(recipe, run),
    )


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameters; PEFT's own count knows the real size of 4-bit weights."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def load_splits(recipe: Recipe, run: RunPaths, tokenizer) -> tuple[list[dict], list[dict], dict]:
    """The prepared train and validation rows (general data mixed in when train.mix is set), checked
    to be the kind of row the method learns from, and what the manifest says about them."""
    from tunekit.runs import read_jsonl

    method = recipe.train.method
    train_rows = read_jsonl(run.require(run.split("train"), "data prepare"))
    require_rows(train_rows, "train", method)
    val_file = run.split("val")
    val_rows = read_jsonl(val_file) if val_file.exists() else []
    require_rows(val_rows, "val", method)
    details: dict = {"train_rows": len(train_rows), "val_rows": len(val_rows)}
    if recipe.train.mix is not None:
        from tunekit.train.mixing import mix_general_rows

        train_rows, details["mix"] = mix_general_rows(recipe, run, train_rows, tokenizer)
        details["train_rows"] = len(train_rows)
    else:  # eval's contamination check reads this file as "what was trained on": none may linger
        run.mixed_train.unlink(missing_ok=True)
    return train_rows, val_rows, details


def check_train_rows(recipe: Recipe, run: RunPaths) -> None:
    """The kind check alone, before any tokenizer or weights are loaded."""
    from tunekit.runs import read_jsonl

    require_rows(read_jsonl(run.require(run.split("train"), "data prepare")), "train", recipe.train.method)
