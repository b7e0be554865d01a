"""Deterministic train/val/test split and per-split token-length statistics."""

from __future__ import annotations

import math
import random

from tunekit.data.clean import dedup_key
from tunekit.data.validate import Example


def holdout_size(n_rows: int, fraction: float) -> int:
    """Rows to hold out: the rounded share, and at least one when asked for any and there are two rows."""
    if fraction <= 0 or n_rows < 2:
        return 0
    return max(1, round(n_rows * fraction))


def split_train(
    examples: list[Example], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[Example]]:
    """Hold out val and test rows from train with a seeded shuffle; train always keeps a row.

    Identical examples (possible when dedup is off) move together, so no copy of a held-out
    example stays in train. Each split keeps the input order of its rows."""
    groups: dict[tuple, list[int]] = {}
    for index, example in enumerate(examples):
        groups.setdefault(dedup_key(example.messages), []).append(index)
    order = list(groups.values())  # first-occurrence order: stable for the same input
    random.Random(seed).shuffle(order)

    n_val = holdout_size(len(examples), val_fraction)
    n_test = holdout_size(len(examples), test_fraction)
    # Never empty train: shrink test first, then val, until at least one row is left to learn from.
    while n_val + n_test > len(examples) - 1 and (n_val or n_test):
        if n_test >= n_val and n_test:
            n_test -= 1
        else:
            n_val -= 1

    chosen: dict[str, list[int]] = {"val": [], "test": []}
    targets = {"val": n_val, "test": n_test}
    rest: list[int] = []
    for group in order:
        name = next((n for n in ("val", "test") if len(chosen[n]) < targets[n]), None)
        # A group bigger than the room left in train would empty it; keep it in train.
        if name is None or len(examples) - len(chosen["val"]) - len(chosen["test"]) - len(group) < 1:
            rest += group
        else:
            chosen[name] += group
    return {
        "train": [examples[i] for i in sorted(rest)],
        "val": [examples[i] for i in sorted(chosen["val"])],
        "test": [examples[i] for i in sorted(chosen["test"])],
    }


def _percentile(sorted_values: list[int], q: float) -> int:
    """Nearest-rank percentile: a length that some example actually has."""
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def token_stats(examples: list[Example], max_length: int) -> dict:
    """min/mean/p50/p95/max of token lengths, and how many exceed max_length."""
    lengths = sorted(e.n_tokens for e in examples)
    if not lengths:
        return {"min": None, "mean": None, "p50": None, "p95": None, "max": None, "over_max_length": 0}
    return {
        "min": lengths[0],
        "mean": round(sum(lengths) / len(lengths), 2),
        "p50": _percentile(lengths, 50),
        "p95": _percentile(lengths, 95),
        "max": lengths[-1],
        "over_max_length": sum(1 for n in lengths if n > max_length),
    }
