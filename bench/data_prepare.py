"""Benchmark of the data stage on synthetic chat data with planted duplicates.

Generates N chat rows (seeded): ~80 % distinct, ~10 % exact copies and ~10 % near copies (1-3
words substituted or inserted, 3-shingle Jaccard about 0.75-0.92). Runs the stages of
`tunekit data prepare` one by one (read+validate, normalise, token lengths, exact dedup,
MinHash near-dedup, split, token stats), prints rows/s per stage, the near-dup recall and
precision against the planted truth, then times `prepare_data` end to end. Appends one JSON
object per run to bench/results/data_prepare.jsonl.

    TUNEKIT_HOME=/tmp/tkhome python bench/data_prepare.py --rows 100000

With `--memory 100000 300000` it instead measures the peak resident memory of `prepare_data`
for each size, each in a fresh process (ru_maxrss), and the memory per input row above the
process's footprint before the data stage started (tokenizer and libraries loaded).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results_file import append_record  # bench/ is on sys.path when a script here runs
from tunekit.config import parse_recipe
from tunekit.data.clean import apply_length_policy, deduplicate, measure_tokens
from tunekit.data.neardup import near_deduplicate
from tunekit.data.normalize import normalize_rows
from tunekit.data.prepare import prepare_data
from tunekit.data.split import split_train, token_stats
from tunekit.data.validate import read_input
from tunekit.models import load_tokenizer, resolve_model
from tunekit.runs import RunPaths
from tunekit.train.manifest import hardware

RESULTS = Path(__file__).parent / "results" / "data_prepare.jsonl"


def _vocabulary(tokenizer, size: int = 8000) -> list[str]:
    """Whole lower-case words of the tokenizer's vocabulary (one token each after a space), so
    token counts per word are close to English text rather than inflated by made-up words."""
    words = sorted(t[1:] for t in tokenizer.get_vocab() if t.startswith("\u0120") and t[1:].isalpha() and t[1:].islower() and len(t) > 3)
    return words[:: max(1, len(words) // size)]


def _edit(user: str, reply: str, rng: random.Random, vocab: list[str]) -> tuple[str, str]:
    """Words replaced or inserted at random places of the row: one edit per ~25 words (at least
    one), so the 3-shingle Jaccard with the original is about 0.75-0.92."""
    texts = [user.split(), reply.split()]
    n_words = len(texts[0]) + len(texts[1])
    for _ in range(rng.randint(1, max(1, n_words // 25))):
        words = texts[0] if rng.random() < len(texts[0]) / n_words else texts[1]
        position = rng.randrange(len(words))
        if rng.random() < 0.5:
            words[position] = rng.choice(vocab)
        else:
            words.insert(position, rng.choice(vocab))
    return " ".join(texts[0]), " ".join(texts[1])


def synthetic_rows(n_rows: int, seed: int, tokenizer) -> tuple[list[dict], set[int], set[int]]:
    """Rows plus the 0-based indices of planted exact and near duplicates."""
    rng = random.Random(seed)
    vocab = _vocabulary(tokenizer)
    n_exact = n_near = n_rows // 10
    n_base = n_rows - n_exact - n_near
    base = []
    for i in range(n_base):
        user = f"Question {i}: " + " ".join(rng.choice(vocab) for _ in range(rng.randint(15, 50))) + "?"
        reply = " ".join(rng.choice(vocab) for _ in range(rng.randint(25, 120))) + "."
        base.append((user, reply))
    plants = ["exact"] * n_exact + ["near"] * n_near
    rows = [{"messages": [{"role": "user", "content": u}, {"role": "assistant", "content": a}]} for u, a in base]
    slots = sorted(rng.sample(range(1, n_rows), n_exact + n_near))  # row 0 is always an original
    rng.shuffle(plants)
    exact, near = set(), set()
    out: list[dict] = []
    base_iter = iter(rows)
    kinds = dict(zip(slots, plants))
    for index in range(n_rows):
        kind = kinds.get(index)
        if kind is None:
            out.append(next(base_iter))
            continue
        source = out[rng.randrange(len(out))]  # a copy of an earlier row: the first one is kept
        if kind == "exact":
            out.append(json.loads(json.dumps(source)))
            exact.add(index)
        else:
            user, reply = _edit(*(m["content"] for m in source["messages"]), rng, vocab)
            out.append({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]})
            near.add(index)
    return out, exact, near


def _timed(stages: dict, name: str, n_rows: int, fn):
    # CPU seconds too: the machine may be shared, and rows per CPU-second is the per-core figure.
    start, cpu_start = time.perf_counter(), time.process_time()
    result = fn()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    stages[name] = {"rows": n_rows, "seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3),
                    "rows_per_s": round(n_rows / seconds) if seconds else None,
                    "rows_per_cpu_s": round(n_rows / cpu) if cpu else None}  # fmt: skip
    print(f"  {name:<14} {n_rows:>8} rows  {seconds:7.2f} s  {n_rows / max(seconds, 1e-9):>10.0f} rows/s  "
          f"{n_rows / max(cpu, 1e-9):>10.0f} rows/cpu-s", file=sys.stderr)  # fmt: skip
    return result


def run_stages(path: Path, recipe, tokenizer, exact: set[int], near: set[int]) -> dict:
    data = recipe.data
    stages: dict = {}
    n_lines = path.read_bytes().count(b"\n")
    examples = _timed(stages, "read+validate", n_lines, lambda: read_input("train", path, path.name, "auto")).examples
    norm = _timed(stages, "normalise", len(examples), lambda: normalize_rows(examples, data.clean))
    _timed(stages, "token_lengths", len(examples), lambda: measure_tokens(examples, tokenizer))
    examples, _ = apply_length_policy(examples, data.max_length, data.over_length)
    kept, exact_removed = _timed(stages, "exact_dedup", len(examples), lambda: deduplicate(examples, True))
    kept2, near_removed, near_stats = _timed(stages, "minhash_dedup", len(kept), lambda: near_deduplicate(kept, data.clean, True, True, []))
    splits = _timed(stages, "split", len(kept2), lambda: split_train(kept2, data.val_fraction, data.test_fraction, data.seed))
    _timed(stages, "token_stats", len(kept2), lambda: {k: token_stats(v, data.max_length) for k, v in splits.items()})

    found_exact = {r.line - 1 for r in exact_removed}
    found_near = {r.line - 1 for r in near_removed}
    hits = len(found_near & near)
    return {
        "stages": stages,
        "stage_total_seconds": round(sum(s["seconds"] for s in stages.values()), 3),
        "normalised_rows": norm["rows_changed"],
        "mean_tokens_per_row": round(sum(e.n_tokens for e in examples) / len(examples), 1),
        "exact": {"planted": len(exact), "removed": len(found_exact), "recall": round(len(found_exact & exact) / len(exact), 4)},
        "near": {
            "planted": len(near),
            "removed": len(found_near),
            "recall": round(hits / len(near), 4),
            "precision": round(hits / len(found_near), 4) if found_near else None,
            "candidates_checked": near_stats["candidates_checked"],
            "bands": near_stats["bands"],
        },
        "minhash_docs_per_s": stages["minhash_dedup"]["rows_per_s"],
        "minhash_docs_per_cpu_s": stages["minhash_dedup"]["rows_per_cpu_s"],
    }


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def peak_memory_child(path: Path, output_dir: Path) -> None:
    """Run prepare_data once in this (fresh) process and print its memory figures as JSON."""
    tokenizer = load_tokenizer(resolve_model("smollm2-135m-instruct"))
    recipe = parse_recipe({"name": "bench", "output_dir": str(output_dir),
                           "data": {"train": str(path), "max_length": 2048, "on_invalid": "quarantine"}})  # fmt: skip
    before = _peak_rss_mb()
    start, cpu_start = time.perf_counter(), time.process_time()
    report = prepare_data(recipe, RunPaths(recipe.run_dir), tokenizer)
    print(json.dumps({"rss_before_prepare_mb": round(before, 1), "peak_rss_mb": round(_peak_rss_mb(), 1),
                      "seconds": round(time.perf_counter() - start, 1), "cpu_seconds": round(time.process_time() - cpu_start, 1),
                      "accounting_ok": report["accounting"]["ok"], "kept_rows": report["accounting"]["kept_rows"]}))  # fmt: skip


def measure_memory(sizes: list[int], seed: int, note: str) -> None:
    tokenizer = load_tokenizer(resolve_model("smollm2-135m-instruct"))
    for n_rows in sizes:
        rows, _, _ = synthetic_rows(n_rows, seed, tokenizer)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "train.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
            del rows
            load_before = os.getloadavg()
            child = [sys.executable, __file__, "--peak-memory-child", str(path), str(Path(tmp) / "runs")]
            out = subprocess.run(child, capture_output=True, text=True, check=True).stdout
            figures = json.loads(out.strip().splitlines()[-1])
            above = figures["peak_rss_mb"] - figures["rss_before_prepare_mb"]
            append_record(RESULTS, {
                "workload": "data_prepare peak memory (synthetic chat)",
                "rows": n_rows,
                "seed": seed,
                "file_mb": round(path.stat().st_size / 2**20, 1),
                **figures,
                "peak_above_start_mb": round(above, 1),
                "bytes_per_row_above_start": round(above * 2**20 / n_rows),
                "load_avg_before": [round(x, 2) for x in load_before],
                "load_avg_after": [round(x, 2) for x in os.getloadavg()],
                "note": note,
                "hardware": hardware(),
            })  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="synthetic rows to generate")
    parser.add_argument("--seed", type=int, default=0, help="generator seed")
    parser.add_argument("--no-e2e", action="store_true", help="skip the end-to-end prepare_data timing")
    parser.add_argument("--note", default="", help="free text stored with the result (e.g. machine load)")
    parser.add_argument("--memory", type=int, nargs="+", metavar="ROWS", help="measure peak memory of prepare_data at these sizes")
    parser.add_argument("--peak-memory-child", nargs=2, metavar=("JSONL", "OUT_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak_memory_child:
        peak_memory_child(*map(Path, args.peak_memory_child))
        return
    if args.memory:
        measure_memory(args.memory, args.seed, args.note)
        return

    tokenizer = load_tokenizer(resolve_model("smollm2-135m-instruct"))
    rows, exact, near = synthetic_rows(args.rows, args.seed, tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        recipe = parse_recipe({"name": "bench", "output_dir": str(Path(tmp) / "runs"),
                               "data": {"train": str(path), "max_length": 2048, "on_invalid": "quarantine"}})  # fmt: skip
        print(f"{args.rows} rows, {len(exact)} exact + {len(near)} near duplicates planted", file=sys.stderr)
        load_before = os.getloadavg()
        result = run_stages(path, recipe, tokenizer, exact, near)
        if not args.no_e2e:
            start = time.perf_counter()
            report = prepare_data(recipe, RunPaths(recipe.run_dir), tokenizer)
            result["prepare_data_seconds"] = round(time.perf_counter() - start, 3)
            result["prepare_data_accounting_ok"] = report["accounting"]["ok"]
            print(f"  prepare_data end to end: {result['prepare_data_seconds']:.2f} s", file=sys.stderr)
    record = {
        "workload": "data_prepare synthetic chat",
        "rows": args.rows,
        "seed": args.seed,
        "settings": recipe.data.clean.model_dump(include={"near_threshold", "minhash_permutations", "shingle_size", "normalize_unicode"}),
        **result,
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "note": args.note,
        "hardware": hardware(),
    }
    near_r = result["near"]
    print(f"near-dup recall {near_r['recall']}, precision {near_r['precision']}; MinHash {result['minhash_docs_per_s']} docs/s; "
          f"stages {result['stage_total_seconds']} s", file=sys.stderr)  # fmt: skip
    append_record(RESULTS, record)


if __name__ == "__main__":
    main()
