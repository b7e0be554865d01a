"""Checkpoints, resume points, NaN/inf halt, early stopping, trackers and metrics.jsonl memory,
on the tiny random Llama through `train` (the real trainer, real files)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback, TrainerState

from tunekit.config import parse_recipe
from tunekit.errors import RecipeError, RunDirError, TunekitError
from tunekit.runs import RunPaths, write_jsonl
from tests.unit.train_helpers import tiny_train_run
from tunekit.train import train
from tunekit.train.callbacks import MetricsLog
from tunekit.train.robust import (
    TrainingDiverged,
    check_trackers,
    checkpoint_args,
    find_resume_checkpoint,
    last_good_checkpoint,
)


def _chat(user: str, reply: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]}


def _make_run(tmp_path, tiny_model_dir, train_rows, val_rows, **train_settings):
    recipe, run = tiny_train_run(tmp_path, tiny_model_dir, **train_settings)
    write_jsonl(run.split("train"), train_rows)
    if val_rows:
        write_jsonl(run.split("val"), val_rows)
    return recipe, run


def _metrics(run: RunPaths) -> list[dict]:
    return [json.loads(line) for line in run.metrics.read_text().splitlines()]


# ------------------------------------------------------------------ arguments and config


def test_checkpoints_fall_on_validations_by_default_and_best_is_tracked(tmp_path, chat_rows):
    recipe, run = _make_run(tmp_path, "unused", chat_rows[:8], chat_rows[8:], eval_steps=3)
    args = checkpoint_args(recipe, run)
    assert (args["save_strategy"], args["save_steps"]) == ("steps", 3)
    assert args["metric_for_best_model"] == "eval_loss" and args["greater_is_better"] is False
    assert args["load_best_model_at_end"] is False  # only early stopping swaps in the best weights
    assert args["logging_nan_inf_filter"] is False  # the trainer would hide a NaN loss otherwise

    recipe, run = _make_run(tmp_path / "b", "unused", chat_rows[:8], chat_rows[8:])
    assert checkpoint_args(recipe, run)["save_strategy"] == "epoch"  # validation once per epoch

    recipe, run = _make_run(tmp_path / "c", "unused", chat_rows, [], save_steps=7)
    args = checkpoint_args(recipe, run)
    assert (args["save_strategy"], args["save_steps"]) == ("steps", 7)
    assert "metric_for_best_model" not in args  # no validation data, no "best"


def test_early_stopping_needs_validation_data(tmp_path, chat_rows):
    recipe, run = _make_run(tmp_path, "unused", chat_rows, [], early_stopping_patience=2)
    with pytest.raises(TunekitError, match="train.early_stopping_patience needs validation data"):
        checkpoint_args(recipe, run)


def test_early_stopping_checkpoints_must_fall_on_validations():
    base = {"data": {"train": "x.jsonl"}}
    with pytest.raises(RecipeError, match="also set eval_steps"):
        parse_recipe({**base, "train": {"early_stopping_patience": 2, "save_steps": 10}})
    with pytest.raises(RecipeError, match=r"multiple of eval_steps \(4\)"):
        parse_recipe({**base, "train": {"early_stopping_patience": 2, "save_steps": 10, "eval_steps": 4}})
    ok = parse_recipe({**base, "train": {"early_stopping_patience": 2, "save_steps": 8, "eval_steps": 4}})
    assert ok.train.save_total_limit == 2 and ok.train.report_to == []


def test_missing_tracker_package_is_named_before_any_weights_load(tmp_path, chat_rows):
    import importlib.util

    for tracker in ("mlflow", "wandb"):
        if importlib.util.find_spec(tracker) is not None:
            continue
        recipe, _ = _make_run(tmp_path, "unused", chat_rows, [], report_to=[tracker])
        with pytest.raises(TunekitError) as caught:
            check_trackers(recipe)
        assert f"train.report_to: {tracker} requested but its package is not installed" in str(caught.value)
        assert f"pip install 'tunekit[{tracker}]'" in str(caught.value)


# ------------------------------------------------------------------ resume points


def _fake_checkpoint(run: RunPaths, step: int, state: str = '{"global_step": 1}') -> None:
    path = run.checkpoints_dir / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "adapter_model.safetensors").write_bytes(b"x")
    (path / "trainer_state.json").write_text(state)


def test_resume_point_is_the_newest_complete_checkpoint(tmp_path):
    run = RunPaths(tmp_path / "run")
    with pytest.raises(RunDirError, match="nothing to resume: no complete checkpoint"):
        find_resume_checkpoint(run)
    _fake_checkpoint(run, 4)
    _fake_checkpoint(run, 12)
    _fake_checkpoint(run, 16, state='{"global_st')  # a SIGKILL during the save tore it
    (run.checkpoints_dir / "checkpoint-20").mkdir()  # killed before anything was written
    assert find_resume_checkpoint(run).name == "checkpoint-12"  # 12 > 4: numeric, not text order


def test_metrics_log_keeps_the_lines_before_the_resume_point(tmp_path):
    path = tmp_path / "metrics.jsonl"
    earlier = [{"step": s, "loss": 4.0 - s / 10} for s in (1, 2, 3, 4, 5, 6)] + [{"step": 4, "eval_loss": 3.9}]
    path.write_text("".join(json.dumps(r) + "\n" for r in earlier))
    log = MetricsLog(path)
    state = TrainerState(global_step=4, epoch=1.0)
    log.on_train_begin(None, state, None)
    kept = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["step"] for r in kept] == [1, 2, 3, 4, 4]  # steps 5-6 belonged to the abandoned timeline

    state.global_step = 8
    log.on_log(None, state, None, logs={"loss": 3.0})
    log.on_log(None, state, None, logs={"train_loss": 3.2, "train_runtime": 1.0})
    # The trainer's 3.2 covers steps 5-8 only; the whole run is (3.9+3.8+3.7+3.6 + 4 x 3.2) / 8.
    assert log.latest["train_loss"] == pytest.approx((3.9 + 3.8 + 3.7 + 3.6 + 4 * 3.2) / 8)
    assert log.latest["resumed_from_step"] == 4
    assert log.latest["peak_rss_mb"] > 10


# ------------------------------------------------------------------ divergence


class _PoisonHiddenStatesFrom(TrainerCallback):
    """Makes the final hidden states NaN from optimizer step `step` on (as a diverging run would).

    The final norm, not lm_head: TRL computes the loss from `lm_head.weight` directly (fused head).
    """

    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step + 1 == self.step:
            final_norm = model.get_base_model().model.norm
            final_norm.register_forward_hook(lambda module, inputs, output: output * float("nan"))


def test_nan_loss_halts_naming_the_step_and_the_last_good_checkpoint(tmp_path, tiny_model_dir, chat_rows):
    recipe, run = _make_run(tmp_path, tiny_model_dir, chat_rows[:8], [], max_steps=10, save_steps=2)
    with pytest.raises(TrainingDiverged) as caught:
        train(recipe, run, show_progress=False, callbacks=[_PoisonHiddenStatesFrom(5)])
    message = str(caught.value)
    good = run.checkpoints_dir / "checkpoint-4"
    assert f"training diverged at step 5: the gradients are not finite (NaN or inf)" in message
    assert f"last good checkpoint: {good}" in message
    assert last_good_checkpoint(run) == good
    # Halted before the optimizer applied the NaN: no later checkpoint, no adapter, finite saved weights.
    assert not (run.checkpoints_dir / "checkpoint-6").exists() and not run.adapter_dir.exists()
    assert all(torch.isfinite(t).all() for t in load_file(good / "adapter_model.safetensors").values())
    assert max(r["step"] for r in _metrics(run)) == 4


# ------------------------------------------------------------------ early stopping, rotation, trackers


def test_early_stopping_keeps_the_best_checkpoint_and_ends_on_it(tmp_path, tiny_model_dir):
    # Training teaches one reply; validation expects unrelated words, so its loss rises once the
    # model commits to the training reply. Patience 2: stop after two evaluations without a new best.
    train_rows = [_chat(f"order {i} status?", '{"status": "shipped"}') for i in range(8)]
    val_rows = [_chat(f"order {i} status?", "zebra violin quantum marmalade") for i in range(4)]
    recipe, run = _make_run(
        tmp_path, tiny_model_dir, train_rows, val_rows,
        max_steps=40, learning_rate=1e-2, eval_steps=2, early_stopping_patience=2, save_total_limit=1, report_to=["tensorboard"],
    )
    result = train(recipe, run, show_progress=False)
    evals = [(r["step"], r["eval_loss"]) for r in _metrics(run) if "eval_loss" in r]
    best_step, best_loss = min(evals, key=lambda e: e[1])
    assert result.steps < 40 and result.steps == best_step + 2 * 2  # two evaluations past the best
    assert result.eval_loss == pytest.approx(best_loss)
    # save_total_limit 1 keeps the newest checkpoint, and the best one in addition.
    kept = sorted(p.name for p in run.checkpoints_dir.glob("checkpoint-*"))
    assert kept == sorted({f"checkpoint-{best_step}", f"checkpoint-{result.steps}"})
    best = load_file(run.checkpoints_dir / f"checkpoint-{best_step}" / "adapter_model.safetensors")
    final = load_file(run.adapter_dir / "adapter_model.safetensors")
    assert all(torch.equal(best[k], final[k]) for k in best)  # the adapter is the best checkpoint's

    # tensorboard received the same training losses as metrics.jsonl
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run.root / "tensorboard"))
    events.Reload()
    board = {e.step: e.value for e in events.Scalars("train/loss")}
    logged = {r["step"]: r["loss"] for r in _metrics(run) if "loss" in r}
    assert board.keys() == logged.keys() and all(math.isclose(board[s], logged[s], rel_tol=1e-6) for s in logged)
    assert all(r["peak_rss_mb"] > 10 for r in _metrics(run) if "loss" in r)


def test_tunekit_run_refuses_a_run_with_checkpoints_and_offers_resume(tmp_path):
    from tunekit.pipeline import claim_run_dir

    run = RunPaths(tmp_path / "run")
    _fake_checkpoint(run, 8)
    with pytest.raises(RunDirError) as caught:
        claim_run_dir(run, overwrite=False)
    assert "already holds a run with training checkpoints" in str(caught.value)
    assert "pass --resume to continue it from its newest checkpoint" in str(caught.value)
    claim_run_dir(run, overwrite=True)
    assert not any(run.root.iterdir())  # --overwrite starts clean
