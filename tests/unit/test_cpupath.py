"""CPU training arguments (tunekit.train.cpupath): padding-free batches where they pay, same loss."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig

from tests.unit.train_helpers import tiny_train_run
from tunekit.runs import write_jsonl
from tunekit.train import cpupath, sft


def test_padding_free_while_the_row_of_a_batch_is_short(tmp_path, tiny_model_dir):
    config = LlamaConfig(hidden_size=576)
    recipe, _ = tiny_train_run(tmp_path, tiny_model_dir, batch_size=8)
    on, why = cpupath.padding_free(recipe, config, [90] * 10)  # the example: a row of ~720 tokens
    assert on and "720" in why and "1152" in why
    assert not cpupath.padding_free(recipe, config, [200] * 10)[0]  # 1600 > 2 x 576
    off, _ = tiny_train_run(tmp_path, tiny_model_dir, batch_size=8, fast={"padding_free": False})
    assert cpupath.padding_free(off, config, [90] * 10) == (False, "train.fast.padding_free is false")
    packed, _ = tiny_train_run(tmp_path, tiny_model_dir, batch_size=8, packing=True)
    assert not cpupath.padding_free(packed, config, [90] * 10)[0]


def _first_batch_loss(tmp_path, tiny_model_dir, chat_rows, padding_free: bool):
    recipe, run = tiny_train_run(
        tmp_path / str(padding_free), tiny_model_dir, max_steps=1, batch_size=2, lora={"dropout": 0.0},
        fast={"padding_free": padding_free},
    )
    write_jsonl(run.split("train"), [{**row, "meta": {"source": "t", "line": i + 1}} for i, row in enumerate(chat_rows[:4])])
    built = sft.build(recipe, run)
    trainer = built.trainer
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return built.details["cpu_padding_free"]["on"], batch, loss.detach(), grads


def test_padding_free_batch_has_the_padded_batch_loss_and_gradients(tmp_path, tiny_model_dir, chat_rows):
    on, free_batch, free_loss, free_grads = _first_batch_loss(tmp_path, tiny_model_dir, chat_rows, True)
    off, padded_batch, padded_loss, padded_grads = _first_batch_loss(tmp_path, tiny_model_dir, chat_rows, False)
    assert on and not off
    assert free_batch["input_ids"].shape[0] == 1 and "attention_mask" not in free_batch  # one row, no padding
    assert free_batch["input_ids"].numel() == int(padded_batch["attention_mask"].sum())
    torch.testing.assert_close(free_loss, padded_loss, rtol=1e-5, atol=1e-6)
    assert free_grads.keys() == padded_grads.keys() and free_grads
    for name, grad in free_grads.items():
        torch.testing.assert_close(grad, padded_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def _first_step(tmp_path, tiny_model_dir, chat_rows, budget):
    """(micro-batch record, the accumulated gradients the optimizer sees at step 1, the logged loss)."""
    from transformers import TrainerCallback

    recipe, run = tiny_train_run(
        tmp_path / str(budget), tiny_model_dir, max_steps=1, batch_size=8, lora={"dropout": 0.0},
        fast={"cpu_memory_budget_gib": budget},
    )  # fmt: skip
    write_jsonl(run.split("train"), [{**row, "meta": {"source": "t", "line": i + 1}} for i, row in enumerate(chat_rows[:8])])
    seen: dict = {}

    class Grab(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            seen["grads"] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

        def on_log(self, args, state, control, logs=None, **kwargs):
            seen.setdefault("loss", (logs or {}).get("loss"))

    built = sft.build(recipe, run, callbacks=[Grab()])
    built.trainer.train()
    return built.details["cpu_micro_batch"], built.trainer.args, seen["grads"], seen["loss"]


def test_micro_batches_under_a_budget_give_the_full_batch_loss_and_gradients(tmp_path, tiny_model_dir, chat_rows):
    whole, whole_args, whole_grads, whole_loss = _first_step(tmp_path, tiny_model_dir, chat_rows, None)
    split, split_args, split_grads, split_loss = _first_step(tmp_path, tiny_model_dir, chat_rows, 0.01)
    assert (whole["rows"], whole["gradient_accumulation_steps"], whole_args.per_device_train_batch_size) == (8, 1, 8)
    # Below any possible estimate: the smallest micro-batch of at least MIN_MICRO_TOKENS, the rest accumulated.
    rows = split["rows"]
    assert rows < 8 and (split["gradient_accumulation_steps"], split["effective_batch"]) == (8 // rows, 8)
    assert (split_args.per_device_train_batch_size, split_args.gradient_accumulation_steps) == (rows, 8 // rows)
    assert "still over the 0.01 GiB budget" in split["reason"] and split["estimated_peak_gib"] > 0.01
    assert split_loss == pytest.approx(whole_loss, rel=1e-5)
    assert split_grads.keys() == whole_grads.keys() and whole_grads
    for name, grad in whole_grads.items():
        torch.testing.assert_close(split_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_micro_batch_is_the_largest_divisor_within_the_budget(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lengths = [90] * 20
    recipe, _ = tiny_train_run(tmp_path, tiny_model_dir, batch_size=12)
    peaks = {
        rows: cpupath.step_peak_bytes(recipe, model, lengths, rows, cpupath.padding_free(recipe, model.config, lengths, rows)[0])
        for rows in (12, 6, 4, 3, 2, 1)
    }
    assert sorted(peaks.values()) == [peaks[r] for r in (1, 2, 3, 4, 6, 12)]  # more rows, more memory
    budget = (peaks[4] + peaks[6]) / 2 / cpupath.GIB  # room for 4 rows, not 6
    at_budget, _ = tiny_train_run(tmp_path, tiny_model_dir, batch_size=12, gradient_accumulation_steps=2, fast={"cpu_memory_budget_gib": budget})
    rows, on, details = cpupath.micro_batch(at_budget, model, lengths)
    record = details["cpu_micro_batch"]
    assert (rows, record["gradient_accumulation_steps"], record["effective_batch"]) == (4, 6, 24)
    assert "12 rows would peak" in record["reason"] and on is details["cpu_padding_free"]["on"]
    # Never under MIN_MICRO_TOKENS (160) expected tokens: 2 rows of 90, not 1, however small the budget.
    tight, _ = tiny_train_run(tmp_path, tiny_model_dir, batch_size=12, fast={"cpu_memory_budget_gib": 0.01})
    rows, _, details = cpupath.micro_batch(tight, model, lengths)
    assert rows == 2 and "still over" in details["cpu_micro_batch"]["reason"]
    none, _ = tiny_train_run(tmp_path, tiny_model_dir, batch_size=12, fast={"cpu_memory_budget_gib": None})
    assert cpupath.micro_batch(none, model, lengths)[0] == 12
