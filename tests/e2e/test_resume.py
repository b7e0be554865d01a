"""Kill a training run (SIGKILL, Ctrl-C), resume it, and get the uninterrupted run's adapter and losses.

Each run is a real `python -m tunekit train` process on the tiny random Llama, with LoRA dropout
on, a warmup + cosine schedule and several epochs, so data order, dropout randomness, optimizer
and scheduler state all have to come back exactly for the numbers to match.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.e2e.run_helpers import tunekit_env, write_prepared_run
from tunekit.runs import RunPaths
from tunekit.train.robust import last_good_checkpoint

MAX_STEPS = 24
SAVE_STEPS = 4
TOLERANCE = 1e-3


def start_train(recipe: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tunekit", "train", str(recipe), *extra],
        cwd=recipe.parent, env=tunekit_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def finish(process: subprocess.Popen, timeout: int = 600) -> tuple[int, str]:
    _, err = process.communicate(timeout=timeout)
    return process.returncode, err


def wait_for_checkpoint(run: RunPaths, process: subprocess.Popen, min_step: int, timeout: float = 600) -> Path:
    """Poll until a complete checkpoint at `min_step` or later exists while the run is still going."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        checkpoint = last_good_checkpoint(run)
        if checkpoint is not None and int(checkpoint.name.split("-")[1]) >= min_step:
            return checkpoint
        if process.poll() is not None:
            pytest.fail(f"training ended before checkpoint {min_step}: {process.stderr.read()[-3000:]}")
        time.sleep(0.02)
    process.kill()
    pytest.fail(f"no checkpoint {min_step} within {timeout}s")


def flat(text: str) -> str:
    """Console output with rich's line wrapping undone."""
    return " ".join(text.split())


def metrics(run: RunPaths) -> list[dict]:
    return [json.loads(line) for line in run.metrics.read_text().splitlines()]


def assert_same_training(run: RunPaths, reference: RunPaths) -> None:
    """Adapter weights, every logged loss and the whole-run mean loss agree within TOLERANCE."""
    ours = load_file(run.adapter_dir / "adapter_model.safetensors")
    theirs = load_file(reference.adapter_dir / "adapter_model.safetensors")
    assert ours.keys() == theirs.keys()
    diff = max((ours[k] - theirs[k]).abs().max().item() for k in ours)
    assert diff <= TOLERANCE, f"adapter differs by {diff}"

    ours_log, theirs_log = metrics(run), metrics(reference)
    # One line per logged step, none doubled by the interruption, in the same order.
    assert [(r["step"], sorted(r)) for r in ours_log if "train_loss" not in r] == [
        (r["step"], sorted(r)) for r in theirs_log if "train_loss" not in r
    ]
    for key in ("loss", "eval_loss"):
        ours_values = [r[key] for r in ours_log if key in r]
        theirs_values = [r[key] for r in theirs_log if key in r]
        assert len(ours_values) == len(theirs_values) > 0
        assert max(abs(a - b) for a, b in zip(ours_values, theirs_values)) <= TOLERANCE
    assert [r["step"] for r in ours_log if "loss" in r][-1] == MAX_STEPS

    ours_result = json.loads(run.manifest.read_text())["result"]
    theirs_result = json.loads(reference.manifest.read_text())["result"]
    assert ours_result["steps"] == theirs_result["steps"] == MAX_STEPS
    # The manifest's train loss covers the whole run, not only the steps after the resume.
    assert abs(ours_result["train_loss"] - theirs_result["train_loss"]) <= TOLERANCE


class _Reference:
    """The uninterrupted run, started once and shared; it trains while a test kills its twin."""

    def __init__(self, root: Path, tiny_model_dir: Path):
        self.recipe, self.run = write_prepared_run(root, tiny_model_dir, "reference", max_steps=MAX_STEPS, save_steps=SAVE_STEPS)
        self.process = start_train(self.recipe)
        self._result: tuple[int, str] | None = None

    def finished(self) -> RunPaths:
        if self._result is None:
            self._result = finish(self.process)
        code, err = self._result
        assert code == 0, err[-3000:]
        return self.run


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir):
    ref = _Reference(tmp_path_factory.mktemp("reference"), tiny_model_dir)
    yield ref
    if ref.process.poll() is None:
        ref.process.kill()


@pytest.mark.slow  # three training processes each: full suite only (the fast tier's budget)
def test_sigkill_mid_run_then_resume_matches_the_uninterrupted_run(tmp_path, tiny_model_dir, reference):
    recipe, run = write_prepared_run(tmp_path, tiny_model_dir, "killed", max_steps=MAX_STEPS, save_steps=SAVE_STEPS)
    victim = start_train(recipe)
    checkpoint = wait_for_checkpoint(run, victim, min_step=8)
    victim.send_signal(signal.SIGKILL)
    code, _ = finish(victim)
    assert code == -signal.SIGKILL
    assert not run.adapter_dir.exists() and not run.manifest.exists()  # it really died mid-run
    resumed_at = int(last_good_checkpoint(run).name.split("-")[1])
    assert 8 <= resumed_at < MAX_STEPS and int(checkpoint.name.split("-")[1]) <= resumed_at

    code, err = finish(start_train(recipe, "--resume"))
    assert code == 0, err[-3000:]
    assert f"resuming from {run.checkpoints_dir / f'checkpoint-{resumed_at}'} (step {resumed_at})" in flat(err)
    assert_same_training(run, reference.finished())
    # keep-last-K (2) plus the best by validation loss, and nothing from the dead timeline
    kept = sorted(int(p.name.split("-")[1]) for p in run.checkpoints_dir.glob("checkpoint-*"))
    assert kept[-2:] == [MAX_STEPS - SAVE_STEPS, MAX_STEPS] and len(kept) <= 3


@pytest.mark.slow  # three training processes each: full suite only (the fast tier's budget)
def test_ctrl_c_saves_a_checkpoint_exits_130_and_resumes_to_the_same_result(tmp_path, tiny_model_dir, reference):
    recipe, run = write_prepared_run(tmp_path, tiny_model_dir, "interrupted", max_steps=MAX_STEPS, save_steps=SAVE_STEPS)
    process = start_train(recipe)
    wait_for_checkpoint(run, process, min_step=4)
    process.send_signal(signal.SIGINT)
    code, err = finish(process)
    assert code == 130, err[-3000:]
    assert "Traceback" not in err
    stopped = last_good_checkpoint(run)
    step = int(stopped.name.split("-")[1])
    assert 4 <= step < MAX_STEPS
    assert f"training interrupted at step {step} of {MAX_STEPS}; checkpoint saved: {stopped}" in flat(err)
    assert "--resume" in err

    code, err = finish(start_train(recipe, "--resume"))
    assert code == 0, err[-3000:]
    assert_same_training(run, reference.finished())


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path, tiny_model_dir):
    recipe, run = write_prepared_run(tmp_path, tiny_model_dir, "fresh", max_steps=2)
    code, err = finish(start_train(recipe, "--resume"))
    assert code == 1
    assert f"nothing to resume: no complete checkpoint in {run.checkpoints_dir}" in flat(err)
    assert "Traceback" not in err
