"""`data.strict`: the data stage fails when any row is removed; `tunekit data prepare --strict` only sets the key."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from tests.unit.data_helpers import write_lines
from tunekit.config import load_recipe
from tunekit.data import prepare
from tunekit.errors import DataError
from tunekit.runs import RunPaths, read_jsonl

ROW = {"messages": [{"role": "user", "content": "a b c d"}, {"role": "assistant", "content": "e"}]}
OTHER = {"messages": [{"role": "user", "content": "x y z w"}, {"role": "assistant", "content": "v"}]}


@pytest.fixture
def recipe_file(tmp_path, tiny_model_dir):
    write_lines(tmp_path / "train.jsonl", [ROW, OTHER, ROW])
    path = tmp_path / "recipe.yaml"
    path.write_text(f"base_model: {tiny_model_dir}\ndata:\n  train: train.jsonl\n  val_fraction: 0.0\n", encoding="utf-8")
    return path


def test_the_stage_reads_data_strict_from_the_recipe(recipe_file):
    recipe = load_recipe(recipe_file)
    run = RunPaths(recipe.run_dir)
    assert prepare(recipe, run).removed == {"duplicate": 1}
    strict = load_recipe(recipe_file, ["data.strict=true"])
    with pytest.raises(DataError) as err:
        prepare(strict, run)
    assert err.value.message.startswith("data.strict / --strict: 1 row(s) were removed (duplicate: 1); every one is listed in ")
    # The splits and the quarantine are written before the stage fails, so the user can see what went.
    assert [row["reason"] for row in read_jsonl(run.quarantine)] == ["duplicate"]
    assert len(read_jsonl(run.split("train"))) == 2


def test_cli_flag_sets_the_key_and_a_recipe_key_works_without_it(recipe_file):
    from tunekit.cli import data as data_cli

    root = typer.Typer()
    root.add_typer(data_cli.app, name="data")
    runner = CliRunner()
    assert runner.invoke(root, ["data", "prepare", str(recipe_file)]).exit_code == 0
    result = runner.invoke(root, ["data", "prepare", str(recipe_file), "--strict"])
    assert result.exit_code == 1 and isinstance(result.exception, DataError)
    assert "1 row(s) were removed (duplicate: 1)" in result.exception.message
    # The resolved recipe of the run records the key the flag set.
    assert load_recipe(recipe_file.parent / "runs" / "recipe").data.strict is True
    result = runner.invoke(root, ["data", "prepare", str(recipe_file), "--set", "data.strict=true"])
    assert result.exit_code == 1 and "1 row(s) were removed" in result.exception.message
