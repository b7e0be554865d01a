"""Data preparation: read JSONL (chat or alpaca), validate with line numbers, dedup, split, report."""

from tunekit.data.prepare import prepare_data
from tunekit.data.report import quarantine_summary

__all__ = ["prepare_data", "quarantine_summary"]
