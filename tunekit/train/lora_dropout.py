"""LoRA dropout that keeps a one-byte mask for backward instead of two fp32 copies of the input.

PEFT computes a LoRA branch as `lora_B(lora_A(dropout(x)))`. Off CUDA, torch's dropout saves its
fp32 noise tensor for backward (the fused kernel that keeps a bool mask is CUDA-only), and
`lora_A` saves the dropped fp32 copy of `x` for its weight gradient: eight bytes per input
element for each adapted module, seven modules per decoder layer with `all-linear`. On the
shipped example that was ~55 % of all saved activations (bench/results/train_cpu.json,
`memory_breakdown`). Here the dropout and `lora_A` are one autograd function that saves `x`
itself (the same tensor the base layer and the sibling q/k/v branches already hold, so no new
memory) and a bool mask, and rebuilds the dropped input in backward: one byte per element.

The values are those of PEFT's branch for the same mask (the mask is drawn with torch's RNG, as
dropout draws it, but not in the same order, so a run is not bit-identical to an unfused one).
The module keeps its class's state-dict keys: `lora_A` stays an `nn.Linear` (a subclass), so the
adapter saved at the end is the same PEFT adapter.
"""

from __future__ import annotations

import torch
from torch import nn


class _DropoutLinear(torch.autograd.Function):
    """`linear(x * mask * scale, weight)` saving `x`, the bool mask and the weight."""

    @staticmethod
    def forward(ctx, x, weight, mask, scale: float):
        ctx.save_for_backward(x, weight, mask)
        ctx.scale = scale
        return nn.functional.linear(x * mask * scale, weight)

    @staticmethod
    def backward(ctx, grad):
        x, weight, mask = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad @ weight) * mask * ctx.scale
        if ctx.needs_input_grad[1]:
            dropped = (x * mask * ctx.scale).reshape(-1, x.shape[-1])
            grad_w = grad.reshape(-1, grad.shape[-1]).t() @ dropped
        return grad_x, grad_w, None, None


def dropout_linear(x: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, p: float) -> torch.Tensor:
    """`linear(dropout(x), weight)` for a given keep-mask (bool, x's shape) and drop probability."""
    return _DropoutLinear.apply(x, weight, mask, 1.0 / (1.0 - p))


class DropoutLoraA(nn.Linear):
    """A PEFT `lora_A` with its adapter's dropout folded in (`dropout_p`); plain linear in eval mode."""

    dropout_p: float = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.dropout_p == 0.0:
            return super().forward(x)
        mask = torch.rand(x.shape, device=x.device) >= self.dropout_p
        return dropout_linear(x, self.weight, mask, self.dropout_p)


def fold_lora_dropout(model) -> int:
    """Fold every vanilla LoRA branch's dropout into its `lora_A` (see the module doc). Branches of
    variants (DoRA) and `lora_A`s with a bias are left as PEFT built them. Returns how many were folded."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    folded = 0
    for module in model.modules():
        if not isinstance(module, LoraLinear):
            continue
        for name, lora_A in module.lora_A.items():
            dropout = module.lora_dropout[name]
            if name in getattr(module, "lora_variant", {}) or type(lora_A) is not nn.Linear or lora_A.bias is not None:
                continue
            if not isinstance(dropout, nn.Dropout) or dropout.p == 0.0:
                continue
            lora_A.__class__ = DropoutLoraA
            lora_A.dropout_p = float(dropout.p)
            module.lora_dropout[name] = nn.Identity()
            folded += 1
    return folded
