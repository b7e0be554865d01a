"""Mix general data into the training set (train.mix), to limit forgetting.

The general file is read and validated by tunekit.data's own readers, so every input format
works and every row is accounted for: rows of another kind than the method learns from, rows
that fail validation and chat rows longer than data.max_length go to data/mix_quarantine.jsonl
with their reason; the sampled rows are written with the task rows to data/train_mixed.jsonl,
which is exactly what is trained on.
"""

from __future__ import annotations

import random

from tunekit.config import Recipe
from tunekit.data.formats import KIND_FOR_METHOD
from tunekit.errors import DataError
from tunekit.runs import RunPaths, write_jsonl
from tunekit.runs import sha256_file


def mixed_count(task_rows: int, ratio: float) -> int:
    """General rows to add so that they make up `ratio` of the final training set (at least one)."""
    return max(1, round(task_rows * ratio / (1.0 - ratio)))


def _usable_rows(recipe: Recipe, run: RunPaths, tokenizer) -> tuple[list, list[dict], int]:
    """The general file's rows this method can train on, the quarantined ones, and the record count."""
    from tunekit.data.validate import read_input
    from tunekit.train.masking import tokenize_chat

    mix = recipe.train.mix
    try:
        source = read_input("mix", mix.file, mix.file.name, "auto")
    except DataError as err:  # the reader names data.* keys; this file is train.mix.file
        raise DataError(
            f"train.mix.file: {err.message}",
            hint=f"give train.mix.file rows of one format, of the kind train.method {recipe.train.method} trains on",
        ) from None
    quarantined = [r.to_json() for r in source.rejected]
    wanted = KIND_FOR_METHOD[recipe.train.method]
    usable = []
    for example in source.examples:
        if example.kind != wanted:
            detail = f"a {example.kind} row; train.method {recipe.train.method} trains on {wanted} rows"
            quarantined.append({"source": example.source, "line": example.line, "reason": "wrong_kind", "detail": detail, "raw": example.raw})
            continue
        if wanted == "chat":
            length = len(tokenize_chat(tokenizer, example.messages).input_ids)
            if length > recipe.data.max_length:
                detail = f"{length} tokens > data.max_length {recipe.data.max_length}"
                quarantined.append({"source": example.source, "line": example.line, "reason": "over_length", "detail": detail, "raw": example.raw})
                continue
        usable.append(example)
    return usable, quarantined, source.lines - source.blank


def mix_general_rows(recipe: Recipe, run: RunPaths, task_rows: list[dict], tokenizer) -> tuple[list[dict], dict]:
    """The training rows with general rows mixed in at `train.mix.ratio`, and the accounting."""
    mix = recipe.train.mix
    if not mix.file.exists():
        raise DataError(
            f"train.mix.file: file not found: {mix.file}",
            hint="fix train.mix.file in the recipe (relative paths start at the recipe's folder)",
        )
    usable, quarantined, records = _usable_rows(recipe, run, tokenizer)
    if quarantined:
        write_jsonl(run.mix_quarantine, quarantined)
    elif run.mix_quarantine.exists():
        run.mix_quarantine.unlink()
    needed = mixed_count(len(task_rows), mix.ratio)
    if len(usable) < needed:
        raise DataError(
            f"train.mix.file {mix.file} has {len(usable)} usable rows; train.mix.ratio {mix.ratio} with "
            f"{len(task_rows)} training rows needs {needed}",
            hint="lower train.mix.ratio or add rows to the general file"
            + (f" ({len(quarantined)} rows were set aside, see {run.mix_quarantine})" if quarantined else ""),
        )
    rng = random.Random(mix.seed)
    picked = rng.sample(usable, needed)
    mixed = [{**e.payload, "meta": {"source": e.source, "line": e.line, "mixed": True}} for e in picked]
    rows = [*task_rows, *mixed]
    rng.shuffle(rows)
    write_jsonl(run.mixed_train, rows)
    return rows, {
        "file": str(mix.file),
        "sha256": sha256_file(mix.file) if mix.file.is_file() else None,
        "ratio": mix.ratio,
        "seed": mix.seed,
        "records_in_file": records,
        "usable_rows": len(usable),
        "quarantined_rows": len(quarantined),
        "quarantine": str(run.mix_quarantine) if quarantined else None,
        "task_rows": len(task_rows),
        "mixed_rows": needed,
        "train_rows": len(rows),
        "mixed_share": round(needed / len(rows), 4),
        "mixed_train": str(run.mixed_train),
        "mixed_train_sha256": sha256_file(run.mixed_train),
    }
