"""CPU training arguments (tunekit.train.cpupath): padding-free batches where they pay, same loss."""

from __future__ import annotations

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
