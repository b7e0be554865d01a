"""Trainer callbacks: a rich progress bar and the metrics.jsonl log (with peak memory)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from rich.progress import Progress
from transformers import TrainerCallback

from tunekit.console import console, progress_bar


# DPO logs how far the policy prefers chosen over rejected answers relative to the reference:
# rewards/margins (mean of beta * (chosen log-ratio - rejected log-ratio)) and the share of pairs
# where that margin is positive (rewards/accuracies).
_REWARDS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")
LOGGED_KEYS = (
    "loss", "learning_rate", "grad_norm", "mean_token_accuracy", "eval_loss", "eval_mean_token_accuracy",
    *_REWARDS, *(f"eval_{key}" for key in _REWARDS),
)  # fmt: skip


class MetricsLog(TrainerCallback):
    """Appends one JSON line per logged step: loss, learning rate, grad norm, tokens/s, peak memory.

    tokens/s counts every input token the trainer has seen (padding excluded) per wall second
    since the previous log line, so it reflects the current speed rather than a running mean.
    Memory is the process's peak resident set on CPU, and the peak allocated CUDA memory on GPU.

    On a resumed run the lines up to the checkpoint's step are kept and later ones (from the
    abandoned timeline) dropped, so the file reads as one uninterrupted run. Only the main
    process writes; every process keeps `latest`, so they all take the same decisions from it.
    """

    def __init__(self, path: Path):
        self.path = path
        self.latest: dict = {}
        self.earlier: list[dict] = []  # lines kept from before the resume point
        self._resumed_from = 0
        self._last_time = time.perf_counter()
        self._last_tokens = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._resumed_from = state.global_step
        self.earlier = self._read_until(state.global_step) if state.global_step else []
        if state.is_world_process_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in self.earlier), encoding="utf-8")
            os.replace(tmp, self.path)  # atomic: other ranks may be reading the old file
        self._last_time = time.perf_counter()
        self._last_tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0)

    def _read_until(self, step: int) -> list[dict]:
        if not self.path.exists():
            return []
        rows = [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return [r for r in rows if r.get("step", 0) <= step and "train_loss" not in r]

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        now = time.perf_counter()
        record = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
        for key in LOGGED_KEYS:
            if key in logs:
                record[key] = float(logs[key])
        tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0)
        if "loss" in record and tokens:
            elapsed = max(now - self._last_time, 1e-9)
            record["tokens_per_s"] = round((tokens - self._last_tokens) / elapsed, 1)
            record["tokens_seen"] = tokens
            self._last_time, self._last_tokens = now, tokens
        if "loss" in record:
            record.update(peak_memory_mb())
        if "train_loss" in logs:  # the trainer's closing summary
            record.update({k: logs[k] for k in ("train_runtime", "train_loss") if k in logs})
            if self._resumed_from and "train_loss" in logs:
                record["train_loss"] = self._whole_run_loss(float(logs["train_loss"]), state.global_step)
                record["resumed_from_step"] = self._resumed_from
        if len(record) <= 2:
            return
        if state.is_world_process_zero:
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
        self.latest.update(record)

    def _whole_run_loss(self, resumed_mean: float, final_step: int) -> float:
        """The trainer averages over the steps of this session only; add back the steps before the resume.

        Each logged loss is the mean over the steps since the previous logged loss, so
        loss x window summed over the kept lines is the summed per-step loss up to the resume point.
        """
        total, previous = 0.0, 0
        for row in self.earlier:
            if "loss" in row:
                total += row["loss"] * (row["step"] - previous)
                previous = row["step"]
        total += resumed_mean * (final_step - self._resumed_from)
        return total / max(final_step, 1)


def peak_memory_mb() -> dict:
    """Peak memory so far: CUDA allocations on GPU, resident set size on CPU (Linux/macOS)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return {"cuda_peak_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)}
    try:
        import resource
    except ImportError:  # Windows
        return {}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in KiB on Linux, in bytes on macOS.
    return {"peak_rss_mb": round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)}


class RichProgress(TrainerCallback):
    """Replaces tqdm with one bar showing step, loss, tokens/s, elapsed and ETA.

    When output is not a terminal (CI logs, `| tee`), a live bar would print nothing until the
    end, so each logged step becomes one plain line instead.
    """

    def __init__(self, metrics: MetricsLog):
        self.metrics = metrics
        self.progress: Progress | None = None
        self.task = None
        self._started = 0.0
        self._first_step = 0
        self._shown = False

    def on_train_begin(self, args, state, control, **kwargs):
        self._started = time.perf_counter()
        self._first_step = state.global_step  # above 0 when resuming
        self._shown = state.is_world_process_zero  # one bar for all processes
        if not self._shown or not console.is_terminal:
            return
        self.progress = progress_bar("train", "loss {task.fields[loss]}", "{task.fields[speed]} tok/s")
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step, loss="-", speed="-")

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is None:
            return
        latest = self.metrics.latest
        loss = f"{latest['loss']:.4f}" if "loss" in latest else "-"
        speed = f"{latest['tokens_per_s']:.0f}" if "tokens_per_s" in latest else "-"
        self.progress.update(self.task, completed=state.global_step, loss=loss, speed=speed)

    def on_log(self, args, state, control, logs=None, **kwargs):
        done = state.global_step - self._first_step
        if not self._shown or self.progress is not None or not logs or "loss" not in logs or done <= 0:
            return
        elapsed = time.perf_counter() - self._started
        eta = elapsed / done * (state.max_steps - state.global_step)
        speed = self.metrics.latest.get("tokens_per_s")
        console.print(
            f"step {state.global_step}/{state.max_steps}  loss {float(logs['loss']):.4f}  "
            f"{f'{speed:.0f} tok/s  ' if speed else ''}elapsed {elapsed:.0f}s  eta {eta:.0f}s"
        )

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)
        self.close()

    def close(self) -> None:
        """Stop the live bar; also called when training ends by an exception (no on_train_end then)."""
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def close_progress_bars(trainer) -> None:
    """Give the terminal back after training, however it ended."""
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, RichProgress):
            callback.close()


def plot_loss(metrics_path: Path, out: Path) -> None:
    """Training and validation loss against step, from metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss")
    if val:
        ax.plot(*zip(*val), marker="o", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
