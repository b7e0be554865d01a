"""Wall time and quality of the shipped example, end to end on this machine.

Runs prepare → train → eval → export of examples/ticket_triage on the embedded SmolLM2-135M
and appends one JSON object to bench/results/ticket_triage.jsonl: stage timings, training
throughput, base vs tuned scores, hardware. A figure, not a test: nothing is asserted.

    python bench/example_run.py [--set key=value ...] [--keep DIR]

The base model's answers are recomputed (eval.cache_base_answers=false), as on a fresh machine,
unless --reuse-base-answers is given (then the record says how many came from the cache).

--keep DIR leaves the run in DIR (bench/cost_report.py --run DIR prices it); otherwise it goes to a
temporary folder that is removed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from results_file import append_record  # bench/ is on sys.path when a script here runs

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "ticket_triage.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override key=value")
    parser.add_argument("--keep", type=Path, help="write the run under this output_dir and leave it there")
    parser.add_argument("--reuse-base-answers", action="store_true", help="let eval reuse cached base answers (a re-run)")
    args = parser.parse_args()

    from tunekit.cli.main import _quiet_libraries

    _quiet_libraries()
    from tunekit.config import load_recipe
    from tunekit.pipeline import run_pipeline
    from tunekit.runs import RunPaths
    from tunekit.train.manifest import hardware, package_versions

    with tempfile.TemporaryDirectory(prefix="tunekit-bench-") as tmp:
        output_dir = args.keep.resolve() if args.keep else tmp
        cold = [] if args.reuse_base_answers else ["eval.cache_base_answers=false"]
        recipe = load_recipe(ROOT / "examples" / "ticket_triage" / "recipe.yaml", [f"output_dir={output_dir}", *cold, *args.overrides])
        run = RunPaths(recipe.run_dir)
        started = time.perf_counter()
        results = run_pipeline(recipe, run, overwrite=True)
        wall = time.perf_counter() - started
        metrics = [json.loads(line) for line in run.metrics.read_text().splitlines()]
        speeds = [m["tokens_per_s"] for m in metrics if "tokens_per_s" in m][1:]  # the first step includes warm-up
        record = {
            "workload": "examples/ticket_triage: prepare+train+eval+export, smollm2-135m-instruct LoRA r16, CPU",
            "overrides": args.overrides,
            "wall_s": round(wall, 1),
            "stage_s": results.timings_s,
            "train_steps": results.train.steps,
            "train_tokens_per_s_mean": round(sum(speeds) / len(speeds), 1) if speeds else None,
            "eval": results.eval.report["model"],
            "eval_answers_from_cache": results.eval.report["settings"].get("answers_from_cache", {}),
            "eval_per_field": results.eval.report["per_field"],
            "parity_passed": results.export.parity["passed"] if results.export.parity else None,
            "train_peak_rss_mb": max((m["peak_rss_mb"] for m in metrics if "peak_rss_mb" in m), default=None),
            "hardware": hardware(),
            "packages": package_versions(),
            "date": time.strftime("%Y-%m-%d"),
        }
    append_record(RESULTS, record)


if __name__ == "__main__":
    main()
