"""Do the ship gates catch bad models? Train the ticket-triage example three ways and record the verdicts.

Scenarios (each a full `tunekit run --stages prepare --stages train --stages eval` of examples/ticket_triage/recipe.yaml
with `--set` overrides, in a fresh process, on the embedded SmolLM2-135M-Instruct):

- default      the shipped recipe as it is (general replay mixed in): should PASS, forgetting drop small.
- overtrained  a narrow slice of the task (the first 40 tickets), 20 epochs, lr 3e-3, no replay:
               the forgetting suite should show a large drop and the gate should FAIL.
- noreplay     the shipped recipe without train.mix: how much the replay buys.
- shuffled     the shipped recipe on training tickets whose answers are shuffled between rows, so
               the format is learnt but the labels are noise: the task gates should FAIL.

One JSON object per scenario is appended to bench/results/eval_gates.jsonl: exit code, gate
verdict, task metrics base vs tuned, forgetting per category, and the wall time of each stage.
A figure, not a test: nothing is asserted.

    python bench/eval_gates.py [--scenarios default,overtrained,shuffled] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

from results_file import append_record  # bench/ is on sys.path when a script here runs

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "ticket_triage"
RESULTS = ROOT / "bench" / "results" / "eval_gates.jsonl"


def shuffled_labels(source: Path, target: Path, seed: int = 0) -> None:
    """The same tickets with their assistant answers permuted between rows (format kept, labels noise)."""
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    answers = [row["messages"][-1]["content"] for row in rows]
    random.Random(seed).shuffle(answers)
    for row, answer in zip(rows, answers):
        row["messages"][-1]["content"] = answer
    target.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def narrow_slice(source: Path, target: Path, n: int) -> None:
    lines = [line for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    target.write_text("\n".join(lines[:n]) + "\n", encoding="utf-8")


def scenario_overrides(name: str, work: Path) -> list[str]:
    train = EXAMPLE / "data" / "train.jsonl"
    common = [f"output_dir={work / 'runs'}", f"name=gates-{name}", f"data.test={EXAMPLE / 'data' / 'test.jsonl'}"]
    if name == "default":
        return common
    if name == "overtrained":
        narrow_slice(train, work / "train_narrow.jsonl", 40)
        return [*common, f"data.train={work / 'train_narrow.jsonl'}", "train.epochs=20", "train.learning_rate=3.0e-3", "train.mix=null"]
    if name == "noreplay":
        return [*common, "train.mix=null"]
    if name == "shuffled":
        shuffled_labels(train, work / "train_shuffled.jsonl")
        return [*common, f"data.train={work / 'train_shuffled.jsonl'}"]
    raise SystemExit(f"unknown scenario {name}")


def eval_overrides() -> list[str]:
    """`--set` options giving a run the example recipe's current forgetting settings and gates."""
    from tunekit.config import load_recipe

    current = load_recipe(EXAMPLE / "recipe.yaml").eval
    return ["--set", f"eval.forgetting.max_items={current.forgetting.max_items}", "--set", f"eval.gates={json.dumps(list(current.gates))}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default="default,overtrained,shuffled")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / ".work" / "eval_gates")
    parser.add_argument("--set", dest="extra", action="append", default=[], help="extra recipe override for every scenario")
    parser.add_argument("--eval-only", action="store_true", help="re-run only eval on the scenarios' existing trained runs")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    from tunekit.train.manifest import hardware, package_versions

    for name in args.scenarios.split(","):
        overrides = [*scenario_overrides(name, args.work), *args.extra]
        run_dir = args.work / "runs" / f"gates-{name}"
        if args.eval_only:  # the run keeps its recipe; the example's current eval section is laid over it
            command = [sys.executable, "-m", "tunekit", "eval", str(run_dir), *eval_overrides()]
        else:
            command = [sys.executable, "-m", "tunekit", "run", str(EXAMPLE / "recipe.yaml"), "--overwrite"]
            command += ["--stages", "prepare", "--stages", "train", "--stages", "eval"]
            for item in overrides:
                command += ["--set", item]
        started = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        wall = round(time.perf_counter() - started, 1)
        report_path = run_dir / "eval" / "eval_report.json"
        if not report_path.is_file():
            print(done.stdout[-3000:], done.stderr[-3000:], sep="\n", file=sys.stderr)
            raise SystemExit(f"{name}: no eval report (exit {done.returncode})")
        report = json.loads(report_path.read_text())
        train_log = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
        summary = next((row for row in reversed(train_log) if "train_runtime" in row), {})
        record = {
            "workload": "ticket-triage example trained and evaluated on CPU, smollm2-135m-instruct",
            "scenario": name,
            "stages_run": "eval" if args.eval_only else "prepare,train,eval",
            "overrides": overrides,
            "exit_code": done.returncode,
            "verdict": report["verdict"],
            "task": report["model"],
            "forgetting": report.get("forgetting"),
            "train_runtime_s": summary.get("train_runtime"),
            "train_steps": summary.get("step"),
            "wall_s": wall,
            "hardware": hardware(),
            "packages": package_versions(),
            "date": time.strftime("%Y-%m-%d"),
        }
        append_record(RESULTS, record)
        drop = (report.get("forgetting") or {}).get("overall", {}).get("drop")
        print(f"{name}: exit {done.returncode}, passed {report['verdict']['passed']}, forgetting drop {drop}, {wall:.0f}s")


if __name__ == "__main__":
    main()
