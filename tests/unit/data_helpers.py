"""Small builders shared by the data-stage tests."""

from __future__ import annotations

import json
from pathlib import Path

from tunekit.config import parse_recipe
from tunekit.runs import RunPaths


def write_lines(path: Path, rows: list) -> Path:
    """Rows are dicts (dumped as JSON) or raw strings written verbatim, one per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def make_recipe(tmp_path: Path, **data) -> tuple:
    """A recipe over tmp_path files with no validation split; invalid lines are quarantined."""
    data.setdefault("train", "train.jsonl")
    data.setdefault("on_invalid", "quarantine")
    data.setdefault("val_fraction", 0.0)
    recipe = parse_recipe({"name": "t", "output_dir": str(tmp_path / "runs"), "data": data}, base_dir=tmp_path)
    return recipe, RunPaths(recipe.run_dir)
