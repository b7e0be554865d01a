"""The LM head scored only at trained positions, on devices where TRL scores every position.

TRL's SFTTrainer patches the model with a fused LM head (`trl.trainer.utils.add_fused_lm_head`):
the per-token log-probabilities come from `ChunkedLogProbFunction` in tiles, without the full
logits. On CUDA/XPU it passes only the positions whose next-token label is not -100; everywhere
else it passes every position, because on XLA-like devices a changing number of rows would
recompile the graph. On a CPU nothing recompiles, and the head (49k x 576 for SmolLM2, plus the
online softmax over the vocabulary, forward and again in backward) over every prompt and padding
token was ~45% of a step of the example (bench/train_cpu.py), while the loss reads ~20% of the
positions. This installs the compact selection on such devices; the result is TRL's own
`FusedCausalLMOutput` with the same values (zero at ignored positions), so TRL's compute_loss,
its metrics (entropy, token accuracy) and its loss types are unchanged.

Anything this does not handle the way TRL does (sequence-parallel pre-shifted labels, MoE router
logits, softcapped or scaled logits, a batch without a single trained token) goes to TRL's forward.
"""

from __future__ import annotations

import functools
import types

_SCALING_FIELDS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")
# Per-token outputs TRL's SFTTrainer asks of its fused head (its metrics need entropy and is_top1).
_SFT_OUTPUTS = ("log_probs", "entropy", "is_top1")


def supported(model) -> bool:
    """Whether the compact head computes exactly what TRL's head would for this model."""
    text_config = model.config.get_text_config()
    if any(getattr(text_config, name, None) is not None for name in _SCALING_FIELDS):
        return False
    return not getattr(text_config, "output_router_logits", False) and model.get_output_embeddings() is not None


def score_trained_positions_only(model, outputs: tuple[str, ...] = _SFT_OUTPUTS) -> bool:
    """Wrap the fused forward TRL put on `model` (the base model under PEFT) so that off CUDA/XPU
    only positions with a label are scored. Returns whether it was installed."""
    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE, FusedCausalLMOutput
    from trl.kernels import ChunkedLogProbFunction

    trl_forward = model.forward
    code = getattr(getattr(trl_forward, "__func__", None), "__code__", None)
    if not supported(model) or code is None or "fused_lm_head" not in code.co_varnames:
        return False  # not TRL's fused head (another TRL version, or no trainer patched this model)

    @functools.wraps(type(model).forward)
    def compact_forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs):
        device = self.get_output_embeddings().weight.device
        if not fused_lm_head or shift_labels is not None or device.type in ("cuda", "xpu") or labels is None:
            return trl_forward(
                *args, fused_lm_head=fused_lm_head, labels=labels, shift_labels=shift_labels,
                num_items_in_batch=num_items_in_batch, **kwargs,
            )  # fmt: skip
        mask = labels[:, 1:] != -100
        if not bool(mask.any()):  # TRL's path keeps an all-masked batch differentiable (a zero loss)
            return trl_forward(*args, fused_lm_head=True, labels=labels, num_items_in_batch=num_items_in_batch, **kwargs)
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        head = self.get_output_embeddings()
        per_token = ChunkedLogProbFunction.apply(
            hidden.to(device)[mask], head.weight, head.bias, labels[:, 1:].to(device)[mask], 1.0,
            _CHUNKED_LOGPROB_CHUNK_SIZE, None, 1.0, outputs,
        )  # fmt: skip
        # Back to (batch, seq-1) with zeros where no label is: the shape TRL's compute_loss reads.
        log_probs, entropy, log_sum_sq, mean_logits, is_top1 = (
            None if x is None else x.new_zeros(mask.shape).masked_scatter(mask, x) for x in per_token
        )
        count = mask.sum() if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(
            loss=-log_probs.sum() / count, log_probs=log_probs, entropy=entropy, log_sum_sq_probs=log_sum_sq,
            mean_logits=mean_logits, is_top1=is_top1, label_mask=mask,
        )  # fmt: skip

    compact_forward.trl_forward = trl_forward  # for tests that compare with TRL's own head
    model.forward = types.MethodType(compact_forward, model)
    return True
