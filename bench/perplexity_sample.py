"""How many scored tokens the export's quantization gate needs: perplexity increase of each quantized
GGUF over F16 on the first 2048, 4096 and 8192 tokens of the same text, and the time each takes.

The gate compares files on the same tokens, so what matters is how far the increase moves as the
sample shrinks, against the gates (e.g. Q8_0 2 %, Q4_K_M 30 % in the example's recipe).

    .venv/bin/python bench/perplexity_sample.py RUN_DIR [--tokens 2048,4096,8192]

RUN_DIR is an exported run (its export/*.gguf files and the recipe's perplexity text). Appends one
JSON object to bench/results/perplexity_sample.jsonl. A figure, not a test.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import append_record  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "perplexity_sample.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--tokens", default="2048,4096,8192")
    args = parser.parse_args()

    from tunekit.config import load_recipe
    from tunekit.export.llamacpp import perplexity
    from tunekit.export.quant_gate import domain_text
    from tunekit.models import load_tokenizer
    from tunekit.runs import RunPaths

    run = RunPaths(args.run_dir)
    recipe = load_recipe(run.recipe)
    files = {p.stem.rsplit("-", 1)[-1]: p for p in sorted(run.export_dir.glob("*.gguf"))}
    reference = files.pop("F16")
    text, source = domain_text(run, recipe, load_tokenizer(str(run.merged_dir)))
    rows = []
    for limit in (int(t) for t in args.tokens.split(",")):
        started = time.perf_counter()
        base = perplexity(reference, text, context=recipe.export.gguf.perplexity_context, max_tokens=limit)
        tokens = base.pop("token_ids")
        row = {"max_tokens": limit, "tokens_scored": base["tokens_scored"], "f16_perplexity": base["perplexity"], "increase_pct": {}}
        for name, path in files.items():
            scored = perplexity(path, text, context=recipe.export.gguf.perplexity_context, token_ids=tokens)
            row["increase_pct"][name] = round(100.0 * (scored["perplexity"] / base["perplexity"] - 1.0), 3)
        row["seconds"] = round(time.perf_counter() - started, 1)
        rows.append(row)
        print(row)
    append_record(RESULTS, {
        "workload": f"quantization gate perplexity on {source}, {len(files) + 1} GGUF files", "run": str(args.run_dir),
        "gates_pct": recipe.export.gguf.max_ppl_increase, "rows": rows, "date": time.strftime("%Y-%m-%d %H:%M"),
    })  # fmt: skip


if __name__ == "__main__":
    main()
