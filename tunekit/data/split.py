"""Deterministic train/val/test splits (random, stratified by label, grouped by a key) and
per-split token-length statistics."""

from __future__ import annotations

import json
import math
import random

from tunekit.data.clean import dedup_key
from tunekit.data.validate import Example, InputFile, Rejected


def holdout_size(n_rows: int, fraction: float) -> int:
    """Rows to hold out: the rounded share, and at least one when asked for any and there are two rows."""
    if fraction <= 0 or n_rows < 2:
        return 0
    return max(1, round(n_rows * fraction))


def holdout_targets(n_rows: int, val_fraction: float, test_fraction: float) -> dict[str, int]:
    """Rows wanted in val and test; train always keeps at least one row."""
    n_val = holdout_size(n_rows, val_fraction)
    n_test = holdout_size(n_rows, test_fraction)
    # Never empty train: shrink test first, then val, until at least one row is left to learn from.
    while n_val + n_test > n_rows - 1 and (n_val or n_test):
        if n_test >= n_val and n_test:
            n_test -= 1
        else:
            n_val -= 1
    return {"val": n_val, "test": n_test}


def split_train(
    examples: list[Example],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    *,
    strata: list[str] | None = None,
    groups: list[str] | None = None,
) -> dict[str, list[Example]]:
    """Hold out val and test rows from train, deterministically by `seed`; train always keeps a row.

    - random (default): a seeded shuffle.
    - `strata` (a label per example): each label's rows are held out in proportion, so every split
      keeps the label shares (largest-remainder rounding makes the totals exact).
    - `groups` (a group value per example): whole groups are held out; no group spans two splits,
      and the fractions are met as closely as the group sizes allow.
    Identical examples (possible when dedup is off) always move together, so no copy of a held-out
    example stays in train. Each split keeps the input order of its rows."""
    if strata is not None and groups is not None:
        raise ValueError("a split is stratified or grouped, not both")
    rng = random.Random(seed)
    targets = holdout_targets(len(examples), val_fraction, test_fraction)
    filler = _Filler(len(examples), targets)
    if groups is not None:
        units = _joined_groups(examples, groups)
        rng.shuffle(units)
        filler.fill_closest(units)
    elif strata is not None:
        _fill_stratified(examples, strata, targets, rng, filler)
    else:
        units = _identical(examples, range(len(examples)))
        rng.shuffle(units)
        filler.fill(units, targets)
    return {name: [examples[i] for i in sorted(rows)] for name, rows in filler.result().items()}


class _Filler:
    """Assigns units (lists of row indices that must stay together) to val, test or train."""

    def __init__(self, n_rows: int, targets: dict[str, int]):
        self.n_rows = n_rows
        self.targets = targets
        self.chosen: dict[str, list[int]] = {"val": [], "test": []}
        self.rest: list[int] = []

    def _room_in_train(self, size: int) -> bool:
        return self.n_rows - len(self.chosen["val"]) - len(self.chosen["test"]) - size >= 1

    def fill(self, units: list[list[int]], targets: dict[str, int]) -> None:
        """Each unit goes to the first split still short of its target (in `targets`, local counts)."""
        taken = {"val": 0, "test": 0}
        for unit in units:
            name = next((n for n in ("val", "test") if taken[n] < targets[n]), None)
            # A unit bigger than the room left in train would empty it; keep it in train.
            if name is None or not self._room_in_train(len(unit)):
                self.rest += unit
            else:
                self.chosen[name] += unit
                taken[name] += len(unit)

    def fill_closest(self, units: list[list[int]]) -> None:
        """Take a unit only when it brings its split closer to the target: a big group is not
        allowed to overshoot a small target; a split asked for stays non-empty when possible."""
        left: list[list[int]] = []
        for unit in units:
            name = next((n for n in ("val", "test") if self._closer(n, len(unit))), None)
            if name is None or not self._room_in_train(len(unit)):
                left.append(unit)
            else:
                self.chosen[name] += unit
        for name in ("val", "test"):
            if self.targets[name] and not self.chosen[name] and left:
                smallest = min(left, key=len)
                if self._room_in_train(len(smallest)):
                    left.remove(smallest)
                    self.chosen[name] += smallest
        for unit in left:
            self.rest += unit

    def _closer(self, name: str, size: int) -> bool:
        have, want = len(self.chosen[name]), self.targets[name]
        return have < want and abs(have + size - want) <= want - have

    def result(self) -> dict[str, list[int]]:
        return {"train": self.rest, "val": self.chosen["val"], "test": self.chosen["test"]}


