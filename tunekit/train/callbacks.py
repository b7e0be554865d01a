"""Trainer callbacks: a rich progress bar and the metrics.jsonl log."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import TrainerCallback

from tunekit.console import console


class MetricsLog(TrainerCallback):
    """Appends one JSON line per logged step: loss, learning rate, grad norm, tokens/s.

    tokens/s counts every input token the trainer has seen (padding excluded) per wall second
    since the previous log line, so it reflects the current speed rather than a running mean.
    """

    def __init__(self, path: Path):
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("", encoding="utf-8")
        self.latest: dict = {}
        self._last_time = time.perf_counter()
        self._last_tokens = 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        now = time.perf_counter()
        record = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
        for key in ("loss", "learning_rate", "grad_norm", "mean_token_accuracy", "eval_loss", "eval_mean_token_accuracy"):
            if key in logs:
                record[key] = float(logs[key])
        tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0)
        if "loss" in record and tokens:
            elapsed = max(now - self._last_time, 1e-9)
            record["tokens_per_s"] = round((tokens - self._last_tokens) / elapsed, 1)
            record["tokens_seen"] = tokens
            self._last_time, self._last_tokens = now, tokens
        if "train_loss" in logs:  # the trainer's closing summary
            record.update({k: logs[k] for k in ("train_runtime", "train_loss") if k in logs})
        if len(record) <= 2:
            return
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        self.latest.update(record)


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

    def on_train_begin(self, args, state, control, **kwargs):
        self._started = time.perf_counter()
        if not console.is_terminal:
            return
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[speed]} tok/s"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.max_steps, loss="-", speed="-")

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is None:
            return
        latest = self.metrics.latest
        loss = f"{latest['loss']:.4f}" if "loss" in latest else "-"
        speed = f"{latest['tokens_per_s']:.0f}" if "tokens_per_s" in latest else "-"
        self.progress.update(self.task, completed=state.global_step, loss=loss, speed=speed)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.progress is not None or not logs or "loss" not in logs or not state.global_step:
            return
        elapsed = time.perf_counter() - self._started
        eta = elapsed / state.global_step * (state.max_steps - state.global_step)
        speed = self.metrics.latest.get("tokens_per_s")
        console.print(
            f"step {state.global_step}/{state.max_steps}  loss {float(logs['loss']):.4f}  "
            f"{f'{speed:.0f} tok/s  ' if speed else ''}elapsed {elapsed:.0f}s  eta {eta:.0f}s"
        )

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)
            self.progress.stop()
            self.progress = None


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
