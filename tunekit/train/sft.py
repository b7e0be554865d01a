"""Supervised fine-tuning on chats, on TRL's SFTTrainer (LoRA, QLoRA, DoRA, rsLoRA or full).

The data arrives pre-tokenized with an assistant-only mask (tunekit.train.masking), so TRL
builds labels from our `assistant_masks` column and does no templating of its own.

Packing (train.packing) is TRL's best-fit-decreasing packing, which turns on padding-free
batches: the examples of a batch are laid end to end in one row and `position_ids` restart at 0
at each example. With no attention mask, transformers 5 derives a block-diagonal mask from
those position_ids (masking_utils.find_packed_sequence_indices) for sdpa and eager attention,
and the varlen kernels use the `cu_seq_lens` TRL's collator adds, so no example attends to
another. The labels keep the assistant-only mask; the first token of each packed example is
masked too, so no example learns to predict across a boundary.
"""

from __future__ import annotations

from tunekit.config import Recipe
from tunekit.errors import DataError
from tunekit.models import resolve_model
from tunekit.runs import RunPaths
from tunekit.train.common import BuiltTrainer, check_train_rows, load_splits, require_rows, training_arguments
from tunekit.train.masking import tokenize_chat
from tunekit.train.modeling import load_training_model, peft_config, training_tokenizer


def require_chat_rows(rows: list[dict], split_name: str) -> None:
    """SFT learns from conversations; preference pairs and raw text need another method."""
    require_rows(rows, split_name, "sft")


def tokenize_split(tokenizer, rows: list[dict], max_length: int, split_name: str):
    """Rows in canonical form → a datasets.Dataset of input_ids + assistant_masks."""
    from datasets import Dataset

    require_chat_rows(rows, split_name)
    records = []
    for row in rows:
        chat = tokenize_chat(tokenizer, row["messages"], max_length=max_length)
        if chat.trained_tokens == 0:
            # Only possible when truncation cut away every assistant token: such a row teaches
            # nothing, and TRL would silently drop it. Say so instead.
            meta = row.get("meta", {})
            raise DataError(
                f"{split_name} example from {meta.get('source', '?')}:{meta.get('line', '?')} has no assistant tokens "
                f"left within max_length={max_length}",
                hint="raise data.max_length or set data.over_length: drop",
            )
        records.append({"input_ids": chat.input_ids, "assistant_masks": chat.assistant_masks})
    return Dataset.from_list(records)


def sft_args(recipe: Recipe, run: RunPaths, has_val: bool, **method_fields):
    from trl import SFTConfig

    fields = dict(max_length=recipe.data.max_length, packing=recipe.train.packing, packing_strategy="bfd")
    fields.update(method_fields)
    # Method fields override the common ones (the CUDA fast path sets bf16, optim, checkpointing...).
    return SFTConfig(**{**training_arguments(recipe, run, has_val), **fields})


def build(recipe: Recipe, run: RunPaths, callbacks: list | None = None) -> BuiltTrainer:
    """The configured SFTTrainer on the prepared (and mixed) chat splits."""
    check_train_rows(recipe, run)  # before any model is loaded
    model_path = resolve_model(recipe.base_model, allow_pickle=recipe.allow_pickle)
    tokenizer, added_tokens = training_tokenizer(recipe, model_path)
    train_rows, val_rows, details = load_splits(recipe, run, tokenizer)
    max_length = recipe.data.max_length
    train_ds = tokenize_split(tokenizer, train_rows, max_length, "train")
    val_ds = tokenize_split(tokenizer, val_rows, max_length, "val") if val_rows else None
    model = load_training_model(recipe, model_path, tokenizer)
    trainer, fast_details = make_trainer(recipe, run, model, tokenizer, train_ds, val_ds, callbacks, added_tokens)
    if added_tokens:
        details["added_tokens"] = tokenizer.convert_ids_to_tokens(added_tokens)
    details.update(fast_details)
    details["packing"] = recipe.train.packing
    if recipe.train.packing:
        details["packed_rows"] = len(trainer.train_dataset)
    return BuiltTrainer(trainer, model_path, details)


def make_trainer(
    recipe: Recipe, run: RunPaths, model, tokenizer, train_ds, val_ds=None, callbacks: list | None = None, added_tokens: list[int] | None = None
):
    """(SFTTrainer, manifest details) for a loaded model and tokenized splits, with the CUDA fast
    path (tunekit.train.fastpath) planned and applied; also used by bench/train_throughput.py.
    `added_tokens`: ids the chat template added to the vocabulary, whose rows are trained too."""
    from transformers import PrinterCallback
    from trl import SFTTrainer

    from tunekit.train import cpupath, fastpath, lm_head

    plan = fastpath.plan_for(recipe, model)
    fastpath.apply_to_model(model, plan)
    cpu_args, details = cpupath.training_args(recipe, model, train_ds) if plan.device != "cuda" else ({}, {})
    trainer = SFTTrainer(
        model=model,
        args=sft_args(recipe, run, has_val=val_ds is not None, **fastpath.training_args(plan), **cpu_args),
        train_dataset=train_ds,
        eval_dataset=val_ds,
        processing_class=tokenizer,
        peft_config=peft_config(recipe, model, added_tokens),
        callbacks=callbacks,
    )
    # Our progress bar and metrics.jsonl replace the trainer's raw dict printing.
    trainer.remove_callback(PrinterCallback)
    base = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    compact_head = lm_head.score_trained_positions_only(base)
    return trainer, {"fast_path": plan.to_manifest(), "lm_head_trained_positions_only": compact_head, **details}


def build_trainer(recipe: Recipe, run: RunPaths, callbacks: list | None = None):
    """(trainer, model path): the SFT trainer alone, for tests and tools that inspect it."""
    built = build(recipe, run, callbacks)
    return built.trainer, built.model_path
