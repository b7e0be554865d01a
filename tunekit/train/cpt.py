"""Continued pre-training on raw text, on TRL's SFTTrainer in language-modelling mode.

Every `text` row gets the tokenizer's end-of-text token and the loss covers every token. Rows are
packed into rows of at most `data.max_length` tokens with TRL's `bfd_split` strategy: best-fit
packing that splits a document longer than max_length into pieces instead of cutting its
tail, so no token of the corpus is lost. Packed rows are padding-free and attention stays
within each document (see tunekit.train.sft for how transformers builds that mask).
"""

from __future__ import annotations

from tunekit.config import Recipe
from tunekit.models import resolve_model
from tunekit.runs import RunPaths
from tunekit.train.common import BuiltTrainer, check_train_rows, load_splits
from tunekit.train.modeling import load_training_model, peft_config, training_tokenizer
from tunekit.train.sft import sft_args

PACKING_STRATEGY = "bfd_split"


def text_dataset(rows: list[dict]):
    from datasets import Dataset

    return Dataset.from_list([{"text": row["text"]} for row in rows])


def build(recipe: Recipe, run: RunPaths, callbacks: list | None = None) -> BuiltTrainer:
    """The configured trainer for continued pre-training on the prepared (and mixed) text splits."""
    from transformers import PrinterCallback
    from trl import SFTTrainer

    check_train_rows(recipe, run)  # before any model is loaded
    model_path = resolve_model(recipe.base_model, allow_pickle=recipe.allow_pickle)
    tokenizer, added_tokens = training_tokenizer(recipe, model_path)
    train_rows, val_rows, details = load_splits(recipe, run, tokenizer)
    val_ds = text_dataset(val_rows) if val_rows else None
    args = sft_args(
        recipe,
        run,
        has_val=val_ds is not None,
        packing=True,
        packing_strategy=PACKING_STRATEGY,
        dataset_text_field="text",
        completion_only_loss=False,
        assistant_only_loss=False,
    )
    model = load_training_model(recipe, model_path, tokenizer)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=text_dataset(train_rows),
        eval_dataset=val_ds,
        processing_class=tokenizer,
        peft_config=peft_config(recipe, model, added_tokens),
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)
    packed = trainer.train_dataset
    details.update(
        packing=True,
        packing_strategy=PACKING_STRATEGY,
        packed_rows=len(packed),
        train_tokens=sum(len(ids) for ids in packed["input_ids"]),
    )
    return BuiltTrainer(trainer, model_path, details)
