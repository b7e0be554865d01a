"""`train`: the one entry point of the train stage, for every method.

    recipe + prepared run dir → build the method's trainer → train → save adapter/ (or model/),
    metrics.jsonl, loss.png, manifest.json

The method only decides how its trainer is built (sft.build, dpo.build, cpt.build); everything
else — callbacks, resuming, saving, the manifest — happens here, once.
"""

from __future__ import annotations

import time
from pathlib import Path

from tunekit.config import Recipe
from tunekit.console import console
from tunekit.runs import RunPaths, sha256_file, write_json
from tunekit.train import cpt, dpo, manifest, sft
from tunekit.train.advice import risky_settings
from tunekit.train.common import TrainResult, count_parameters
from tunekit.train.modeling import adapter_details, check_adapter_supported

BUILDERS = {"sft": sft.build, "dpo": dpo.build, "cpt": cpt.build}
# DPO's own figures of merit, kept in the result and the manifest next to the losses.
_REWARD_KEYS = ("rewards/margins", "rewards/accuracies", "eval_rewards/margins", "eval_rewards/accuracies")


def train(
    recipe: Recipe, run: RunPaths, *, resume: bool = False, show_progress: bool = True, callbacks: list | None = None
) -> TrainResult:
    """Train with `recipe.train.method` on the prepared splits of `run`; write every artifact.

    `resume` continues from the newest complete checkpoint in the run directory."""
    # Here, not at the top: they subclass transformers' callback, and `tunekit.train` must stay cheap to
    # import (the CLI's help and `tunekit validate` read tunekit.train.advice).
    from tunekit.train import robust
    from tunekit.train.callbacks import MetricsLog, RichProgress, plot_loss

    check_adapter_supported(recipe)  # a GPU-only option fails before any data or weights are read
    started = manifest.now_iso()
    main_process = robust.is_main_process()  # under accelerate launch / torchrun only rank 0 writes and prints
    resume_from = robust.find_resume_checkpoint(run) if resume else None  # before any weights load
    if main_process:
        run.root.mkdir(parents=True, exist_ok=True)
        run.recipe.write_text(recipe.to_yaml(), encoding="utf-8")
    metrics = MetricsLog(run.metrics)
    extra = [RichProgress(metrics)] if show_progress else []
    safety = robust.robust_callbacks(recipe, run)  # checkpoints, NaN/inf halt, Ctrl-C, early stopping, trackers
    built = BUILDERS[recipe.train.method](recipe, run, [metrics, *extra, *(callbacks or []), *safety])
    trainer = built.trainer
    if recipe.train.fast.fold_lora_dropout and trainer.args.device.type != "cuda":
        from tunekit.train.lora_dropout import fold_lora_dropout

        built.details["lora_dropout_folded_modules"] = fold_lora_dropout(trainer.model)
    trainable, total = count_parameters(trainer.model)
    if main_process:
        for warning in risky_settings(recipe, len(trainer.train_dataset)):
            console.print(f"[yellow]warning:[/] {warning}")
        console.print(
            f"training {recipe.train.method} ({_describe_adapter(recipe)}) on {len(trainer.train_dataset)} rows "
            f"({trainable:,} of {total:,} parameters trainable, {100 * trainable / total:.2f}%)"
        )
        micro = built.details.get("cpu_micro_batch")
        if micro and micro["rows"] != recipe.train.batch_size:
            console.print(
                f"  each batch of {recipe.train.batch_size} rows runs as {recipe.train.batch_size // micro['rows']} "
                f"micro-batches of {micro['rows']} (estimated peak {micro['estimated_peak_gib']} GiB; "
                f"train.fast.cpu_memory_budget_gib: {micro['budget_gib']:g})"
            )
    t0 = time.perf_counter()
    output = robust.train_resumably(trainer, run, resume_from)
    runtime = time.perf_counter() - t0
    eval_loss = _final_eval_loss(trainer, metrics)
    if main_process and run.checkpoints_dir.is_dir() and not any(run.checkpoints_dir.iterdir()):
        run.checkpoints_dir.rmdir()

    output_dir = run.model_dir if recipe.train.adapter == "full" else run.adapter_dir
    save_trained(recipe, run, trainer)  # every rank: FSDP gathers the sharded weights; only rank 0 writes
    if main_process:
        plot_loss(run.metrics, run.loss_plot)
    result = TrainResult(
        output_dir=output_dir,
        steps=output.global_step,
        # On a resumed run the trainer averages this session's steps only; metrics.jsonl knows the whole run.
        train_loss=metrics.latest.get("train_loss", output.training_loss),
        eval_loss=eval_loss,
        runtime_s=runtime,
        trainable_params=trainable,
        total_params=total,
        method=recipe.train.method,
        adapter=recipe.train.adapter,
        metrics={k: metrics.latest[k] for k in _REWARD_KEYS if k in metrics.latest},
    )
    if main_process:
        write_manifest(recipe, run, built.model_path, built.details, started, result)
    return result


