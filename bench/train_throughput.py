"""GPU training throughput: tunekit's own training path against plain transformers + PEFT.

For each workload (random-init model of a named shape, LoRA r=16 on every linear layer, fixed
2048-token rows) this runs, in the same invocation and on the same GPU, the plain baseline and
then the trainer tunekit builds, each for `--warmup` + `--steps` optimizer steps in a fresh
process (bench/throughput_worker.py). It prints a table and appends one JSON object per workload
to bench/results/train_throughput.jsonl: tokens/s, step time, peak allocated/reserved memory,
useful-FLOPs utilisation, the ratio to the baseline, the fast-path plan, hardware and settings.

`--check-loss` also trains both tunekit paths (fast on / off) for 20 steps on one fixed batch and
records whether their losses agree within bf16 tolerance.

    python bench/train_throughput.py                       # every workload
    python bench/train_throughput.py --workloads llama-1b-lora-bs8 --steps 3 --warmup 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results_file import append_record  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "train_throughput.jsonl"
WORKER = ROOT / "bench" / "throughput_worker.py"
LORA = {"r": 16, "alpha": 32, "dropout": 0.0}
SEQ_LEN = 2048

# name -> shape, adapter, micro-batch, optional tunekit fast-path overrides, target
WORKLOADS = {
    "llama-1b-lora-bs8": {"shape": "llama-3.2-1b", "adapter": "lora", "batch_size": 8, "target_ratio": 2.2},
    "llama-8b-lora-bs4": {"shape": "llama-3.1-8b", "adapter": "lora", "batch_size": 4, "target_ratio": 2.0},
    "llama-8b-qlora-bs4": {"shape": "llama-3.1-8b", "adapter": "qlora", "batch_size": 4},
    # Memory target: plan for a 7 GiB card, so the plan checkpoints as much as it must.
    "llama-8b-qlora-bs1-7gib": {
        "shape": "llama-3.1-8b", "adapter": "qlora", "batch_size": 1, "fast": {"memory_budget_gib": 7.0}, "target_peak_gib": 7.0,
    },
    "qwen2.5-1.5b-lora-bs8": {"shape": "qwen2.5-1.5b", "adapter": "lora", "batch_size": 8},
    # Plumbing check on CPU (--dry-run): a 2-layer SmolLM2 shape, a few short rows.
    "dry-run": {"shape": "smollm2-135m", "layers": 2, "adapter": "lora", "batch_size": 2, "seq_len": 64},
}  # fmt: skip


def run_worker(job: dict, timeout: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        job_file, out_file = Path(tmp) / "job.json", Path(tmp) / "out.json"
        job_file.write_text(json.dumps(job))
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        try:
            proc = subprocess.run(
                [sys.executable, str(WORKER), str(job_file), str(out_file)], env=env, timeout=timeout, capture_output=True, text=True
            )
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout} s"}
        if proc.returncode != 0 or not out_file.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
            print("\n".join(tail), file=sys.stderr)
            oom = any("OutOfMemory" in line or "out of memory" in line for line in tail)
            return {"error": ("CUDA out of memory: " if oom else "") + (tail[-1] if tail else f"exit {proc.returncode}")}
        return json.loads(out_file.read_text())


def weights_dir_for(shape: str, scratch: Path) -> Path:
    return scratch / f"random-{shape}"


def ensure_weights(spec: dict, args, scratch: Path) -> Path:
    """QLoRA loads (and quantizes) from disk: write one random-init checkpoint per shape."""
    target = weights_dir_for(spec["shape"], scratch)
    if not (target / "config.json").exists():
        result = run_worker({"path": "save", "shape": spec["shape"], "seed": args.seed, "weights_dir": str(target)}, args.timeout)
        if "error" in result:
            raise SystemExit(f"could not write random weights for {spec['shape']}: {result['error']}")
    return target


def job_for(name: str, spec: dict, path: str, args, scratch: Path) -> dict:
    job = {
        "workload": name,
        "path": path,
        "shape": spec["shape"],
        "adapter": spec["adapter"],
        "batch_size": spec["batch_size"],
        "seq_len": spec.get("seq_len", SEQ_LEN),
        "layers": spec.get("layers"),
        "warmup": args.warmup,
        "steps": args.steps,
        "seed": args.seed,
        "learning_rate": 1e-4,
        "lora": LORA,
        "fast": spec.get("fast", {}),
    }
    if spec["adapter"] == "qlora":
        job["weights_dir"] = str(ensure_weights(spec, args, scratch))
    return job


def hardware(result: dict) -> dict:
    from tunekit.train import manifest

    return {**manifest.hardware(), "gpu": result.get("gpu")}


def record_for(name: str, spec: dict, base: dict, fast: dict, args) -> dict:
    from tunekit.train import manifest

    record = {
        "workload": f"{spec['shape']} {spec['adapter']} bs{spec['batch_size']} seq{spec.get('seq_len', SEQ_LEN)}",
        "name": name,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": {
            "lora": {**LORA, "target_modules": "all-linear"},
            "seq_len": SEQ_LEN,
            "batch_size": spec["batch_size"],
            "warmup_steps": args.warmup,
            "timed_steps": args.steps,
            "data": "random token ids, every row full length, loss on every token",
            "fast_overrides": spec.get("fast", {}),
            "baseline": "transformers Trainer + PEFT, SDPA, checkpointing every layer, bf16 autocast, default AdamW",
        },
        "packages": manifest.package_versions() | {"liger-kernel": _version("liger-kernel"), "bitsandbytes": _version("bitsandbytes")},
    }
    for label, result in (("", fast), ("baseline_", base)):
        if "error" in result:
            record[f"{label}error"] = result["error"]
            continue
        for key in ("tokens_per_s", "step_time_s", "step_time_median_s", "peak_allocated_gib", "peak_reserved_gib", "mfu"):
            record[f"{label}{key}"] = result[key]
    if "error" not in fast:
        record["fast_path"] = fast["details"].get("fast_path")
        record["useful_flops_per_token"] = fast["useful_flops_per_token"]
        record["hardware"] = hardware(fast)
    if "error" not in fast and "error" not in base:
        record["ratio_vs_baseline"] = round(fast["tokens_per_s"] / base["tokens_per_s"], 3)
    if "target_ratio" in spec:
        record["target_ratio"] = spec["target_ratio"]
        record["target_met"] = record.get("ratio_vs_baseline", 0) >= spec["target_ratio"]
    if "target_peak_gib" in spec:
        record["target_peak_gib"] = spec["target_peak_gib"]
        record["target_met"] = "peak_allocated_gib" in record and record["peak_allocated_gib"] <= spec["target_peak_gib"]
    return record


def _version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def check_loss(args) -> dict:
    """20 steps on one fixed batch: the fast path's losses against the plain tunekit path's."""
    base = {
        "workload": "loss-check",
        "shape": args.loss_shape,
        "layers": 4,
        "adapter": "lora",
        "batch_size": 4,
        "seq_len": args.loss_seq_len,
        "warmup": 0,
        "steps": 20,
        "seed": args.seed,
        "learning_rate": 5e-4,
        "lora": LORA,
        "fixed_batch": True,
        "log_every_step": True,
    }
    plain = run_worker({**base, "path": "tunekit-plain"}, args.timeout)
    fast = run_worker({**base, "path": "tunekit"}, args.timeout)
    record = {
        "workload": f"loss check: {args.loss_shape} shape (4 layers) lora bs4 seq{args.loss_seq_len}, 20 steps on one fixed batch",
        "settings": {"lora": LORA, "learning_rate": base["learning_rate"], "compared": "tunekit fast path vs train.fast.enabled: false"},
    }
    if "error" in plain or "error" in fast:
        record["error"] = plain.get("error") or fast.get("error")
        return record
    diffs = [abs(a - b) / max(abs(b), 1e-6) for a, b in zip(fast["losses"], plain["losses"])]
    record.update(
        {
            "plain_losses": plain["losses"],
            "fast_losses": fast["losses"],
            "max_relative_difference": round(max(diffs), 5),
            "tolerance": args.loss_tolerance,
            "passed": len(diffs) == 20 and max(diffs) <= args.loss_tolerance,
            "fast_path": fast["details"].get("fast_path"),
            "hardware": hardware(fast),
        }
    )
    return record


def print_table(records: list[dict]) -> None:
    columns = [
        ("workload", "workload", 40), ("tok/s", "tokens_per_s", 9), ("base tok/s", "baseline_tokens_per_s", 10),
        ("ratio", "ratio_vs_baseline", 6), ("peak GiB", "peak_allocated_gib", 8), ("base GiB", "baseline_peak_allocated_gib", 8),
        ("MFU", "mfu", 6), ("base MFU", "baseline_mfu", 8),
    ]  # fmt: skip
    print("\n" + " ".join(f"{title:>{width}}" for title, _, width in columns) + "  target")
    for record in records:
        cells = [f"{'-' if record.get(key) is None else record[key]!s:>{width}}" for _, key, width in columns]
        target = ("met" if record["target_met"] else "NOT met") if "target_met" in record else ""
        if "passed" in record:
            target = f"loss check {'passed' if record['passed'] else 'FAILED'} (max rel diff {record['max_relative_difference']})"
        print(" ".join(cells) + "  " + target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default=",".join(n for n in WORKLOADS if n != "dry-run"), help="comma-separated names: " + ", ".join(WORKLOADS))
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=int, default=600, help="seconds per measurement process")
    parser.add_argument("--check-loss", action="store_true")
    parser.add_argument("--loss-tolerance", type=float, default=0.02, help="relative, per step (bf16)")
    parser.add_argument("--loss-shape", default="llama-3.2-1b", help="named shape of the loss check (4 layers of it)")
    parser.add_argument("--loss-seq-len", type=int, default=512)
    parser.add_argument("--skip-baseline", action="store_true", help="measure tunekit's path only")
    parser.add_argument(
        "--scratch", type=Path, default=Path(tempfile.gettempdir()), help="where QLoRA's random checkpoint is written (16 GB for 8B)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    names = [n.strip() for n in args.workloads.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise SystemExit(f"unknown workload(s): {', '.join(unknown)}; known: {', '.join(WORKLOADS)}")
    scratch = args.scratch / "tunekit-bench"
    records = []
    try:
        for name in names:
            spec = WORKLOADS[name]
            base = {"error": "skipped"} if args.skip_baseline else run_worker(job_for(name, spec, "baseline", args, scratch), args.timeout)
            fast = run_worker(job_for(name, spec, "tunekit", args, scratch), args.timeout)
            record = record_for(name, spec, base, fast, args)
            append_record(args.out, record)
            records.append(record)
        if args.check_loss:
            record = check_loss(args)
            append_record(args.out, record)
            records.append(record)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print_table(records)


if __name__ == "__main__":
    main()
