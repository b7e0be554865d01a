"""`prepare(recipe, run) -> DataResult`: the data stage's entry point, as `tunekit data prepare` and
`tunekit run` call it.

It loads the base model's tokenizer (lengths are measured under its chat template), prepares the
splits into the run directory, prints the summary and applies the data gates (and `data.strict`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunekit.config import Recipe
from tunekit.console import console
from tunekit.data.gates import raise_on_failed_gates
from tunekit.data.prepare import check_inputs, prepare_data
from tunekit.data.report import print_summary
from tunekit.errors import DataError
from tunekit.models import load_tokenizer, resolve_model
from tunekit.runs import RunPaths


@dataclass
class DataResult:
    """What the data stage produced; `report` is data_report.json as written."""

    report_path: Path
    quarantine_path: Path
    rows: dict[str, int]  # rows per prepared split (train, val, test)
    removed: dict[str, int]  # quarantined rows per reason, duplicates and policy drops included
    gates_passed: bool
    report: dict

    @classmethod
    def from_report(cls, report: dict, run: RunPaths) -> DataResult:
        return cls(
            report_path=run.data_report,
            quarantine_path=run.quarantine,
            rows={name: split["rows"] for name, split in report["splits"].items()},
            removed=dict(report["quarantine"]["by_reason"]),
            gates_passed=all(gate["passed"] for gate in report.get("gates", [])),
            report=report,
        )


def prepare(recipe: Recipe, run: RunPaths) -> DataResult:
    """Prepare the recipe's data into `run`'s data dir; DataError on unusable input, a failed data gate, or
    (with `data.strict`) any removed row."""
    check_inputs(recipe)  # a data file that cannot be opened fails before the tokenizer loads (seconds, or a model conversion)
    with console.status("loading the tokenizer"):
        model_path = resolve_model(recipe.base_model, allow_pickle=recipe.allow_pickle)
        tokenizer = load_tokenizer(model_path, trust_remote_code=recipe.trust_remote_code, chat_template=recipe.chat_template)
    run.root.mkdir(parents=True, exist_ok=True)
    run.recipe.write_text(recipe.to_yaml(), encoding="utf-8")
    with console.status("preparing data"):
        report = prepare_data(recipe, run, tokenizer)
    print_summary(report, run)
    # After the summary, so the user sees the numbers behind a failed gate; stops `tunekit run` before training.
    raise_on_failed_gates(report, run.data_report)
    result = DataResult.from_report(report, run)
    if recipe.data.strict and result.removed:
        counts = ", ".join(f"{reason}: {n}" for reason, n in sorted(result.removed.items()))
        raise DataError(
            f"data.strict / --strict: {sum(result.removed.values())} row(s) were removed ({counts}); "
            f"every one is listed in {run.quarantine}",
            hint="fix or remove those rows in the input, or set data.strict: false (run without --strict)",
        )
    return result
