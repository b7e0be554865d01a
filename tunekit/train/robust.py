"""Long runs that survive: checkpoints, resume, early stopping, divergence halt, Ctrl-C, trackers.

Everything here plugs into the Hugging Face Trainer (which TRL's trainers extend) through its own
switches and callbacks; the trainer keeps the training loop. The pieces:

- `checkpoint_args` — the training-argument fields for checkpointing and best-model tracking;
- `robust_callbacks` — keep-last-K + best, NaN/inf halt, Ctrl-C → checkpoint, early stopping, trackers;
- `find_resume_checkpoint` — the newest *complete* checkpoint of a run (a SIGKILL can leave a torn one);
- `train_resumably` — `trainer.train()` with the Ctrl-C handler installed and the resume point set.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import threading
from pathlib import Path

from transformers import TrainerCallback

from tunekit.config import Recipe
from tunekit.console import console
from tunekit.errors import RunDirError, TunekitError
from tunekit.runs import RunPaths

# Without validation data there is no evaluation to save at; a crash then loses at most this many steps.
STEPS_BETWEEN_SAVES_WITHOUT_VALIDATION = 50
CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "pip install 'tunekit[tracking]'"),
                    "mlflow": ("mlflow", "pip install 'tunekit[mlflow]'"),
                    "wandb": ("wandb", "pip install 'tunekit[wandb]'")}


class TrainingDiverged(TunekitError):
    """The loss or the gradients stopped being finite numbers."""


class TrainingInterrupted(TunekitError):
    """The user pressed Ctrl-C; a checkpoint was saved. The CLI exits with the shell's Ctrl-C code."""

    exit_code = 130


def is_main_process() -> bool:
    """True on the one process that writes files (rank 0 under `accelerate launch` / `torchrun`)."""
    return int(os.environ.get("RANK", "0")) == 0


def has_validation(run: RunPaths) -> bool:
    """Whether the prepared run holds validation rows (the trainer then evaluates on them)."""
    path = run.split("val")
    if not path.exists():
        return False
    with path.open(encoding="utf-8") as fh:
        return any(line.strip() for line in fh)


# ------------------------------------------------------------------ training arguments


def checkpoint_args(recipe: Recipe, run: RunPaths) -> dict:
    """Fields to merge into the trainer's arguments: when to save, what to keep, what is "best".

    Checkpoints fall on validations by default so that the best one (lowest validation loss) is
    always a saved checkpoint; rotation is done by `KeepLastAndBest`, not by the trainer, because
    the trainer's `save_total_limit` counts the best checkpoint inside the limit.
    """
    train = recipe.train
    validating = has_validation(run)
    if train.early_stopping_patience is not None and not validating:
        raise TunekitError(
            "train.early_stopping_patience needs validation data, and this run has none",
            hint="set data.eval, or data.val_fraction above 0, and prepare the data again",
        )
    if train.save_steps is not None:
        save = {"save_strategy": "steps", "save_steps": train.save_steps}
    elif validating:
        save = {"save_strategy": "steps", "save_steps": train.eval_steps} if train.eval_steps else {"save_strategy": "epoch"}
    else:
        save = {"save_strategy": "steps", "save_steps": STEPS_BETWEEN_SAVES_WITHOUT_VALIDATION}
    best = {"metric_for_best_model": "eval_loss", "greater_is_better": False} if validating else {}
    return {
        **save,
        **best,
        "save_total_limit": None,  # KeepLastAndBest rotates
        # Early stopping ends on the best checkpoint, not on the last (worse) weights.
        "load_best_model_at_end": train.early_stopping_patience is not None,
        # The trainer would replace a NaN loss by the mean of earlier ones; DivergenceGuard must see it.
        "logging_nan_inf_filter": False,
        # The early-stopping patience counter lives in the checkpoint and must come back on resume.
        "restore_callback_states_from_checkpoint": True,
        "run_name": recipe.run_name,
    }


# ------------------------------------------------------------------ checkpoints on disk


def _checkpoints(run: RunPaths) -> list[tuple[int, Path]]:
    """(step, dir) of every checkpoint directory, oldest first, complete or not."""
    if not run.checkpoints_dir.is_dir():
        return []
    found = []
    for child in run.checkpoints_dir.iterdir():
        match = CHECKPOINT_NAME.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return sorted(found)


