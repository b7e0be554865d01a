"""Recipe validation: every problem reported at once, with the user's key paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunekit.config import DEFAULT_BASE_MODEL, load_recipe, parse_recipe
from tunekit.errors import RecipeError

EXAMPLES = sorted(Path(__file__).resolve().parents[2].glob("examples/*/recipe.yaml"))


def test_defaults_match_the_documented_seeds():
    recipe = parse_recipe({"data": {"train": "t.jsonl"}})
    lora, train = recipe.train.lora, recipe.train
    assert recipe.base_model == DEFAULT_BASE_MODEL
    assert (lora.r, lora.alpha, lora.dropout, lora.target_modules) == (16, 32, 0.05, "all-linear")
    assert (train.learning_rate, train.lr_scheduler, train.warmup_ratio) == (2e-4, "cosine", 0.03)
    assert recipe.trust_remote_code is False and recipe.allow_pickle is False


def test_all_errors_reported_together_with_key_paths_and_hints():
    data = {
        "data": {"trian": "x.jsonl", "val_fraction": 1.5},
        "train": {"lerning_rate": 1e-4, "method": "ppo", "lora": {"r": 0}},
        "exports": {},
    }
    with pytest.raises(RecipeError) as info:
        parse_recipe(data)
    problems = info.value.problems
    assert "data.trian: unknown key (did you mean 'data.train'?)" in problems
    assert "train.lerning_rate: unknown key (did you mean 'train.learning_rate'?)" in problems
    assert "exports: unknown key (did you mean 'export'?)" in problems
    assert "data.train: required key is missing" in problems
    assert any(p.startswith("data.val_fraction:") for p in problems)
    assert any(p.startswith("train.method:") and "'ppo'" in p for p in problems)
    assert any(p.startswith("train.lora.r:") and "greater than 0" in p for p in problems)
    assert len(problems) == 7


def test_relative_paths_are_anchored_at_the_recipe_file(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.jsonl").write_text("{}\n")
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text("data:\n  train: d/train.jsonl\n")
    recipe = load_recipe(recipe_file)
    assert recipe.data.train == tmp_path / "d" / "train.jsonl"
    assert recipe.run_dir == tmp_path / "runs" / "recipe"


def test_missing_data_file_and_bad_yaml_are_recipe_errors(tmp_path):
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text("data:\n  train: nope.jsonl\n")
    with pytest.raises(RecipeError, match="data.train: file not found"):
        load_recipe(recipe_file)
    recipe_file.write_text("data:\n  train: [unclosed\n")
    with pytest.raises(RecipeError, match="line 3, column 1: invalid YAML"):
        load_recipe(recipe_file)


def test_overrides_are_validated_like_the_file(tmp_path):
    (tmp_path / "t.jsonl").write_text("{}\n")
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text("data:\n  train: t.jsonl\n")
    recipe = load_recipe(recipe_file, ["train.epochs=1", "train.lora.r=8"])
    assert (recipe.train.epochs, recipe.train.lora.r) == (1, 8)
    with pytest.raises(RecipeError, match="train.lora.rank: unknown key"):
        load_recipe(recipe_file, ["train.lora.rank=8"])


def test_override_values_are_yaml_and_a_comma_string_is_not_a_list(tmp_path):
    (tmp_path / "t.jsonl").write_text("{}\n")
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text("data:\n  train: t.jsonl\n")
    recipe = load_recipe(recipe_file, ["train.lora.target_modules=[q_proj,v_proj]", "train.gradient_checkpointing=false",
                                       "train.learning_rate=1e-4", "eval.max_examples=null"])
    assert recipe.train.lora.target_modules == ["q_proj", "v_proj"]
    assert (recipe.train.gradient_checkpointing, recipe.train.learning_rate, recipe.eval.max_examples) == (False, 1e-4, None)
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe_file, ["train.lora.target_modules=q_proj,v_proj"])
    assert info.value.problems == [
        "train.lora.target_modules: 'q_proj,v_proj' is one name; a list is written in YAML: [q_proj, v_proj] "
        "(--set train.lora.target_modules=[q_proj,v_proj]) (got 'q_proj,v_proj')"
    ]
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe_file, ["export.formats=merged,gguf"])
    assert info.value.problems == ["export.formats: Input should be a valid list (got 'merged,gguf'; a list is written in YAML: [merged, gguf])"]
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe_file, ["train.lora.target_modules=[q_proj"])
    assert len(info.value.problems) == 1 and info.value.problems[0].startswith("train.lora.target_modules: '[q_proj' is not a YAML value")


def test_resolved_recipe_round_trips(tmp_path):
    (tmp_path / "t.jsonl").write_text("{}\n")
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text("data:\n  train: t.jsonl\ntrain:\n  epochs: 2\n")
    recipe = load_recipe(recipe_file)
    resolved = tmp_path / "run" / "recipe.yaml"
    resolved.parent.mkdir()
    resolved.write_text(recipe.to_yaml())
    again = load_recipe(resolved.parent)
    assert again.model_dump(exclude={"name"}) == recipe.model_dump(exclude={"name"})
    assert again.run_name == recipe.run_name == "r"
    assert again.run_dir == recipe.run_dir


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.parent.name for p in EXAMPLES])
def test_every_example_recipe_validates(path):
    recipe = load_recipe(path)
    assert recipe.data.train.exists()
