"""Recipe paths: every path field is marked, every marked path is anchored at the recipe's folder
whatever the working directory, and gates on a recipe's own suite categories validate from anywhere."""

from __future__ import annotations

import json
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from tunekit.config import HubDataset, Recipe, RecipeRelative, load_recipe, parse_recipe, path_marker
from tunekit.errors import RecipeError


def _mentions_path(annotation) -> bool:
    if annotation in (Path, HubDataset):
        return True
    return any(_mentions_path(arg) for arg in typing.get_args(annotation))


def _sections(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [found for arg in typing.get_args(annotation) for found in _sections(arg)]


def _model_fields(model: type[BaseModel], prefix: str = ""):
    """(key path, field) of every field of `model` and its nested sections (list items without an index)."""
    for name, field in model.model_fields.items():
        key = f"{prefix}{field.alias or name}"
        yield key, field
        for section in _sections(field.annotation):
            yield from _model_fields(section, key + ".")


def _marked_values(section: BaseModel, prefix: str = ""):
    """(key path without list indices, value) of every marked field set in a loaded recipe."""
    for name, field in type(section).model_fields.items():
        key, value = f"{prefix}{field.alias or name}", getattr(section, name)
        if path_marker(field) is not None:
            for item in value if isinstance(value, list) else [value]:
                if item is not None:
                    yield key, item
            continue
        for child in value if isinstance(value, list) else [value]:
            if isinstance(child, BaseModel):
                yield from _marked_values(child, key + ".")


MARKED = {key for key, field in _model_fields(Recipe) if path_marker(field) is not None}


def test_every_path_typed_field_carries_the_marker():
    path_fields = {key for key, field in _model_fields(Recipe) if _mentions_path(field.annotation)}
    unmarked = sorted(key for key, field in _model_fields(Recipe) if key in path_fields and path_marker(field) is None)
    assert unmarked == [], f"path fields without RecipeRelative (they would not be anchored at the recipe's folder): {unmarked}"
    # The walk reaches nested and optional sections and lists of sections, not only the top level.
    assert {"output_dir", "data.train", "data.external_eval", "data.analysis.rules.json_schema", "train.mix.file",
            "train.dpo.init_from", "eval.json_schema", "export.gguf.perplexity_text"} <= path_fields
    # Marked fields that are no Path: suite entries and the chat template are built-in names or files.
    assert MARKED == path_fields | {"eval.forgetting.suites", "chat_template"}
    assert isinstance(path_marker(Recipe.model_fields["output_dir"]), RecipeRelative)


def _write(path: Path, text: str = "{}\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


SUITE_ITEM = {"category": "legal", "messages": [{"role": "user", "content": "Is this advice?"}], "check": {"type": "refusal"}}


@pytest.fixture
def recipe_dir(tmp_path) -> Path:
    folder = tmp_path / "project"
    for name in ("d/train.jsonl", "d/val.jsonl", "d/test.jsonl", "d/ext.jsonl", "mix.jsonl", "ppl.txt", "s/reply.json", "s/eval.json"):
        _write(folder / name)
    _write(folder / "suites" / "mine.jsonl", json.dumps(SUITE_ITEM) + "\n")
    _write(folder / "t" / "chat.jinja", "{% for m in messages %}{{ m['content'] }}{% endfor %}")
    return folder


COMMON = {
    "output_dir": "out",
    "chat_template": "t/chat.jinja",
    "data": {"train": "d/train.jsonl", "eval": "d/val.jsonl", "test": "d/test.jsonl", "external_eval": ["d/ext.jsonl"],
             "analysis": {"rules": [{"name": "shape", "json_schema": "s/reply.json"}]}},
    "eval": {"metrics": ["json_schema"], "json_schema": "s/eval.json",
             "forgetting": {"enabled": True, "suites": ["general", "suites/mine.jsonl"]}},
    "export": {"gguf": {"perplexity_text": "ppl.txt"}},
    "serve": {"models": [{"name": "m", "path": "runs/m"}], "adapter_roots": ["adapters"], "keys_file": "keys.yaml",
              "request_log": "log.sqlite"},
}
EXPECTED = {
    "output_dir": "out", "data.train": "d/train.jsonl", "data.eval": "d/val.jsonl", "data.test": "d/test.jsonl",
    "data.external_eval": "d/ext.jsonl", "data.analysis.rules.json_schema": "s/reply.json", "eval.json_schema": "s/eval.json",
    "export.gguf.perplexity_text": "ppl.txt", "serve.models.path": "runs/m", "serve.adapter_roots": "adapters",
    "serve.keys_file": "keys.yaml", "serve.request_log": "log.sqlite", "train.mix.file": "mix.jsonl", "train.dpo.init_from": "runs/sft",
}


def test_a_recipe_loaded_from_another_cwd_anchors_every_marked_path(recipe_dir, tmp_path, monkeypatch):
    import yaml

    sft = _write(recipe_dir / "sft.yaml", yaml.safe_dump({**COMMON, "train": {"mix": {"file": "mix.jsonl"}}}))
    dpo = _write(recipe_dir / "dpo.yaml", yaml.safe_dump({**COMMON, "train": {"method": "dpo", "dpo": {"init_from": "runs/sft"}}}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    seen: dict[str, list] = {}
    for recipe in (load_recipe(sft), load_recipe(dpo)):
        for key, value in _marked_values(recipe):
            seen.setdefault(key, []).append(value)
    assert set(seen) == MARKED, "a marked field is not set by this test's recipes: add it to COMMON/EXPECTED"
    for key, relative in EXPECTED.items():
        assert all(value == recipe_dir / relative for value in seen[key]), (key, seen[key])
    # A built-in suite keeps its name; a suite file is anchored (suite entries stay strings).
    assert seen["eval.forgetting.suites"] == ["general", str(recipe_dir / "suites/mine.jsonl")] * 2
    assert seen["chat_template"] == [str(recipe_dir / "t/chat.jinja")] * 2
    # A shipped template keeps its name.
    assert parse_recipe({"chat_template": "chatml", "data": {"train": "x.jsonl"}}, base_dir=tmp_path).chat_template == "chatml"


def test_absolute_paths_and_hub_datasets_are_left_as_written(tmp_path):
    absolute = tmp_path / "abs.jsonl"
    recipe = parse_recipe({"data": {"train": "hf://owner/name:train", "external_eval": [str(absolute)]}}, base_dir=tmp_path / "x")
    assert isinstance(recipe.data.train, HubDataset) and str(recipe.data.train) == "hf://owner/name:train"
    assert recipe.data.external_eval == [absolute]


def _suite_recipe(folder: Path, gates: list[str]) -> Path:
    import yaml

    _write(folder / "train.jsonl")
    _write(folder / "legal_suite.jsonl", json.dumps(SUITE_ITEM) + "\n")
    recipe = {"data": {"train": "train.jsonl"}, "eval": {"forgetting": {"enabled": True, "suites": ["legal_suite.jsonl"]}, "gates": gates}}
    return _write(folder / "recipe.yaml", yaml.safe_dump(recipe))


def test_gate_on_the_recipes_own_suite_category_validates_from_any_cwd(tmp_path, monkeypatch):
    path = _suite_recipe(tmp_path / "project", ["forgetting.legal_drop <= 0.05", "base.forgetting.legal >= 0.5"])
    for cwd in (tmp_path / "project", tmp_path):
        monkeypatch.chdir(cwd)
        recipe = load_recipe(path)
        assert recipe.eval.gates == ["forgetting.legal_drop <= 0.05", "base.forgetting.legal >= 0.5"]
        assert recipe.eval.forgetting.suites == [str(tmp_path / "project" / "legal_suite.jsonl")]


def test_unknown_suite_category_is_still_an_error_from_another_cwd(tmp_path, monkeypatch):
    path = _suite_recipe(tmp_path / "project", ["forgetting.arithmetic_drop <= 0.05"])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert len(err.value.problems) == 1
    assert err.value.problems[0].startswith("eval.gates: [0] 'forgetting.arithmetic_drop <= 0.05': unknown metric forgetting.arithmetic_drop;")
    assert "forgetting.legal_drop" in err.value.problems[0]


def test_gate_problems_are_reported_with_the_other_problems(tmp_path):
    with pytest.raises(RecipeError) as err:
        parse_recipe({"data": {"val_fraction": 2}, "eval": {"gates": ["task.acuracy >= 0.5"]}}, base_dir=tmp_path)
    problems = err.value.problems
    assert "data.train: required key is missing" in problems
    assert any(p.startswith("data.val_fraction:") for p in problems)
    gate_lines = [p for p in problems if p.startswith("eval.gates:")]
    assert len(gate_lines) == 1 and gate_lines[0].startswith("eval.gates: [0] 'task.acuracy >= 0.5': unknown metric task.acuracy;")
    assert len(problems) == 3


def test_data_strict_is_a_recipe_key_set_by_override(tmp_path):
    _write(tmp_path / "t.jsonl")
    path = _write(tmp_path / "r.yaml", "data:\n  train: t.jsonl\n")
    assert load_recipe(path).data.strict is False
    assert load_recipe(path, ["data.strict=true"]).data.strict is True


def test_loading_a_recipe_imports_nothing_of_the_eval_stage():
    code = "import sys, tunekit.config; print(sorted(m for m in sys.modules if m.startswith(('tunekit.eval', 'tunekit.data'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