def is_complete_checkpoint(path: Path) -> bool:
    """The trainer writes trainer_state.json last; a parsable one means the save finished."""
    state = path / "trainer_state.json"
    weights = [*path.glob("*.safetensors"), *path.glob("*.bin")]
    if not state.is_file() or not weights:
        return False
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def last_good_checkpoint(run: RunPaths) -> Path | None:
    complete = [path for _, path in _checkpoints(run) if is_complete_checkpoint(path)]
    return complete[-1] if complete else None


def find_resume_checkpoint(run: RunPaths) -> Path:
    """The checkpoint `--resume` continues from: the newest complete one, or a clear error."""
    checkpoint = last_good_checkpoint(run)
    if checkpoint is None:
        torn = [path.name for _, path in _checkpoints(run)]
        detail = f" (only incomplete ones: {', '.join(torn)})" if torn else ""
        raise RunDirError(
            f"nothing to resume: no complete checkpoint in {run.checkpoints_dir}{detail}",
            hint="run `tunekit train` without --resume to start from the beginning",
        )
    return checkpoint


def _drop_checkpoints_after(run: RunPaths, step: int) -> list[str]:
    """Checkpoints newer than the resume point belong to the abandoned timeline (or are torn): remove them."""
    dropped = []
    for checkpoint_step, path in _checkpoints(run):
        if checkpoint_step > step:
            shutil.rmtree(path, ignore_errors=True)
            dropped.append(path.name)
    return dropped


# ------------------------------------------------------------------ callbacks


class KeepLastAndBest(TrainerCallback):
    """After every save keep the newest `keep_last` complete checkpoints plus the best one."""

    def __init__(self, run: RunPaths, keep_last: int):
        self.run = run
        self.keep_last = keep_last

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        complete = [(step, path) for step, path in _checkpoints(self.run) if is_complete_checkpoint(path)]
        keep = {path for _, path in complete[-self.keep_last :]}
        if state.best_model_checkpoint:
            keep.add(Path(state.best_model_checkpoint))
        for _, path in complete:
            if path not in keep:
                shutil.rmtree(path, ignore_errors=True)


def _gradients_finite(model) -> bool:
    import torch

    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    if not grads:
        return True
    # One fused norm and one device sync per step; a NaN or inf anywhere makes the norm non-finite.
    return bool(torch.isfinite(torch.nn.utils.get_total_norm(grads, norm_type=2.0)))


class StepSeeds(TrainerCallback):
    """Seed every optimizer step from (train.seed, step), so a resumed run draws the same dropout masks.

    The trainer restores the random state saved with a checkpoint, but that state is taken at the
    save, and what runs between the save and the next step differs between the two timelines (an
    epoch-end evaluation after a mid-epoch save, and every DataLoader iteration, draw from the
    global generator). Seeding per step makes step N's randomness independent of that history.
    """

    def on_step_begin(self, args, state, control, **kwargs):
        from transformers import set_seed

        set_seed((args.seed * 1_000_003 + state.global_step) % 2**32)


class DivergenceGuard(TrainerCallback):
    """Halt on a NaN/inf loss or gradient before the optimizer applies it, naming the last good checkpoint.

    Gradients are checked every optimizer step (before `optimizer.step()`, so the weights in memory
    and every checkpoint on disk stay finite); logged losses and validation losses as they are logged.
    """

    def __init__(self, run: RunPaths):
        self.run = run

    # The trainer hands callbacks `model` (the same parameters the optimizer holds; its `optimizer`
    # argument stays None when the trainer creates the optimizer itself).
    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if model is not None and not _gradients_finite(model):
            self._halt(state.global_step + 1, "the gradients are not finite (NaN or inf)", args)

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "grad_norm", "eval_loss"):
            value = (logs or {}).get(key)
            if isinstance(value, (int, float)) and not (value == value and abs(value) != float("inf")):
                self._halt(state.global_step, f"{key} is {value}", args)

    def _halt(self, step: int, what: str, args) -> None:
        checkpoint = last_good_checkpoint(self.run)
        where = f"last good checkpoint: {checkpoint}" if checkpoint else "no checkpoint was saved before it"
        raise TrainingDiverged(
            f"training diverged at step {step}: {what}; stopped before applying it ({where})",
            hint=f"lower train.learning_rate (now {args.learning_rate:g}) or raise train.warmup_ratio and train again; "
            "`tunekit train --resume` continues from the last good checkpoint with the same settings",
        )