def _final_eval_loss(trainer, metrics) -> float | None:
    """The validation loss of the weights that are saved."""
    eval_loss = metrics.latest.get("eval_loss")
    if trainer.eval_dataset is not None and eval_loss is None:  # max_steps ended before a scheduled evaluation
        final_eval = trainer.evaluate()
        eval_loss = final_eval["eval_loss"]
        metrics.latest.update({k: v for k, v in final_eval.items() if k in _REWARD_KEYS})
    if trainer.args.load_best_model_at_end and trainer.state.best_metric is not None:
        eval_loss = trainer.state.best_metric  # early stopping: the saved weights are the best checkpoint's
    return eval_loss


def _describe_adapter(recipe: Recipe) -> str:
    if recipe.train.adapter == "full":
        return "full fine-tuning"
    return f"{recipe.train.adapter} r={recipe.train.lora.r}"


def save_trained(recipe: Recipe, run: RunPaths, trainer) -> Path:
    """Adapter kinds write adapter/ (the trained adapter only); full fine-tuning writes a complete model/."""
    if recipe.train.adapter == "full":
        target = run.model_dir
        # The trainer's save gathers FSDP/DeepSpeed shards (a collective: all ranks call it) and writes on rank 0.
        trainer.save_model(str(target))
        # It also pickles its arguments there; recipe.yaml already holds the settings, and a pickle in
        # a model directory is what users are told to distrust.
        (target / "training_args.bin").unlink(missing_ok=True)
    else:
        target = run.adapter_dir
        if trainer.is_world_process_zero():
            # DPO from an SFT adapter also holds TRL's frozen "ref" copy; only the trained one is the result.
            # save_embedding_layers=False: embeddings the chat template's added tokens needed are
            # trained copies in modules_to_save and saved as adapter weights; PEFT's "auto" would
            # save every embedding tensor again (the frozen originals too) once the vocab has grown.
            trainer.model.save_pretrained(target, selected_adapters=["default"], save_embedding_layers=False)
    if trainer.is_world_process_zero():
        trainer.processing_class.save_pretrained(target)
    return target


def write_manifest(recipe: Recipe, run: RunPaths, model_path: str, details: dict, started: str, result: TrainResult) -> None:
    datasets = {
        name: {"path": str(run.split(name)), "sha256": sha256_file(run.split(name))}
        for name in ("train", "val", "test")
        if run.split(name).exists()
    }
    sources = {
        str(p): manifest.source_fingerprint(p) for p in (recipe.data.train, recipe.data.eval, recipe.data.test) if p is not None
    }
    write_json(
        run.manifest,
        {
            "run": recipe.run_name,
            "method": recipe.train.method,
            "adapter": recipe.train.adapter,
            "adapter_details": adapter_details(recipe, result.output_dir),
            "training": details,
            "output": {"kind": "model" if recipe.train.adapter == "full" else "adapter", "path": str(result.output_dir)},
            "base_model": {"name": recipe.base_model, **manifest.model_fingerprint(model_path)},
            "datasets": {"prepared": datasets, "sources": sources},
            "seed": {"data": recipe.data.seed, "train": recipe.train.seed},
            "git": manifest.git_commit(recipe.source.parent if recipe.source else Path.cwd()),
            "packages": manifest.package_versions(),
            "hardware": manifest.hardware(),
            "started": started,
            "finished": manifest.now_iso(),
            "result": {
                "steps": result.steps,
                "train_loss": result.train_loss,
                "eval_loss": result.eval_loss,
                "runtime_s": round(result.runtime_s, 2),
                "trainable_params": result.trainable_params,
                "total_params": result.total_params,
                **result.metrics,
            },
        },
    )
