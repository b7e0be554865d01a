"""Evaluation: generate on the held-out test split and score base vs tuned."""

from tunekit.eval.metrics import exact_match, field_matches, json_valid, parse_json, score_example
from tunekit.eval.runner import run_eval

__all__ = ["exact_match", "field_matches", "json_valid", "parse_json", "run_eval", "score_example"]
