"""The base model's answers are kept between evals (tunekit.eval.answer_cache) and reused only while
the model files, prompts, decoding and machine are the same."""

from __future__ import annotations

import os

from tunekit.config import load_recipe
from tunekit.eval import evaluate
from tunekit.models.loading import tunekit_home
from tunekit.runs import RunPaths, read_jsonl


def _eval(run_root, *overrides):
    recipe = load_recipe(run_root, list(overrides))
    result = evaluate(recipe, RunPaths(recipe.run_dir))
    return result.report, read_jsonl(result.predictions_path)


def _cache_files():
    root = tunekit_home() / "answers"
    return sorted(root.rglob("*.json")) if root.is_dir() else []


def test_base_answers_are_reused_while_nothing_that_decides_them_changed(run_dir, tiny_model_dir, capsys):
    first, first_rows = _eval(run_dir)
    assert first["timing"]["base"]["cached"] is False and first["settings"]["answers_from_cache"] == {}
    assert len(_cache_files()) == 1  # one call: the test prompts (no forgetting suite here)
    capsys.readouterr()

    again, again_rows = _eval(run_dir)
    assert again["timing"]["base"]["cached"] is True and again["timing"]["tuned"]["cached"] is False
    assert again["settings"]["answers_from_cache"] == {"base": 5}
    assert "base answers reused from the answer cache: 5 of 5 prompts" in "".join(capsys.readouterr())
    assert [r["base_output"] for r in again_rows] == [r["base_output"] for r in first_rows]
    assert [r["base_tokens"] for r in again_rows] == [r["base_tokens"] for r in first_rows]
    assert again["model"]["base"] == first["model"]["base"]  # the same scores and timings as the run that made them

    # Another token budget is another key: computed, and stored next to the first.
    longer, _ = _eval(run_dir, "eval.max_new_tokens=7")
    assert longer["timing"]["base"]["cached"] is False and len(_cache_files()) == 2

    # A touched model file is another model.
    config = tiny_model_dir / "config.json"
    stat = config.stat()
    os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    try:
        touched, _ = _eval(run_dir)
        assert touched["timing"]["base"]["cached"] is False and len(_cache_files()) == 3
    finally:
        os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    # Switched off: neither read nor written.
    off, _ = _eval(run_dir, "eval.cache_base_answers=false", "eval.max_new_tokens=5")
    assert off["timing"]["base"]["cached"] is False and len(_cache_files()) == 3


def test_an_unreadable_cache_file_is_recomputed(run_dir):
    first, rows = _eval(run_dir)
    (cached,) = _cache_files()
    cached.write_text("{not json", encoding="utf-8")
    again, again_rows = _eval(run_dir)
    assert again["timing"]["base"]["cached"] is False
    assert [r["base_output"] for r in again_rows] == [r["base_output"] for r in rows]
    assert _eval(run_dir)[0]["timing"]["base"]["cached"] is True  # rewritten whole
