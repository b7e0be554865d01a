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

Micro-batches under a memory budget: on a CPU the activations kept for backward are fp32 and
there is no fused kernel to shrink them, so they, not the weights, set the peak (the example's
8-row batch: 0.6 GB of weights and optimizer state, ~3.2 GB more at the peak of a step). When the
estimate of a step's peak at `train.batch_size` rows is over `train.fast.cpu_memory_budget_gib`,
each batch is split into the largest micro-batch that fits, and gradient accumulation makes up
the rest: the optimizer sees the same rows per step (the sampler's order is unchanged, so each
step takes the same rows) and, with TRL's loss summed over the batch's trained tokens and divided
by their count across all its micro-batches, the same loss and gradients (tested). A split
never goes below MIN_MICRO_TOKENS expected tokens per micro-batch: each forward and backward
has a fixed cost (Python over ~200 LoRA modules), and one 91-token row per micro-batch ran 35 %
slower than two, while two and four were as fast as eight (bench/results/train_cpu.json).

The estimate, in bytes: the loaded weights, 16 per trainable parameter (fp32 gradient and AdamW
moments; counted by tunekit.train.estimate.count_shapes), RUNTIME_BYTES, and ACTIVATION_PEAK_FACTOR x the fp32 saved-for-backward tensors of
tunekit.train.memory for the micro-batch's tokens (rows x the 95th-percentile length padding-free,
rows x the longest row padded). Both constants are fitted to the example's measured peaks at 8, 4, 2 and 1
rows (3.79, 2.96, 2.20, 1.89 GiB; the fit is within 0.2 GiB of each): RUNTIME_BYTES is the
interpreter and libraries (~0.5 GiB after imports) plus what a step holds besides activations
(the LM head's tiles, allocator arenas), the factor what backward holds at once on top of the
saved tensors (gradients of the same shapes). No attention term: SDPA's CPU kernel does not keep
the (tokens per row)^2 probabilities (fitting one gave it a negative weight).
"""

from __future__ import annotations

from tunekit.config import Recipe
from tunekit.train.fastpath import GIB

ROW_TOKENS_PER_HIDDEN = 2  # the expected packed row may be up to this many times the hidden size
RUNTIME_BYTES = int(1.1 * GIB)
ACTIVATION_PEAK_FACTOR = 2.7
MIN_MICRO_TOKENS = 160


def padding_free(recipe: Recipe, model_config, lengths: list[int], rows: int | None = None) -> tuple[bool, str]:
    """(whether the batches go padding-free on this CPU, why), from the training rows' lengths
    and the rows of a (micro-)batch (default train.batch_size)."""
    train = recipe.train
    if not train.fast.padding_free:
        return False, "train.fast.padding_free is false"
    if train.packing:
        return False, "train.packing already lays packed examples out padding-free"
    if not lengths:
        return False, "no training rows"
    hidden = model_config.get_text_config().hidden_size
    row = (rows or train.batch_size) * sum(lengths) / len(lengths)
    limit = ROW_TOKENS_PER_HIDDEN * hidden
    if row > limit:
        return False, f"a batch's row of ~{row:.0f} tokens is over {limit} (2 x hidden): the block-diagonal attention would cost more than padding"
    return True, f"a batch's row of ~{row:.0f} tokens is within {limit} (2 x hidden): attention over it is cheaper than padding"


def step_peak_bytes(recipe: Recipe, model, lengths: list[int], rows: int, padding_free_on: bool, trainable: int | None = None) -> int:
    """Estimated peak resident memory of a CPU training step over `rows` examples (module docstring);
    `trainable`: the recipe's trainable parameters, when already counted (trainable_parameters)."""
    from tunekit.train.memory import activation_bytes, model_dims

    dims = model_dims(model.config)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    trainable = trainable_parameters(recipe, model) if trainable is None else trainable
    row = (long_row(lengths) if padding_free_on else max(lengths)) if lengths else recipe.data.max_length
    every_n = 1 if recipe.train.gradient_checkpointing else None
    saved = 2 * activation_bytes(dims, int(rows * row), 0, every_n)  # tunekit.train.memory counts bf16; a CPU keeps fp32
    return int(weights + 16 * trainable + RUNTIME_BYTES + ACTIVATION_PEAK_FACTOR * saved)


def long_row(lengths: list[int]) -> float:
    """The 95th percentile of the rows' lengths: a step's peak comes with its longer batches (the
    example's full run peaked at 2.42 GiB around step 30, 0.2 GiB over its first steps)."""
    ordered = sorted(lengths)
    return float(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))])


