"""Contamination: test examples that also appear in the training data (exactly or nearly).

Uses the data stage's own row identity and text (tunekit.data.neardup: leak_key, row_text) and
its MinHash signatures and LSH banding (tunekit.data.minhash: signatures, jaccard, lsh_bands), so
"the same example" means here what it means in `tunekit data prepare`'s leakage check: the user
and assistant contents, system prompts left out, compared at the recipe's shingle size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tunekit.config import CleanConfig
from tunekit.runs import RunPaths, read_jsonl


def training_rows(run: RunPaths) -> list[tuple[str, int, list]]:
    """(split, line, messages) of every row trained or validated on: the prepared train split, or
    data/train_mixed.jsonl where train.mix added general rows to it, and the validation split."""
    rows = []
    trained = {"train_mixed": run.mixed_train} if run.mixed_train.is_file() else {"train": run.split("train")}
    sources = {**trained, "val": run.split("val")}
    for split, path in sources.items():
        if path.is_file():
            for line, row in enumerate(read_jsonl(path), start=1):
                if "messages" in row:
                    rows.append((split, line, row["messages"]))
    return rows


def find_contamination(examples: list[list[dict]], train: list[tuple[str, int, list]], *, near_threshold: float,
                       clean: CleanConfig | None = None) -> list[dict | None]:
    """Per test example (full chat incl. the reference answer): None, or where it occurs in training."""
    from tunekit.data.minhash import jaccard, lsh_bands, signatures
    from tunekit.data.neardup import leak_key, row_text

    exact = {}
    for split, line, messages in train:
        exact.setdefault(leak_key(messages), (split, line))
    found: list[dict | None] = []
    for messages in examples:
        hit = exact.get(leak_key(messages))
        found.append({"kind": "exact", "split": hit[0], "line": hit[1], "similarity": 1.0} if hit else None)
    pending = [i for i, flag in enumerate(found) if flag is None]
    if not pending or not train:
        return found
    settings = clean or CleanConfig()
    size, perms = settings.shingle_size, settings.minhash_permutations
    train_sigs = signatures([row_text(m) for _, _, m in train], size, perms)
    test_sigs = signatures([row_text(examples[i]) for i in pending], size, perms)
    # LSH over the training rows only (test rows are never compared with each other here): a
    # test row's candidates are the training rows that share at least one band with it.
    bands = lsh_bands(perms, near_threshold)
    width = perms // bands
    buckets: list[dict[bytes, list[int]]] = [{} for _ in range(bands)]
    for row, signature in enumerate(train_sigs):
        for band in range(bands):
            buckets[band].setdefault(signature[band * width : (band + 1) * width].tobytes(), []).append(row)
    for position, signature in zip(pending, test_sigs):
        candidates = sorted({row for band in range(bands) for row in buckets[band].get(signature[band * width : (band + 1) * width].tobytes(), ())})
        if not candidates:
            continue
        similarity = jaccard(signature, train_sigs[candidates])
        best = int(np.argmax(similarity))  # the first (earliest training row) of equals
        if similarity[best] >= near_threshold:
            split, line, _ = train[candidates[best]]
            found[position] = {"kind": "near", "split": split, "line": line, "similarity": round(float(similarity[best]), 4)}
    return found


def user_turns(messages: list[dict]) -> list[dict]:
    """Only the user's turns: what a prompt-only item (a forgetting-suite question) is compared on."""
    return [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
