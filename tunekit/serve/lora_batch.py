"""Mixed-adapter batches at a cost that does not grow with the number of adapters in the batch.

PEFT answers `adapter_names=[...]` by splitting the batch per adapter in every LoRA layer: for each
distinct adapter a list of row indices is built in Python, the rows are gathered, run through
`lora_B(lora_A(x))` and scattered back. A decode step of the embedded model with three adapters
in the batch is then ~3x the LoRA ops of a step with one (120 adapted modules x 3 sub-batches), and
on a CPU those small ops, not FLOPs, are the cost: interleaved requests to three adapters took 22 %
longer than the same requests to one (bench/serve_throughput.py).

Here each LoRA layer keeps its adapters stacked (`A` as [slots, r, in], `B` as [slots, r, out],
ranks padded with zeros, slot 0 all zeros for the bare base). A batch routed to one adapter runs
`x @ A.T @ B * scaling` on views of that slot; a mixed batch gathers the slots it uses once, runs one
`x @ A_used.T` ([batch, tokens, used x r]), zeroes the columns of the other adapters per row (the
row's scaling folded into that mask) and one `@ B_used`: four ops whatever the mix. The ranks of
every adapter the batch uses are computed for every row, which is noise at r = 16 and a handful of
adapters in one batch, and the reason the used slots are gathered rather than all of them.

The stacks are rebuilt when the engine's adapters change (`refresh`, under the engine's model
lock); layers with a LoRA variant (DoRA) or other layouts keep PEFT's own mixed-batch forward.
"""

from __future__ import annotations

import types


class StackedAdapters:
    """The routing of one engine's model: adapter name -> slot, and the per-layer stacks."""

    def __init__(self) -> None:
        self.generation = None
        self.slots: dict[str, int] = {}
        self._routes: dict[tuple, tuple] = {}

    def refresh(self, model, generation) -> int:
        """Restack every LoRA layer when `generation` (the engine's count of adapter changes) moved.
        Returns how many layers use the stacked forward."""
        if generation == self.generation:
            return -1
        from peft.tuners.lora.layer import Linear as LoraLinear

        names = sorted(getattr(model, "peft_config", {}))
        self.slots = {name: slot for slot, name in enumerate(names, start=1)}
        self._routes = {}
        stacked = 0
        for module in model.modules():
            if not isinstance(module, LoraLinear):
                continue
            if _stackable(module):
                _stack(module, self)
                stacked += 1
            else:
                module.__dict__.pop("_mixed_batch_forward", None)  # PEFT's own, from the class
                module.__dict__.pop("_tunekit_stack", None)
        self.generation = generation
        return stacked

    def route(self, adapter_names: list[str], device):
        """(slot of every row if the batch has one adapter else None, used slots, row mask) for a batch, cached."""
        key = tuple(adapter_names)
        cached = self._routes.get(key)
        if cached is None:
            import torch

            slots = [self.slots.get(name, 0) for name in adapter_names]
            used = sorted(set(slots) - {0})
            single = used[0] if len(used) == 1 and all(s == used[0] for s in slots) else None
            cached = (single, used, torch.tensor(slots, device=device), torch.tensor(used, dtype=torch.long, device=device))
            if len(self._routes) > 4096:
                self._routes.clear()
            self._routes[key] = cached
        return cached


def _stackable(module) -> bool:
    return (
        not getattr(module, "lora_variant", {})
        and not getattr(module, "fan_in_fan_out", False)
        and all(layer.bias is None for layer in [*module.lora_A.values(), *module.lora_B.values()])
        and not getattr(module, "lora_magnitude_vector", None)
    )


def _stack(module, routing: StackedAdapters) -> None:
    import torch
    from peft.tuners.lora.layer import VARIANT_KWARG_KEYS

    weights = [(slot, module.lora_A[name].weight, module.lora_B[name].weight, module.scaling[name])
               for name, slot in routing.slots.items() if name in module.lora_A]  # fmt: skip
    rank = max((a.shape[0] for _, a, _, _ in weights), default=1)
    like = module.base_layer.weight
    count = len(routing.slots) + 1
    A = torch.zeros(count, rank, module.in_features, dtype=like.dtype, device=like.device)
    B = torch.zeros(count, rank, module.out_features, dtype=like.dtype, device=like.device)
    scaling = torch.zeros(count, dtype=like.dtype, device=like.device)
    with torch.no_grad():
        for slot, a, b, scale in weights:
            A[slot, : a.shape[0]] = a
            B[slot, : a.shape[0]] = b.t()
            scaling[slot] = scale
    module._tunekit_stack = (routing, A, B, scaling, tuple(VARIANT_KWARG_KEYS))
    module._mixed_batch_forward = types.MethodType(_stacked_forward, module)


def _stacked_forward(self, x, *args, adapter_names: list[str], **kwargs):
    if x.dim() != 3 or x.shape[0] != len(adapter_names):
        return type(self)._mixed_batch_forward(self, x, *args, adapter_names=adapter_names, **kwargs)
    routing, A, B, scaling, variant_keys = self._tunekit_stack
    for key in variant_keys:  # as PEFT's own: not for the base layer
        kwargs.pop(key, None)
    result = self.base_layer(x, *args, **kwargs)
    single, used, row_slots, used_index = routing.route(adapter_names, x.device)
    if not used:
        return result
    dtype = result.dtype
    x = x.to(A.dtype)
    if single is not None:
        return result + ((x @ A[single].t()) @ B[single] * scaling[single]).to(dtype)
    rank = A.shape[1]
    A_used = A.index_select(0, used_index).reshape(-1, A.shape[2])  # [used x r, in]
    B_used = B.index_select(0, used_index).reshape(-1, B.shape[2])  # [used x r, out]
    # Row i keeps the r columns of its own slot, times its scaling (0 for the base and other adapters).
    mask = (row_slots.unsqueeze(1) == used_index.unsqueeze(1).expand(-1, rank).reshape(1, -1)).to(A.dtype)
    mask = mask * scaling.index_select(0, row_slots).unsqueeze(1)
    lora = ((x @ A_used.t()) * mask.unsqueeze(1)) @ B_used
    return result + lora.to(dtype)
