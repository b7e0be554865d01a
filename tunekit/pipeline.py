"""`tunekit run`: every stage in order, on one recipe, into one run directory.

Each stage is one function of one shape, `stage(recipe, run) -> <Stage>Result`; this module calls
exactly those four and nothing else of theirs.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

from tunekit.config import Recipe
from tunekit.console import console
from tunekit.errors import RunDirError, TunekitError
from tunekit.runs import RunPaths

if TYPE_CHECKING:  # the stage modules load their libraries only when the pipeline runs
    from tunekit.data import DataResult
    from tunekit.eval import EvalResult
    from tunekit.export import ExportResult
    from tunekit.train import TrainResult


class Stage(str, Enum):
    """The pipeline's stages, in lifecycle order."""

    prepare = "prepare"
    train = "train"
    eval = "eval"
    export = "export"


STAGES: tuple[Stage, ...] = tuple(Stage)


@dataclass
class PipelineResult:
    """Each stage's result (None for a stage that did not run) and wall times in seconds."""

    data: DataResult | None = None
    train: TrainResult | None = None
    eval: EvalResult | None = None
    export: ExportResult | None = None
    timings_s: dict[str, float] = field(default_factory=dict)


def chosen_stages(stages: Iterable[Stage | str]) -> tuple[Stage, ...]:
    """The named stages in lifecycle order; an unknown name is a TunekitError that lists the choices."""
    names = [s.value if isinstance(s, Stage) else str(s) for s in stages]
    unknown = [name for name in names if name not in Stage.__members__]
    if unknown:
        raise TunekitError(f"unknown stage(s) {', '.join(unknown)}", hint=f"choose from {', '.join(s.value for s in STAGES)}")
    if not names:
        raise TunekitError("no stage to run", hint=f"name one or more of {', '.join(s.value for s in STAGES)}")
    return tuple(s for s in STAGES if s.value in names)


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


def run_pipeline(
    recipe: Recipe, run: RunPaths, *, stages: Iterable[Stage | str] = STAGES, overwrite: bool = False, resume: bool = False
) -> PipelineResult:
    """Run the named stages in lifecycle order; return each stage's result and wall time.

    `resume` continues an interrupted run in place: data already prepared is kept, training goes
    on from the newest checkpoint, and the later stages run as usual.
    """
    from tunekit.data import prepare
    from tunekit.eval import evaluate
    from tunekit.export import check_export_requirements, export
    from tunekit.train import train

    chosen = chosen_stages(stages)
    if Stage.export in chosen:
        check_export_requirements(recipe)  # a missing GGUF extra must not surface only after training
    if resume:
        if overwrite:
            raise RunDirError("--resume and --overwrite contradict each other", hint="pass one of them")
        if run.split("train").exists():
            chosen = tuple(s for s in chosen if s is not Stage.prepare)
    else:
        claim_run_dir(run, overwrite)
    result = PipelineResult()
    for stage in chosen:
        console.rule(f"[bold]{stage.value}")
        t0 = time.perf_counter()
        if stage is Stage.prepare:
            result.data = prepare(recipe, run)
        elif stage is Stage.train:
            result.train = train(recipe, run, resume=resume)
        elif stage is Stage.eval:
            result.eval = evaluate(recipe, run)
        else:
            result.export = export(recipe, run)
        result.timings_s[stage.value] = round(time.perf_counter() - t0, 1)
    result.timings_s["total"] = round(sum(result.timings_s.values()), 1)
    if result.eval is not None and result.export is not None and result.eval.report.get("verdict"):
        # The export's output pushed the eval tables up: the run ends with the gates and the verdict
        # again (a failed gate already stopped it, exit 1), not the whole report a second time.
        from tunekit.eval.report import print_verdict

        console.rule("[bold]eval verdict")
        print_verdict(result.eval.report["verdict"])
        console.print(f"full report: {result.eval.report_path}", soft_wrap=True)
    return result