def trainable_parameters(recipe: Recipe, model) -> int:
    """Parameters the recipe trains: every one for full fine-tuning, else the adapter's exact count."""
    from tunekit.train.estimate import count_shapes

    if recipe.train.adapter == "full":
        return sum(p.numel() for p in model.parameters())
    return count_shapes(model.config, recipe).adapter


def micro_batch(recipe: Recipe, model, lengths: list[int]) -> tuple[int, bool, dict]:
    """(rows per micro-batch, padding-free at that size, what the manifest records): the largest
    divisor of train.batch_size whose estimated step peak is within train.fast.cpu_memory_budget_gib,
    and not under MIN_MICRO_TOKENS expected tokens."""
    train = recipe.train
    budget = train.fast.cpu_memory_budget_gib
    mean = sum(lengths) / len(lengths) if lengths else recipe.data.max_length

    trainable = trainable_parameters(recipe, model)
    divisors = [d for d in range(train.batch_size, 0, -1) if train.batch_size % d == 0]
    allowed = [d for d in divisors if d == train.batch_size or d * mean >= MIN_MICRO_TOKENS]
    peaks = {d: step_peak_bytes(recipe, model, lengths, d, padding_free(recipe, model.config, lengths, d)[0], trainable) for d in allowed}
    fitting = [d for d in allowed if budget is not None and peaks[d] <= budget * GIB]
    chosen = train.batch_size if budget is None else (fitting[0] if fitting else allowed[-1])
    full, at = peaks[train.batch_size], peaks[chosen]
    if budget is None:
        why = "no memory budget (train.fast.cpu_memory_budget_gib: null)"
    elif chosen == train.batch_size and fitting:
        why = f"the estimated step peak ~{full / GIB:.2f} GiB is within the {budget:g} GiB budget"
    elif fitting:
        why = f"{train.batch_size} rows would peak at ~{full / GIB:.2f} GiB, over the {budget:g} GiB budget; {chosen} rows at ~{at / GIB:.2f} GiB"
    else:
        why = (
            f"~{at / GIB:.2f} GiB at {chosen} rows (~{chosen * mean:.0f} tokens, the smallest micro-batch that keeps a "
            f"step efficient) is still over the {budget:g} GiB budget: lower train.batch_size or data.max_length, or turn "
            "on train.gradient_checkpointing"
        )
    on, reason = padding_free(recipe, model.config, lengths, chosen)
    accumulation = train.gradient_accumulation_steps * (train.batch_size // chosen)
    record = {
        "rows": chosen, "gradient_accumulation_steps": accumulation, "effective_batch": chosen * accumulation,
        "estimated_peak_gib": round(at / GIB, 2), "budget_gib": budget, "reason": why,
    }  # fmt: skip
    return chosen, on, {"cpu_micro_batch": record, "cpu_padding_free": {"on": on, "reason": reason}}


def training_args(recipe: Recipe, model, train_ds) -> tuple[dict, dict]:
    """(trainer arguments for a CPU run, what the manifest records about them)."""
    lengths = [len(ids) for ids in train_ds["input_ids"]]
    rows, on, details = micro_batch(recipe, model, lengths)
    args = {"padding_free": True, "max_length": None} if on else {}  # rows were truncated when tokenized
    if rows != recipe.train.batch_size:
        args.update(per_device_train_batch_size=rows, gradient_accumulation_steps=details["cpu_micro_batch"]["gradient_accumulation_steps"])
    return args, details
