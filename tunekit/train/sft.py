"""Supervised fine-tuning with LoRA, on TRL's SFTTrainer + PEFT.

The data arrives pre-tokenized with an assistant-only mask (tunekit.train.masking), so TRL
builds labels from our `assistant_masks` column and does no templating of its own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from tunekit.config import Recipe
from tunekit.console import console
from tunekit.errors import DataError
from tunekit.models import load_model, load_tokenizer, resolve_model
from tunekit.runs import RunPaths, read_jsonl, write_json
from tunekit.train import manifest as mf
from tunekit.train.callbacks import MetricsLog, RichProgress, plot_loss
from tunekit.train.masking import tokenize_chat


@dataclass
class TrainResult:
    adapter_dir: Path
    steps: int
    train_loss: float | None
    eval_loss: float | None
    runtime_s: float
    trainable_params: int
    total_params: int


def _row_kind(row: dict) -> str:
    if "messages" in row:
        return "chat"
    return "preference" if "chosen" in row else "text"


def require_chat_rows(rows: list[dict], split_name: str) -> None:
    """SFT learns from conversations; preference pairs and raw text need another method."""
    other = next((kind for kind in map(_row_kind, rows) if kind != "chat"), None)
    if other is None:
        return
    key = "data.eval" if split_name == "val" else f"data.{split_name}"
    raise DataError(
        f"{key} holds {other} rows; train.method sft needs chat rows (messages, sharegpt, alpaca or prompt/completion)",
        hint="preference pairs are for DPO and raw text for continued pre-training (train.method dpo / cpt, planned); "
        "for sft, point the recipe at chat data",
    )


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


def lora_config(recipe: Recipe):
    from peft import LoraConfig

    lora = recipe.train.lora
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )


def sft_args(recipe: Recipe, run: RunPaths, has_val: bool):
    import torch
    from trl import SFTConfig

    train = recipe.train
    cuda = torch.cuda.is_available()
    eval_strategy = "no" if not has_val else ("steps" if train.eval_steps else "epoch")
    return SFTConfig(
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
        save_strategy="no",
        report_to="none",
        seed=train.seed,
        data_seed=train.seed,
        max_length=recipe.data.max_length,
        # Always explicit: TRL turns it on by default, which costs ~30-40% speed for memory that a
        # small model on CPU does not need. (transformers 5 warns that the name is deprecated.)
        gradient_checkpointing=train.gradient_checkpointing,
        bf16=cuda and torch.cuda.is_bf16_supported(),
        use_cpu=not cuda,
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def build_trainer(recipe: Recipe, run: RunPaths, callbacks: list | None = None):
    """The configured SFTTrainer (LoRA on the base model, tokenized splits) and the model path."""
    from transformers import PrinterCallback
    from trl import SFTTrainer

    train_file = run.require(run.split("train"), "data prepare")
    val_file = run.split("val")
    train_rows = read_jsonl(train_file)
    require_chat_rows(train_rows, "train")  # before any model is loaded
    model_path = resolve_model(recipe.base_model, allow_pickle=recipe.allow_pickle)
    tokenizer = load_tokenizer(model_path, trust_remote_code=recipe.trust_remote_code)
    max_length = recipe.data.max_length
    train_ds = tokenize_split(tokenizer, train_rows, max_length, "train")
    val_rows = read_jsonl(val_file) if val_file.exists() else []
    val_ds = tokenize_split(tokenizer, val_rows, max_length, "val") if val_rows else None
    model = load_model(model_path, trust_remote_code=recipe.trust_remote_code, allow_pickle=recipe.allow_pickle)
    trainer = SFTTrainer(
        model=model,
        args=sft_args(recipe, run, has_val=val_ds is not None),
        train_dataset=train_ds,
        eval_dataset=val_ds,
        processing_class=tokenizer,
        peft_config=lora_config(recipe),
        callbacks=callbacks,
    )
    # Our progress bar and metrics.jsonl replace the trainer's raw dict printing.
    trainer.remove_callback(PrinterCallback)
    return trainer, model_path


def run_sft(recipe: Recipe, run: RunPaths, *, show_progress: bool = True, callbacks: list | None = None) -> TrainResult:
    """Train a LoRA adapter on the prepared splits of `run`; write adapter, metrics, plot, manifest."""
    started = mf.now_iso()
    run.root.mkdir(parents=True, exist_ok=True)
    run.recipe.write_text(recipe.to_yaml(), encoding="utf-8")
    metrics = MetricsLog(run.metrics)
    extra = [RichProgress(metrics)] if show_progress else []
    trainer, model_path = build_trainer(recipe, run, [metrics, *extra, *(callbacks or [])])
    trainable, total = trainer.model.get_nb_trainable_parameters()
    console.print(
        f"training LoRA r={recipe.train.lora.r} on {len(trainer.train_dataset)} examples "
        f"({trainable:,} of {total:,} parameters trainable, {100 * trainable / total:.2f}%)"
    )
    t0 = time.perf_counter()
    output = trainer.train()
    runtime = time.perf_counter() - t0
    eval_loss = metrics.latest.get("eval_loss")
    if trainer.eval_dataset is not None and eval_loss is None:  # max_steps ended before a scheduled evaluation
        eval_loss = trainer.evaluate()["eval_loss"]
    if run.checkpoints_dir.is_dir() and not any(run.checkpoints_dir.iterdir()):
        run.checkpoints_dir.rmdir()

    trainer.model.save_pretrained(run.adapter_dir)
    trainer.processing_class.save_pretrained(run.adapter_dir)
    plot_loss(run.metrics, run.loss_plot)
    result = TrainResult(
        adapter_dir=run.adapter_dir,
        steps=output.global_step,
        train_loss=output.training_loss,
        eval_loss=eval_loss,
        runtime_s=runtime,
        trainable_params=trainable,
        total_params=total,
    )
    write_manifest(recipe, run, model_path, started, result)
    return result


def write_manifest(recipe: Recipe, run: RunPaths, model_path: str, started: str, result: TrainResult) -> None:
    datasets = {
        name: {"path": str(run.split(name)), "sha256": mf.sha256_file(run.split(name))}
        for name in ("train", "val", "test")
        if run.split(name).exists()
    }
    sources = {
        str(p): mf.sha256_file(p) for p in (recipe.data.train, recipe.data.eval, recipe.data.test) if p is not None and p.exists()
    }
    write_json(
        run.manifest,
        {
            "run": recipe.run_name,
            "method": recipe.train.method,
            "adapter": recipe.train.adapter,
            "base_model": {"name": recipe.base_model, **mf.model_fingerprint(model_path)},
            "datasets": {"prepared": datasets, "sources": sources},
            "seed": {"data": recipe.data.seed, "train": recipe.train.seed},
            "git": mf.git_commit(recipe.source.parent if recipe.source else Path.cwd()),
            "packages": mf.package_versions(),
            "hardware": mf.hardware(),
            "started": started,
            "finished": mf.now_iso(),
            "result": {
                "steps": result.steps,
                "train_loss": result.train_loss,
                "eval_loss": result.eval_loss,
                "runtime_s": round(result.runtime_s, 2),
                "trainable_params": result.trainable_params,
                "total_params": result.total_params,
            },
        },
    )
