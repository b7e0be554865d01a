"""Data preparation: read JSONL (chat or alpaca), validate with line numbers, dedup, split, report.

`prepare(recipe, run) -> DataResult` is the stage's entry point; `prepare_data(recipe, run, tokenizer)`
is the same work with a tokenizer the caller already has (tests, benchmarks).
"""

from tunekit.data.prepare import prepare_data
from tunekit.data.report import quarantine_summary
from tunekit.data.stage import DataResult, prepare

__all__ = ["DataResult", "prepare", "prepare_data", "quarantine_summary"]
