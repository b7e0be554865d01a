"""The LM head scored at trained positions only (tunekit.train.lm_head) equals full logits."""

from __future__ import annotations

import pytest
import torch

from tests.unit.train_helpers import tiny_train_run
from tunekit.runs import write_jsonl
from tunekit.train import sft


def _trainer(tmp_path, tiny_model_dir, chat_rows, gradient_checkpointing: bool):
    recipe, run = tiny_train_run(
        tmp_path, tiny_model_dir, max_steps=1, gradient_checkpointing=gradient_checkpointing, lora={"dropout": 0.0}
    )
    write_jsonl(run.split("train"), [{**row, "meta": {"source": "train.jsonl", "line": i + 1}} for i, row in enumerate(chat_rows)])
    built = sft.build(recipe, run)
    return built.trainer, built.details


def _lora_grads(model) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("gradient_checkpointing", [False, True])
def test_loss_and_lora_gradients_equal_the_full_logits_computation(tmp_path, tiny_model_dir, chat_rows, gradient_checkpointing):
    trainer, details = _trainer(tmp_path, tiny_model_dir, chat_rows, gradient_checkpointing)
    assert details["lm_head_trained_positions_only"] is True
    model = trainer.model
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        assert model.get_base_model().model.gradient_checkpointing
    model.train()
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    labels = batch["labels"]
    assert 0 < int((labels[:, 1:] != -100).sum()) < labels[:, 1:].numel()  # prompts and padding are skipped

    compact = trainer.compute_loss(model, dict(batch))  # TRL's compute_loss on the compact head
    compact.backward()
    compact_grads = _lora_grads(model)

    # The plain computation: full (batch, seq, vocab) logits and transformers' own shifted cross-entropy.
    full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss
    full.backward()
    full_grads = _lora_grads(model)

    torch.testing.assert_close(compact, full, rtol=1e-5, atol=1e-6)
    assert compact_grads.keys() == full_grads.keys() and len(compact_grads) == 2 * 7 * 2
    assert any(g.abs().sum() > 0 for g in compact_grads.values())
    for name, grad in compact_grads.items():
        torch.testing.assert_close(grad, full_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_metrics_match_trl_head_and_an_all_masked_batch_is_a_differentiable_zero(tmp_path, tiny_model_dir, chat_rows):
    trainer, _ = _trainer(tmp_path, tiny_model_dir, chat_rows, gradient_checkpointing=False)
    model = trainer.model
    model.train()
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    ours = model(**batch, fused_lm_head=True)
    trl_forward = model.get_base_model().forward.__func__.trl_forward
    theirs = trl_forward(**batch, fused_lm_head=True)  # TRL scores every position on CPU
    for field in ("log_probs", "entropy", "is_top1", "label_mask"):
        torch.testing.assert_close(getattr(ours, field), getattr(theirs, field), rtol=1e-5, atol=1e-5, msg=field)
    torch.testing.assert_close(ours.loss, theirs.loss)

    masked = {**batch, "labels": torch.full_like(batch["labels"], -100)}
    loss = trainer.compute_loss(model, masked)
    loss.backward()
    assert float(loss) == 0.0
