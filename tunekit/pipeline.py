"""`tunekit run`: every stage in order, on one recipe, into one run directory."""

from __future__ import annotations

import shutil
import time

from tunekit.config import Recipe
from tunekit.console import console
from tunekit.errors import RunDirError
from tunekit.runs import RunPaths

STAGES = ("prepare", "train", "eval", "export")


def claim_run_dir(run: RunPaths, overwrite: bool) -> None:
    """Refuse to mix a new run into an old one's directory unless asked to replace it."""
    if run.root.exists() and any(run.root.iterdir()):
        if not overwrite:
            resumable = run.checkpoints_dir.is_dir() and any(run.checkpoints_dir.glob("checkpoint-*"))
            raise RunDirError(
                f"run directory {run.root} already holds a run" + (" with training checkpoints" if resumable else ""),
                hint=("pass --resume to continue it from its newest checkpoint, " if resumable else "")
                + "pass --overwrite to replace it, or give this run another `name`",
            )
        shutil.rmtree(run.root)
    run.root.mkdir(parents=True, exist_ok=True)


def prepare_stage(recipe: Recipe, run: RunPaths) -> dict:
    """Load the base model's tokenizer (lengths are measured under its chat template), prepare, report."""
    from tunekit.data import prepare_data
    from tunekit.data.gates import raise_on_failed_gates
    from tunekit.data.report import print_summary
    from tunekit.models import load_tokenizer, resolve_model

    with console.status("loading the tokenizer"):
        model_path = resolve_model(recipe.base_model, allow_pickle=recipe.allow_pickle)
        tokenizer = load_tokenizer(model_path, trust_remote_code=recipe.trust_remote_code)
    run.root.mkdir(parents=True, exist_ok=True)
    run.recipe.write_text(recipe.to_yaml(), encoding="utf-8")
    with console.status("preparing data"):
        report = prepare_data(recipe, run, tokenizer)
    print_summary(report, run)
    # After the summary, so the user sees the numbers behind a failed gate; stops `tunekit run` before training.
    raise_on_failed_gates(report, run.data_report)
    return report


def run_pipeline(
    recipe: Recipe, run: RunPaths, *, stages: tuple[str, ...] = STAGES, overwrite: bool = False, resume: bool = False
) -> dict:
    """Run the named stages in lifecycle order; return each stage's result and wall time.

    `resume` continues an interrupted run in place: data already prepared is kept, training goes
    on from the newest checkpoint, and the later stages run as usual.
    """
    from tunekit.eval import run_eval
    from tunekit.export import check_export_requirements, run_export
    from tunekit.train import run_training

    if "export" in stages:
        check_export_requirements(recipe)  # a missing GGUF extra must not surface only after training
    if resume:
        if overwrite:
            raise RunDirError("--resume and --overwrite contradict each other", hint="pass one of them")
        if run.split("train").exists():
            stages = tuple(s for s in stages if s != "prepare")
    else:
        claim_run_dir(run, overwrite)
    actions = {
        "prepare": lambda: prepare_stage(recipe, run),
        "train": lambda: run_training(recipe, run, resume=resume),
        "eval": lambda: run_eval(recipe, run),
        "export": lambda: run_export(recipe, run),
    }
    results: dict = {"timings_s": {}}
    for stage in STAGES:
        if stage not in stages:
            continue
        console.rule(f"[bold]{stage}")
        t0 = time.perf_counter()
        results[stage] = actions[stage]()
        results["timings_s"][stage] = round(time.perf_counter() - t0, 1)
    results["timings_s"]["total"] = round(sum(results["timings_s"].values()), 1)
    if "eval" in results and "export" in results:
        # The run ends with the eval report and gate verdict (a failed gate already stopped it, exit 1).
        from tunekit.eval.report import print_report

        console.rule("[bold]eval report")
        print_report(results["eval"])
    return results
