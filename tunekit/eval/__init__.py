"""Evaluation: task metrics, base-vs-tuned comparison, forgetting suite, LLM judge, contamination, gates."""

from tunekit.eval.metrics import exact_match, field_matches, json_valid, parse_json, score_example


def run_eval(recipe, run):
    """Score the tuned model (and the base) on the test split; see tunekit.eval.runner.run_eval."""
    # Imported on use: tunekit.config imports tunekit.eval.gates while validating a recipe.
    from tunekit.eval.runner import run_eval as _run_eval

    return _run_eval(recipe, run)


__all__ = ["exact_match", "field_matches", "json_valid", "parse_json", "run_eval", "score_example"]
