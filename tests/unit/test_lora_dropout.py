"""LoRA dropout folded into lora_A (tunekit.train.lora_dropout): PEFT's gradients for the same mask,
one byte per element kept for backward instead of two fp32 copies, the adapter unchanged on disk."""

from __future__ import annotations

import pytest
import torch

from tunekit.train.lora_dropout import DropoutLoraA, dropout_linear, fold_lora_dropout


def test_gradients_equal_linear_over_dropout_with_the_same_mask():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 16, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(3, 5, 16) >= 0.3
    out = dropout_linear(x, weight, mask, 0.3)
    reference_x, reference_w = x.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    reference = torch.nn.functional.linear(reference_x * mask / 0.7, reference_w)
    torch.testing.assert_close(out, reference)
    upstream = torch.randn_like(out)
    (out * upstream).sum().backward()
    (reference * upstream).sum().backward()
    torch.testing.assert_close(x.grad, reference_x.grad)
    torch.testing.assert_close(weight.grad, reference_w.grad)
    assert torch.autograd.gradcheck(lambda a, w: dropout_linear(a, w, mask, 0.3), (x, weight))


def _peft_model(tiny_model_dir, dropout: float, use_dora: bool = False):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout, target_modules="all-linear", use_dora=use_dora, init_lora_weights=False)
    return get_peft_model(base, config)


def _saved_bytes(model, ids) -> int:
    """Bytes of the distinct activation storages autograd keeps for backward of one training forward
    of the decoder layers (weights and the LM head's logits left out: they do not change)."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor):
        pointer = tensor.untyped_storage().data_ptr()
        if pointer not in weights:
            storages[pointer] = tensor.untyped_storage().nbytes()
        return tensor

    decoder = model.get_base_model().model
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        decoder(input_ids=ids).last_hidden_state.square().mean().backward()
    return sum(storages.values())


def test_folding_halves_what_backward_keeps_and_keeps_the_adapter(tiny_model_dir, tmp_path):
    model = _peft_model(tiny_model_dir, dropout=0.1)
    model.train()
    ids = torch.randint(0, 100, (4, 48))
    keys = sorted(model.state_dict())
    with torch.no_grad():
        model.eval()
        before_eval = model(input_ids=ids).logits
        model.train()
    unfolded = _saved_bytes(model, ids)

    lora_modules = sum(len(m.lora_A) for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "lora_dropout"))
    assert fold_lora_dropout(model) == lora_modules > 0
    folded = _saved_bytes(model, ids)
    # 7 adapted modules per layer: 8 bytes per input element each before, 1 after.
    assert folded < 0.7 * unfolded, (folded, unfolded)

    assert sorted(model.state_dict()) == keys  # the same PEFT adapter is saved
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(model(input_ids=ids).logits, before_eval)  # eval mode: no dropout, same answers
        model.train()
        assert not torch.allclose(model(input_ids=ids).logits, before_eval)  # training mode drops inputs
    model.save_pretrained(tmp_path / "adapter")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, before_eval)


def test_the_drop_rate_is_the_configured_one():
    layer = torch.nn.Linear(1000, 1, bias=False)
    layer.__class__ = DropoutLoraA
    layer.dropout_p = 0.25
    torch.nn.init.ones_(layer.weight)
    x = torch.ones(200, 1000, requires_grad=True)
    out = layer(x)
    kept = out / (1000 / 0.75)  # each kept element contributes 1 / 0.75
    assert kept.mean().item() == pytest.approx(0.75, abs=0.01)
    out.sum().backward()
    dropped, kept_grad = torch.unique(x.grad).tolist()
    assert (dropped, kept_grad) == (0.0, pytest.approx(1 / 0.75))


@pytest.mark.parametrize(("dropout", "use_dora"), [(0.0, False), (0.1, True)])
def test_no_dropout_and_dora_are_left_as_peft_built_them(tiny_model_dir, dropout, use_dora):
    model = _peft_model(tiny_model_dir, dropout=dropout, use_dora=use_dora)
    assert fold_lora_dropout(model) == 0
    assert not any(isinstance(m, DropoutLoraA) for m in model.modules())
