"""Evaluation: task metrics, base-vs-tuned comparison, forgetting suite, LLM judge, contamination, gates.

`evaluate(recipe, run) -> EvalResult` is the stage's entry point.
"""

from tunekit.eval.runner import EvalExample, EvalResult, evaluate

__all__ = ["EvalExample", "EvalResult", "evaluate"]
