"""Eval generation on the embedded SmolLM2, with and without the shared-prefix KV cache, same run.

Answers the example's test prompts (budget 20, batch 20, as its recipe) and a slice of the shipped
forgetting suite (its per-item budgets, batch 32) greedily, once computing every prompt in full and
once running the tokens all prompts share (system prompt, template header) a single time; reports
seconds, tokens/s, the speed-up and whether every answer is identical. Writes
bench/results/eval_generation.json.

    .venv/bin/python bench/eval_generation.py [--suite-items 150]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _timed(generate, model, tokenizer, prompts, decoding) -> tuple[float, list[str], int]:
    started = time.perf_counter()
    result = generate(model, tokenizer, prompts, decoding, label="bench")
    return time.perf_counter() - started, result.outputs, result.new_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite-items", type=int, default=150)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "eval_generation.json")
    args = parser.parse_args()

    import torch

    import tunekit.eval.generation as generation
    from tunekit.eval.forgetting import select
    from tunekit.models import load_model, load_tokenizer, resolve_model

    path = resolve_model("smollm2-135m-instruct")
    tokenizer, model = load_tokenizer(path), load_model(path).eval()
    test = [json.loads(line) for line in (ROOT / "examples" / "ticket_triage" / "data" / "test.jsonl").read_text().splitlines()]
    suite = [json.loads(line) for line in (ROOT / "tunekit" / "eval" / "suites" / "general.jsonl").read_text().splitlines()]
    items = select(suite, args.suite_items)
    workloads = {
        "ticket_triage test prompts": ([r["messages"][:-1] for r in test], [20] * len(test), 20),
        f"forgetting suite ({len(items)} items)": ([i["messages"] for i in items], [i.get("max_new_tokens", 32) for i in items], 32),
    }
    rows = []
    for name, (prompts, budgets, batch) in workloads.items():
        measured = {}
        for label, min_prefix in (("full prompts", 10**9), ("shared prefix cached", generation.MIN_SHARED_PREFIX)):
            generation.MIN_SHARED_PREFIX = min_prefix
            seconds, outputs, tokens = 0.0, [], 0
            for budget in sorted(set(budgets)):
                group = [p for p, b in zip(prompts, budgets) if b == budget]
                s, o, t = _timed(generation.generate, model, tokenizer, group, generation.Decoding(budget, batch))
                seconds, outputs, tokens = seconds + s, outputs + o, tokens + t
            measured[label] = (seconds, outputs, tokens)
        generation.MIN_SHARED_PREFIX = 8
        (base_s, base_out, tokens), (new_s, new_out, _) = measured["full prompts"], measured["shared prefix cached"]
        rows.append({
            "workload": name, "prompts": len(prompts), "generated_tokens": tokens,
            "seconds": round(new_s, 2), "baseline_seconds": round(base_s, 2), "ratio_vs_baseline": round(base_s / new_s, 3),
            "identical_answers": sum(a == b for a, b in zip(base_out, new_out)), "baseline": "every prompt computed in full",
        })
    summary = {"model": "smollm2-135m-instruct (embedded)", "decoding": "greedy", "torch_threads": torch.get_num_threads(),
               "hardware": {"platform": platform.platform(), "cpu_count": os.cpu_count()}, "measurements": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