class InterruptToCheckpoint(TrainerCallback):
    """Ctrl-C: finish the current step, save a checkpoint, stop. A second Ctrl-C aborts at once.

    The signal handler only sets a flag (`train_resumably` installs it around `trainer.train()`);
    the save happens at the next step end through the trainer's own control flags. Under several
    processes the flag is agreed on by all ranks so that they stop at the same step.
    """

    def __init__(self):
        self.requested = False
        self.stopped_at: int | None = None
        self.checkpoint: str | None = None

    def handle_sigint(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if is_main_process():
            console.print("\n[yellow]Ctrl-C: saving a checkpoint after this step (press Ctrl-C again to abort without saving)[/]")

    def _agreed(self, args) -> bool:
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0], device=args.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def on_step_end(self, args, state, control, **kwargs):
        if self._agreed(args):
            self.requested = True
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True

    def on_save(self, args, state, control, **kwargs):
        if self.stopped_at is not None and self.stopped_at == state.global_step:
            self.checkpoint = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")


def check_trackers(recipe: Recipe) -> None:
    """Fail before any weights load when a requested tracker's package is missing."""
    import importlib.util

    missing = [name for name in recipe.train.report_to if importlib.util.find_spec(TRACKER_PACKAGES[name][0]) is None]
    if missing:
        installs = "; ".join(f"{TRACKER_PACKAGES[name][1]} (or pip install {TRACKER_PACKAGES[name][0]})" for name in missing)
        raise TunekitError(
            f"train.report_to: {', '.join(missing)} requested but its package is not installed",
            hint=f"{installs}; or remove it from train.report_to (metrics.jsonl and loss.png are always written)",
        )


def tracking_callbacks(recipe: Recipe, run: RunPaths) -> list:
    """The transformers integration callback of each tracker in `train.report_to`, imported lazily."""
    check_trackers(recipe)
    callbacks = []
    for name in recipe.train.report_to:
        if name == "tensorboard":
            from transformers.integrations import TensorBoardCallback

            board = TensorBoardCallback()
            # In the run directory, next to metrics.jsonl (the default would be inside checkpoints/).
            board.logging_dir = str(run.tensorboard_dir)
            callbacks.append(board)
        elif name == "mlflow":
            from transformers.integrations import MLflowCallback

            callbacks.append(MLflowCallback())
        elif name == "wandb":
            from transformers.integrations import WandbCallback

            callbacks.append(WandbCallback())
    return callbacks


def robust_callbacks(recipe: Recipe, run: RunPaths) -> list:
    """Every callback this module contributes, for the trainer's `callbacks=` list."""
    from transformers import EarlyStoppingCallback

    callbacks = [StepSeeds(), KeepLastAndBest(run, recipe.train.save_total_limit), DivergenceGuard(run), InterruptToCheckpoint()]
    if recipe.train.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=recipe.train.early_stopping_patience))
    return [*callbacks, *tracking_callbacks(recipe, run)]


# ------------------------------------------------------------------ the train call


def train_resumably(trainer, run: RunPaths, resume_from: Path | None = None):
    """`trainer.train()`, continuing from `resume_from` when given, with Ctrl-C saving a checkpoint.

    Raises TrainingInterrupted (exit code 130 in the CLI) when Ctrl-C stopped the run early.
    """
    from tunekit.train.callbacks import close_progress_bars

    interrupt = next((cb for cb in trainer.callback_handler.callbacks if isinstance(cb, InterruptToCheckpoint)), None)
    if resume_from is not None:
        step = int(CHECKPOINT_NAME.match(resume_from.name).group(1))
        if trainer.is_world_process_zero():
            dropped = _drop_checkpoints_after(run, step)
            if dropped:
                console.print(f"removed checkpoints past the resume point: {', '.join(dropped)}")
            console.print(f"resuming from {resume_from} (step {step})")
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main_thread else None
    if interrupt is not None and main_thread:
        signal.signal(signal.SIGINT, interrupt.handle_sigint)
    try:
        output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    finally:
        if main_thread and previous is not None:
            signal.signal(signal.SIGINT, previous)
        close_progress_bars(trainer)
    if interrupt is not None and interrupt.stopped_at is not None and output.global_step < trainer.state.max_steps:
        saved = interrupt.checkpoint or str(last_good_checkpoint(run))
        raise TrainingInterrupted(
            f"training interrupted at step {interrupt.stopped_at} of {trainer.state.max_steps}; checkpoint saved: {saved}",
            hint="continue it with `tunekit train <recipe> --resume`",
        )
    return output
