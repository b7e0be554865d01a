"""Forgetting-suite figures for trained runs: base vs tuned share right, per category, and eval cost.

Runs `tunekit eval` (gates included; a failed gate is recorded, not raised) on each given recipe's
run directory, which must already hold a trained adapter, and appends one JSON object per run to
bench/results/eval_forgetting.jsonl. A figure, not a test: nothing is asserted.

    python bench/eval_forgetting.py RECIPE [RECIPE ...] [--label NAME ...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from results_file import append_record  # bench/ is on sys.path when a script here runs

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "eval_forgetting.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="+", type=Path)
    parser.add_argument("--note", default="", help="what the runs are (e.g. default recipe vs over-trained)")
    args = parser.parse_args()

    from tunekit.cli.main import _quiet_libraries

    _quiet_libraries()
    import json

    from tunekit.config import load_recipe
    from tunekit.eval import run_eval
    from tunekit.eval.gates import GateFailure
    from tunekit.runs import RunPaths
    from tunekit.train.manifest import hardware, package_versions

    for path in args.recipes:
        recipe = load_recipe(path)
        run = RunPaths(recipe.run_dir)
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            report, passed = run_eval(recipe, run), True
        except GateFailure:
            report, passed = json.loads(run.eval_report.read_text()), False
        timings = report["timing"]
        append_record(RESULTS, {
            "workload": "tunekit eval with forgetting suite, smollm2-135m-instruct, CPU",
            "note": args.note,
            "recipe": str(path),
            "train": recipe.train.model_dump(include={"learning_rate", "epochs", "max_steps", "lr_scheduler"}),
            "forgetting_items": report["forgetting"]["overall"]["n"] if report.get("forgetting") else 0,
            "forgetting": report.get("forgetting"),
            "task": report["model"],
            "gates_passed": passed,
            "verdict": report["verdict"],
            "eval_wall_s": round(time.perf_counter() - wall, 1),
            "eval_cpu_s": round(time.process_time() - cpu, 1),
            "task_generation_s": {k: v["seconds"] for k, v in timings.items()},
            "machine_note": "2 shared CPU cores, load average above 10 during the run",
            "hardware": hardware(),
            "packages": package_versions(),
            "date": time.strftime("%Y-%m-%d"),
        })


if __name__ == "__main__":
    main()
