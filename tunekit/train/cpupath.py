"""Training arguments that differ on a CPU (the CUDA side is tunekit.train.fastpath).

Padding-free batches: the examples of a batch are laid end to end in one row (TRL's
`padding_free`, position_ids restarting at each example), so no pad token is computed or kept
for backward. With SDPA, transformers keeps the examples apart with a block-diagonal mask over
the whole row, so attention costs (examples x mean length)^2 instead of examples x (max
length)^2. On a GPU that trade loses to padded batches (fastpath keeps it off without a varlen
kernel); on a CPU the matmuls of the linear layers dominate while the row is short, and for the
shipped example (8 rows of ~90 tokens, padded to ~125) padding-free measured 22% faster and 30%
lower in peak memory (bench/results/train_cpu.json). The attention of the row costs about
n / (6 h) of the linear layers' FLOPs for n tokens of hidden size h, so it is used while the
expected row (batch_size x mean example length) stays within 2 h tokens, where attention adds
at most about a third while padding typically wastes more.
"""

from __future__ import annotations

from tunekit.config import Recipe

ROW_TOKENS_PER_HIDDEN = 2  # the expected packed row may be up to this many times the hidden size


def padding_free(recipe: Recipe, model_config, lengths: list[int]) -> tuple[bool, str]:
    """(whether the batches go padding-free on this CPU, why), from the training rows' lengths."""
    train = recipe.train
    if not train.fast.padding_free:
        return False, "train.fast.padding_free is false"
    if train.packing:
        return False, "train.packing already lays packed examples out padding-free"
    if not lengths:
        return False, "no training rows"
    hidden = model_config.get_text_config().hidden_size
    row = train.batch_size * sum(lengths) / len(lengths)
    limit = ROW_TOKENS_PER_HIDDEN * hidden
    if row > limit:
        return False, f"a batch's row of ~{row:.0f} tokens is over {limit} (2 x hidden): the block-diagonal attention would cost more than padding"
    return True, f"a batch's row of ~{row:.0f} tokens is within {limit} (2 x hidden): attention over it is cheaper than padding"


def training_args(recipe: Recipe, model, train_ds) -> tuple[dict, dict]:
    """(trainer arguments for a CPU run, what the manifest records about them)."""
    on, reason = padding_free(recipe, model.config, [len(ids) for ids in train_ds["input_ids"]])
    args = {"padding_free": True, "max_length": None} if on else {}  # rows were truncated when tokenized
    return args, {"cpu_padding_free": {"on": on, "reason": reason}}