def _identical(examples: list[Example], indices) -> list[list[int]]:
    """Indices grouped by identical content, in first-occurrence order (stable for the same input)."""
    same: dict[bytes, list[int]] = {}
    for index in indices:
        same.setdefault(dedup_key(examples[index].messages), []).append(index)
    return list(same.values())


def apportion(total: int, sizes: dict[str, int], capacity: dict[str, int]) -> dict[str, int]:
    """Split `total` over strata in proportion to `sizes` (largest remainder; ties by name),
    never giving a stratum more than its `capacity`."""
    n = sum(sizes.values())
    if not n or not total:
        return {k: 0 for k in sizes}
    quota = {k: min(total * s // n, capacity[k]) for k, s in sizes.items()}
    by_remainder = sorted(sizes, key=lambda k: (-(total * sizes[k] % n), k))
    left = total - sum(quota.values())
    while left > 0:
        open_strata = [k for k in by_remainder if quota[k] < capacity[k]]
        if not open_strata:
            break
        for k in open_strata[:left]:
            quota[k] += 1
            left -= 1
    return quota


def _fill_stratified(examples, strata, targets, rng: random.Random, filler: _Filler) -> None:
    members: dict[str, list[int]] = {}
    for index, label in enumerate(strata):
        members.setdefault(label, []).append(index)
    sizes = {label: len(rows) for label, rows in members.items()}
    val = apportion(targets["val"], sizes, sizes)
    test = apportion(targets["test"], sizes, {k: sizes[k] - val[k] for k in sizes})
    for label in sorted(members):  # sorted: the same seed gives the same split whatever the row order of labels
        units = _identical(examples, members[label])
        rng.shuffle(units)
        filler.fill(units, {"val": val[label], "test": test[label]})


def _joined_groups(examples: list[Example], groups: list[str]) -> list[list[int]]:
    """Rows of the same group, joined with any other group holding an identical example."""
    parent = list(range(len(examples)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict = {}
    for index, example in enumerate(examples):
        for key in (("group", groups[index]), ("content", dedup_key(example.messages))):
            if key in first:
                parent[root(index)] = root(first[key])
            else:
                first[key] = index
    units: dict[int, list[int]] = {}
    for index in range(len(examples)):
        units.setdefault(root(index), []).append(index)
    return list(units.values())


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


MISSING_GROUP_KEY = "missing_group_key"


def _group_value(raw: str, group_key: str) -> str | None:
    """The row's `group_key` field as text; None when the row has none (or an empty one)."""
    try:
        row = json.loads(raw)
    except (json.JSONDecodeError, RecursionError, TypeError):
        return None
    value = row.get(group_key) if isinstance(row, dict) else None
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def attach_groups(inputs: list[InputFile], group_key: str) -> None:
    """Set `Example.group` on the training rows from their original record (read before any
    cleaning or redaction touches it); a row without the key is quarantined as `missing_group_key`.
    Held-out files are used as they are, so their rows need no group."""
    for input_file in inputs:
        if input_file.key != "train":
            continue
        kept = []
        for example in input_file.examples:
            example.group = _group_value(example.raw, group_key)
            if example.group is None:
                detail = f"row has no `{group_key}` field (data.group_key), needed for data.split: grouped"
                input_file.rejected.append(Rejected(example.source, example.line, MISSING_GROUP_KEY, detail, example.raw))
            else:
                kept.append(example)
        input_file.examples = kept
