"""The shipped example's cost report, built from tunekit's own records, each figure traced to its file.

Reads a finished run of examples/ticket_triage (`./scripts/demo.sh` writes it, or pass --run) and a
serving benchmark (bench/results/serve_throughput.jsonl, from bench/serve_throughput.py). Serves the
run's tuned model with the request log on, replays the run's test prompts through the official
`openai` client (4 clients, greedy, the recipe's own answer budget), then prices it all with
`tunekit.cost`: training hours, hardware, rows and tokens from the run's manifest and metrics;
sustained requests/s of one replica from the benchmark; prompt and output tokens from the request
log the replay wrote; the daily volume and the prompted side's overhead as stated assumptions
(flags, recorded as such). Writes the report, its figures with their sources, and the cost-curve
PNG to bench/results/ (cost_ticket_triage.json / .png). A figure, not a test: nothing is asserted.

    .venv/bin/python bench/cost_report.py [--run DIR] [--benchmark FILE] [--requests-per-day 1000] [--overhead-tokens 600]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
RESULTS = ROOT / "bench" / "results"


def replay(run_dir: Path, log_path: Path, max_tokens: int) -> dict:
    """Serve the run with a request log and send it the run's test prompts; returns what was sent."""
    import openai

    from serve_throughput import ADMIN_KEY, serving
    from tunekit.runs import RunPaths
    from tunekit.serve import Engine
    from tunekit.serve.requestlog import RequestLog

    run = RunPaths(run_dir)
    rows = [json.loads(line) for line in run.split("test").read_text(encoding="utf-8").splitlines() if line.strip()]
    prompts = [[m for m in row["messages"] if m["role"] != "assistant"] for row in rows]
    engine = Engine.from_path(run_dir)
    log = RequestLog(log_path)
    try:
        with serving(engine, request_log=log) as url:
            client = openai.OpenAI(base_url=url, api_key=ADMIN_KEY, max_retries=0, timeout=600)

            def ask(messages):
                return client.chat.completions.create(model=engine.name, messages=messages, temperature=0, max_tokens=max_tokens)

            started = time.perf_counter()
            with ThreadPoolExecutor(4) as pool:
                answers = list(pool.map(ask, prompts))
            wall = time.perf_counter() - started
    finally:
        log.close()
        engine.close()
    return {"model": engine.name, "prompts": len(prompts), "answered": len(answers), "wall_s": round(wall, 1),
            "test_split": str(run.split("test"))}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=ROOT / "examples" / "ticket_triage" / "runs" / "ticket-triage")
    parser.add_argument("--benchmark", type=Path, default=RESULTS / "serve_throughput.jsonl")
    parser.add_argument("--requests-per-day", type=float, default=1000.0, help="assumed daily volume")
    parser.add_argument("--overhead-tokens", type=float, default=600.0,
                        help="assumed prompt tokens a prompted model needs that the tuned one does not (instructions, few-shot examples)")
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()

    from tunekit.cli.main import _quiet_libraries
    from tunekit.cost import cost_report, load_inputs, load_prices, plot_cost_curves
    from tunekit.errors import TunekitError

    _quiet_libraries()
    if not (args.run / "manifest.json").is_file():
        sys.exit(f"{args.run}: no finished run (manifest.json missing); run ./scripts/demo.sh first, or pass --run DIR")
    log_path = RESULTS / "cost_ticket_triage_requests.db"  # kept: the report's token figures name it
    log_path.unlink(missing_ok=True)
    sent = replay(args.run, log_path, args.max_tokens)
    flags = {
        "traffic.requests_per_day": (args.requests_per_day, "--requests-per-day (assumed volume)"),
        "traffic.overhead_tokens": (args.overhead_tokens, "--overhead-tokens (assumed prompt overhead of the prompted model)"),
    }
    try:
        inputs = load_inputs(run=args.run, benchmark=args.benchmark, request_log=log_path, flags=flags)
        report = cost_report(inputs, load_prices())
    except TunekitError as exc:
        sys.exit(f"error: {exc.message}")
    plot_cost_curves(report, RESULTS / "cost_ticket_triage.png")
    record = {
        "workload": "cost of examples/ticket_triage: the run's own training, a serving benchmark, a request log of its test prompts",
        "replay": sent, **report.to_dict(), "date": time.strftime("%Y-%m-%d %H:%M"),
    }  # fmt: skip
    out = RESULTS / "cost_ticket_triage.json"
    out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in record.items() if k != "figures"}, indent=1))
    for figure in report.figures:
        print(f"  {figure.key:32} {figure.value!s:>14} {figure.unit:14} {figure.source}")


if __name__ == "__main__":
    main()
