"""Export benchmark: a trained run exported to merged + GGUF (F16, Q8_0, Q4_K_M) + Ollama.

Runs `tunekit.export.export` on an existing run directory (train it first, e.g. with the example recipe) and
records the export wall time per step, the F16 GGUF parity against the merged HF model on the test
set (share of identical greedy answers), the perplexity increase of each quantized file over F16,
and the file sizes. Appends one JSON object to bench/results/export_gguf.jsonl.

    TUNEKIT_HOME=/tmp/tkhome python bench/export_gguf.py /path/to/runs/ticket-triage --parity-prompts 100
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from results_file import append_record  # bench/ is on sys.path when a script here runs
from tunekit.config import load_recipe
from tunekit.export import export
from tunekit.runs import RunPaths
from tunekit.train.manifest import hardware

RESULTS = Path(__file__).parent / "results" / "export_gguf.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a trained run directory (its recipe.yaml is used)")
    parser.add_argument("--types", default="F16,Q8_0,Q4_K_M", help="GGUF types")
    parser.add_argument("--parity-prompts", type=int, default=100, help="test prompts in the GGUF parity check")
    parser.add_argument("--note", default="", help="free text stored with the record (e.g. machine load)")
    args = parser.parse_args()

    overrides = [
        f"output_dir={args.run_dir.resolve().parent}",
        "export.formats=[merged, gguf, ollama]",
        f"export.gguf.types=[{args.types}]",
        f"export.gguf.parity_prompts={args.parity_prompts}",
    ]
    recipe = load_recipe(args.run_dir, overrides)
    run = RunPaths(recipe.run_dir)
    t0, cpu0 = time.perf_counter(), time.process_time()
    report = export(recipe, run).to_json()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    gguf = report["gguf"]
    parity, quant = gguf["parity"], gguf["quant"]
    record = {
        "workload": f"export {recipe.run_name} ({recipe.base_model}, {report['source']})",
        "types": list(gguf["files"]),
        "export_wall_s": round(wall, 1),
        "export_cpu_s_this_process": round(cpu, 1),
        "timings_s": report["timings_s"],
        "gguf_timings_s": gguf["timings_s"],
        "gguf_parity": {
            "prompts": parity["n"],
            "identical": parity["identical"],
            "identical_share": parity["identical_share"],
            "first_divergence_positions": parity["first_divergence_positions"],
            "max_new_tokens": parity["max_new_tokens"],
            "template_identical": parity["template_identical"],
            "stop_tokens_ok": parity["stop_tokens"]["ok"],
        },
        "merged_parity_identical": f"{report['parity']['identical']}/{report['parity']['n']}" if report["parity"] else None,
        "perplexity_text": quant["text_source"],
        "tokens_scored": quant["tokens_scored"],
        "f16_perplexity": quant["reference"]["perplexity"],
        "f16_bytes": quant["reference"]["bytes"],
        "quantized": [
            {k: row[k] for k in ("type", "perplexity", "increase_pct", "verdict", "blocked", "bytes")} for row in quant["quantized"]
        ],
        "hardware": hardware(),
        "note": args.note,
    }
    append_record(RESULTS, record)


if __name__ == "__main__":
    main()
