"""Data preparation: every line accounted for, each reason code, formats, dedup, split, lengths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tunekit.config import load_recipe, parse_recipe
from tunekit.data import prepare_data, quarantine_summary
from tunekit.errors import DataError
from tunekit.runs import RunPaths, read_jsonl


def write_lines(path: Path, rows: list) -> Path:
    """Rows are dicts (dumped as JSON) or raw strings written verbatim, one per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def chat(user: str, assistant: str, system: str | None = None) -> dict:
    messages = [{"role": "system", "content": system}] if system is not None else []
    return {"messages": [*messages, {"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def distinct_chats(n: int, prefix: str = "q") -> list[dict]:
    return [chat(f"{prefix}{i}: where is order {i}?", f"answer {i}") for i in range(n)]


def make(tmp_path: Path, **data) -> tuple:
    """A recipe over tmp_path files; invalid lines are quarantined unless the test says otherwise."""
    data.setdefault("train", "train.jsonl")
    data.setdefault("on_invalid", "quarantine")
    recipe = parse_recipe({"name": "t", "output_dir": str(tmp_path / "runs"), "data": data}, base_dir=tmp_path)
    return recipe, RunPaths(recipe.run_dir)


def quarantine_of(run: RunPaths) -> list[dict]:
    return read_jsonl(run.quarantine)


# One crafted line per reason code, with the code it must produce.
BAD_LINES = [
    ("{not json", "invalid_json"),
    ("[1, 2]", "not_an_object"),
    (json.dumps({"question": "hi", "answer": "yo"}), "unknown_format"),
    (json.dumps({"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]}), "missing_field"),
    (json.dumps({"messages": [{"role": "human", "content": "q"}, {"role": "assistant", "content": "a"}]}), "bad_role"),
    (json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]}), "role_order"),
    (json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a"}]}), "role_order"),
    (json.dumps({"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]}), "role_order"),
    (json.dumps({"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "a"}]}), "empty_content"),
    (json.dumps({"messages": [{"role": "user", "content": ["q"]}, {"role": "assistant", "content": "a"}]}), "non_string_content"),
    (json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, {"role": "user", "content": "q2"}]}), "last_not_assistant"),
    (json.dumps(chat("long " * 80, "answer")), "too_long"),
]


def test_every_line_is_accounted_for_with_its_reason_and_line_number(tmp_path, smol_tokenizer):
    good = distinct_chats(6)
    rows: list = [good[0], good[1], ""]  # lines 1-3
    rows += [line for line, _ in BAD_LINES]  # lines 4-15
    rows += [good[2], good[0], good[3], good[4], good[5]]  # 16-20; line 17 repeats line 1
    write_lines(tmp_path / "train.jsonl", rows)
    recipe, run = make(tmp_path, max_length=64, val_fraction=0.2)

    report = prepare_data(recipe, run, smol_tokenizer)

    expected = [(4 + i, reason) for i, (_, reason) in enumerate(BAD_LINES)] + [(17, "duplicate")]
    quarantined = quarantine_of(run)
    assert [(q["line"], q["reason"]) for q in quarantined] == expected
    assert [q["raw"] for q in quarantined[: len(BAD_LINES)]] == [line for line, _ in BAD_LINES]
    assert quarantined[-1]["detail"] == "duplicate of train.jsonl:1 (kept)"
    assert all(q["source"] == "train.jsonl" for q in quarantined)

    (entry,) = report["files"]
    assert (entry["lines"], entry["blank"], entry["kept"], entry["quarantined"], entry["duplicates"]) == (20, 1, 6, 13, 1)
    assert entry["by_reason"]["role_order"] == 3 and entry["by_reason"]["too_long"] == 1
    assert report["quarantine"]["by_reason"] == entry["by_reason"]
    assert report["accounting"]["ok"] is True
    assert report["accounting"]["files"][str(tmp_path / "train.jsonl")]["ok"] is True
    assert report["splits"]["train"]["rows"] + report["splits"]["val"]["rows"] == 6
    written = read_jsonl(run.split("train")) + read_jsonl(run.split("val"))
    assert sorted(r["meta"]["line"] for r in written) == [1, 2, 16, 18, 19, 20]
    assert json.loads(run.data_report.read_text()) == report


def test_quarantine_summary_names_counts_and_lines(tmp_path, smol_tokenizer):
    write_lines(tmp_path / "train.jsonl", [*distinct_chats(3), "{bad", "{bad", BAD_LINES[5][0]])
    recipe, run = make(tmp_path)
    summary = quarantine_summary(prepare_data(recipe, run, smol_tokenizer))
    assert summary[0] == f"3 of 6 lines quarantined (invalid_json: 2, role_order: 1) → {run.quarantine}"
    assert [line.split(": ")[0].strip() for line in summary[1:]] == ["train.jsonl:4", "train.jsonl:5", "train.jsonl:6"]


def test_alpaca_rows_convert_exactly(tmp_path, smol_tokenizer):
    rows = [
        {"instruction": "Classify the ticket.", "input": "My parcel is late.", "output": "shipping"},
        {"instruction": "Say hi.", "input": "", "output": "hi"},
        {"instruction": "Say bye.", "output": "bye", "system": "Be brief."},
        {"instruction": "Count.", "output": ""},
    ]
    write_lines(tmp_path / "train.jsonl", rows)
    recipe, run = make(tmp_path, val_fraction=0.0, system_prompt="You sort tickets.")
    report = prepare_data(recipe, run, smol_tokenizer)

    assert [r["messages"] for r in read_jsonl(run.split("train"))] == [
        [
            {"role": "system", "content": "You sort tickets."},
            {"role": "user", "content": "Classify the ticket.\n\nMy parcel is late."},
            {"role": "assistant", "content": "shipping"},
        ],
        [
            {"role": "system", "content": "You sort tickets."},
            {"role": "user", "content": "Say hi."},
            {"role": "assistant", "content": "hi"},
        ],
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say bye."},
            {"role": "assistant", "content": "bye"},
        ],
    ]
    assert [(q["line"], q["reason"]) for q in quarantine_of(run)] == [(4, "empty_content")]
    assert report["format"]["detected"] == {"train.jsonl": "alpaca"}


def test_mixed_formats_in_one_file_is_an_error_naming_lines(tmp_path, smol_tokenizer):
    alpaca = {"instruction": "x", "output": "y"}
    write_lines(tmp_path / "train.jsonl", [*distinct_chats(2), alpaca, distinct_chats(3)[2], alpaca])
    recipe, run = make(tmp_path)
    with pytest.raises(DataError) as err:
        prepare_data(recipe, run, smol_tokenizer)
    assert "lines 1, 2, 4" in err.value.message and "lines 3, 5" in err.value.message
    assert not run.split("train").exists()


def test_declared_format_quarantines_rows_of_the_other_format(tmp_path, smol_tokenizer):
    write_lines(tmp_path / "train.jsonl", [*distinct_chats(2), {"instruction": "x", "output": "y"}])
    recipe, run = make(tmp_path, format="messages", val_fraction=0.0)
    prepare_data(recipe, run, smol_tokenizer)
    assert [(q["line"], q["reason"]) for q in quarantine_of(run)] == [(3, "unknown_format")]


def test_bom_crlf_and_invalid_utf8(tmp_path, smol_tokenizer):
    lines = [json.dumps(r).encode() for r in distinct_chats(3)]
    data = b"\xef\xbb\xbf" + b"\r\n".join([lines[0], lines[1], b"\xff\xfe{}", lines[2]])  # no final newline
    (tmp_path / "train.jsonl").write_bytes(data)
    recipe, run = make(tmp_path, val_fraction=0.0)
    report = prepare_data(recipe, run, smol_tokenizer)
    assert [r["meta"]["line"] for r in read_jsonl(run.split("train"))] == [1, 2, 4]
    assert read_jsonl(run.split("train"))[0]["messages"][0]["content"] == "q0: where is order 0?"
    assert [(q["line"], q["reason"]) for q in quarantine_of(run)] == [(3, "invalid_json")]
    assert report["files"][0]["lines"] == 4 and report["accounting"]["ok"]


def test_dedup_ignores_surrounding_whitespace_and_can_be_turned_off(tmp_path, smol_tokenizer):
    rows = [*distinct_chats(4), chat("  q1: where is order 1?\n", "answer 1 "), distinct_chats(4)[1]]
    write_lines(tmp_path / "train.jsonl", rows)
    recipe, run = make(tmp_path, val_fraction=0.0)
    prepare_data(recipe, run, smol_tokenizer)
    assert [(q["line"], q["reason"], q["detail"]) for q in quarantine_of(run)] == [
        (5, "duplicate", "duplicate of train.jsonl:2 (kept)"),
        (6, "duplicate", "duplicate of train.jsonl:2 (kept)"),
    ]
    recipe, run = make(tmp_path, val_fraction=0.5, dedup=False)
    report = prepare_data(recipe, run, smol_tokenizer)
    assert quarantine_of(run) == []
    # Copies of one example travel together, so none of them is both trained on and validated on.
    val_lines = {r["meta"]["line"] for r in read_jsonl(run.split("val"))}
    assert {2, 5, 6} <= val_lines or not ({2, 5, 6} & val_lines)
    assert report["splits"]["train"]["rows"] + report["splits"]["val"]["rows"] == 6


def test_rows_leaking_into_held_out_files_are_removed_from_train(tmp_path, smol_tokenizer):
    train = distinct_chats(6)
    write_lines(tmp_path / "train.jsonl", train)
    write_lines(tmp_path / "eval.jsonl", [train[1], chat("e", "e")])
    write_lines(tmp_path / "test.jsonl", [chat("t", "t"), train[4], chat("e", "e")])
    recipe, run = make(tmp_path, eval="eval.jsonl", test="test.jsonl")
    report = prepare_data(recipe, run, smol_tokenizer)
    assert [(q["source"], q["line"], q["reason"], q["detail"]) for q in quarantine_of(run)] == [
        ("train.jsonl", 2, "leaks_into_eval", "same example as eval.jsonl:1 in the eval file"),
        ("train.jsonl", 5, "leaks_into_test", "same example as test.jsonl:2 in the test file"),
        ("eval.jsonl", 2, "leaks_into_test", "same example as test.jsonl:3 in the test file"),
    ]
    assert {name: s["rows"] for name, s in report["splits"].items()} == {"train": 4, "val": 1, "test": 3}
    assert [f["duplicates"] for f in report["files"]] == [2, 1, 0]
    assert report["accounting"]["ok"]


def test_same_seed_same_bytes_and_other_seed_other_split(tmp_path, smol_tokenizer):
    write_lines(tmp_path / "train.jsonl", [*distinct_chats(40), "{bad"])
    recipe, run = make(tmp_path, val_fraction=0.2, test_fraction=0.1)
    outputs = [run.split("train"), run.split("val"), run.split("test"), run.quarantine, run.data_report]
    prepare_data(recipe, run, smol_tokenizer)
    first = [p.read_bytes() for p in outputs]
    prepare_data(recipe, run, smol_tokenizer)
    assert [p.read_bytes() for p in outputs] == first

    recipe, run = make(tmp_path, val_fraction=0.2, test_fraction=0.1, seed=7)
    prepare_data(recipe, run, smol_tokenizer)
    assert run.split("val").read_bytes() != first[1]


@pytest.mark.parametrize(
    ("n_rows", "val_fraction", "test_fraction", "expected"),
    [
        (20, 0.1, 0.2, {"train": 14, "val": 2, "test": 4}),
        (2, 0.1, 0.0, {"train": 1, "val": 1, "test": 0}),
        (2, 0.1, 0.1, {"train": 1, "val": 1, "test": 0}),
        (1, 0.1, 0.1, {"train": 1, "val": 0, "test": 0}),
        (10, 0.0, 0.0, {"train": 10, "val": 0, "test": 0}),
    ],
)
def test_split_sizes_are_disjoint_and_cover_train(tmp_path, smol_tokenizer, n_rows, val_fraction, test_fraction, expected):
    write_lines(tmp_path / "train.jsonl", distinct_chats(n_rows))
    recipe, run = make(tmp_path, val_fraction=val_fraction, test_fraction=test_fraction)
    report = prepare_data(recipe, run, smol_tokenizer)
    assert {name: s["rows"] for name, s in report["splits"].items()} == expected
    assert run.split("test").exists() == (expected["test"] > 0)
    lines = [r["meta"]["line"] for name in ("train", "val", "test") if run.split(name).exists() for r in read_jsonl(run.split(name))]
    assert sorted(lines) == list(range(1, n_rows + 1))


def test_token_lengths_match_the_chat_template(tmp_path, smol_tokenizer):
    rows = distinct_chats(5)
    write_lines(tmp_path / "train.jsonl", rows)
    recipe, run = make(tmp_path, val_fraction=0.0)
    report = prepare_data(recipe, run, smol_tokenizer)
    lengths = sorted(len(smol_tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=False)) for r in rows)
    tokens = dict(report["splits"]["train"]["tokens"])
    assert sum(tokens.pop("histogram")["counts"]) == 5
    assert tokens == {
        "min": lengths[0],
        "mean": round(sum(lengths) / 5, 2),
        "p50": lengths[2],
        "p95": lengths[4],
        "max": lengths[4],
        "over_max_length": 0,
    }


def test_over_length_drop_truncate_and_error(tmp_path, smol_tokenizer):
    rows = [*distinct_chats(4), chat("word " * 60, "long one"), chat("more " * 70, "long two")]
    write_lines(tmp_path / "train.jsonl", rows)

    recipe, run = make(tmp_path, val_fraction=0.0, max_length=60, over_length="drop")
    report = prepare_data(recipe, run, smol_tokenizer)
    assert [(q["line"], q["reason"]) for q in quarantine_of(run)] == [(5, "too_long"), (6, "too_long")]
    assert report["splits"]["train"]["rows"] == 4 and report["splits"]["train"]["tokens"]["max"] <= 60

    recipe, run = make(tmp_path, val_fraction=0.0, max_length=60, over_length="truncate")
    report = prepare_data(recipe, run, smol_tokenizer)
    assert quarantine_of(run) == []
    assert report["splits"]["train"]["truncated"] == 2 and report["splits"]["train"]["tokens"]["max"] > 60

    recipe, run = make(tmp_path, val_fraction=0.0, max_length=60, over_length="error")
    with pytest.raises(DataError) as err:
        prepare_data(recipe, run, smol_tokenizer)
    assert "2 example(s) are longer than data.max_length=60" in err.value.message
    assert "train.jsonl:5 (" in err.value.message and "train.jsonl:6 (" in err.value.message
    assert not run.split("train").exists()


def test_invalid_lines_are_an_error_by_default_but_duplicates_and_long_rows_are_not(tmp_path, smol_tokenizer):
    rows = distinct_chats(4)
    write_lines(tmp_path / "train.jsonl", [*rows, rows[0], BAD_LINES[-1][0]])
    recipe, run = make(tmp_path, on_invalid="error", max_length=60)
    assert prepare_data(recipe, run, smol_tokenizer)["quarantine"]["by_reason"] == {"duplicate": 1, "too_long": 1}

    write_lines(tmp_path / "train.jsonl", [*rows, rows[0], "{bad", BAD_LINES[10][0]])
    recipe, run = make(tmp_path, on_invalid="error")
    with pytest.raises(DataError) as err:
        prepare_data(recipe, run, smol_tokenizer)
    assert "2 invalid line(s) in the data" in err.value.message
    assert "data.on_invalid: quarantine" in err.value.hint
    assert "train.jsonl:6: invalid_json" in err.value.message and "train.jsonl:7: last_not_assistant" in err.value.message
    assert "train.jsonl:5" not in err.value.message
    assert len(quarantine_of(run)) == 3 and not run.split("train").exists()


def test_no_training_rows_left_says_why(tmp_path, smol_tokenizer):
    write_lines(tmp_path / "train.jsonl", ["{bad"] * 11 + ["[1]"])
    recipe, run = make(tmp_path)
    with pytest.raises(DataError) as err:
        prepare_data(recipe, run, smol_tokenizer)
    assert "all 12 non-blank lines of train.jsonl were quarantined" in err.value.message
    assert str(run.quarantine) in err.value.message and "top reason invalid_json (11)" in err.value.message
    assert len(quarantine_of(run)) == 12


def test_missing_and_repeated_files_name_the_recipe_key(tmp_path, smol_tokenizer):
    write_lines(tmp_path / "train.jsonl", distinct_chats(3))
    recipe, run = make(tmp_path, eval="nope.jsonl")
    with pytest.raises(DataError, match=r"data\.eval: file not found: .*nope\.jsonl"):
        prepare_data(recipe, run, smol_tokenizer)
    recipe, run = make(tmp_path, test="train.jsonl")
    with pytest.raises(DataError, match=r"data\.test and data\.train are the same file"):
        prepare_data(recipe, run, smol_tokenizer)


def test_system_prompt_is_added_only_where_missing_and_extra_keys_are_reported(tmp_path, smol_tokenizer):
    rows = [chat("a", "b", system="Own prompt."), {**chat("c", "d"), "id": 7}]
    write_lines(tmp_path / "train.jsonl", rows)
    recipe, run = make(tmp_path, val_fraction=0.0, system_prompt="Default prompt.")
    report = prepare_data(recipe, run, smol_tokenizer)
    systems = [r["messages"][0]["content"] for r in read_jsonl(run.split("train"))]
    assert systems == ["Own prompt.", "Default prompt."]
    assert report["files"][0]["ignored_keys"] == {"id": 1}


def test_examples_the_chat_template_refuses_are_quarantined(tmp_path, smol_tokenizer_dir):
    from tunekit.models import load_tokenizer

    tokenizer = load_tokenizer(str(smol_tokenizer_dir))
    tokenizer.chat_template = (
        "{% for m in messages %}{% if 'forbidden' in m['content'] %}{{ raise_exception('no forbidden words') }}{% endif %}"
        "{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    )
    write_lines(tmp_path / "train.jsonl", [*distinct_chats(3), chat("a forbidden question", "x")])
    recipe, run = make(tmp_path, val_fraction=0.0)
    report = prepare_data(recipe, run, tokenizer)
    (row,) = quarantine_of(run)
    assert (row["line"], row["reason"]) == (4, "template_error") and "no forbidden words" in row["detail"]
    assert report["splits"]["train"]["rows"] == 3


def test_cli_prepare_prints_summary_and_fails_on_invalid_lines_by_default(tmp_path, tiny_model_dir, monkeypatch):
    from tunekit.cli import data as data_cli

    write_lines(tmp_path / "train.jsonl", [*distinct_chats(10), "{bad"])
    (tmp_path / "recipe.yaml").write_text(f"base_model: {tiny_model_dir}\ndata:\n  train: train.jsonl\n", encoding="utf-8")
    root = typer.Typer()
    root.add_typer(data_cli.app, name="data")
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()

    assert "prepare" in runner.invoke(root, ["data", "--help"]).output
    assert "--set" in runner.invoke(root, ["data", "prepare", "--help"]).output
    result = runner.invoke(root, ["data", "prepare", str(tmp_path / "recipe.yaml"), "--set", "data.on_invalid=quarantine"])
    assert result.exit_code == 0, result.output
    assert "1 of 11 lines quarantined (invalid_json: 1)" in result.output
    assert "train.jsonl:11: invalid_json" in result.output
    run = RunPaths(tmp_path / "runs" / "recipe")
    assert len(read_jsonl(run.split("train"))) == 9 and len(read_jsonl(run.split("val"))) == 1

    result = runner.invoke(root, ["data", "prepare", str(tmp_path / "recipe.yaml")])
    assert result.exit_code == 1 and isinstance(result.exception, DataError)
    assert "train.jsonl:11: invalid_json" in result.exception.message


def test_cli_prepare_audits_data_files_without_a_recipe(tmp_path, tiny_model_dir, monkeypatch):
    from tunekit.cli import data as data_cli
    from tunekit.errors import RecipeError

    write_lines(tmp_path / "my.jsonl", [*distinct_chats(10), "{bad"])
    write_lines(tmp_path / "held.jsonl", distinct_chats(13)[10:])
    root = typer.Typer()
    root.add_typer(data_cli.app, name="data")
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    args = ["data", "prepare", "my.jsonl", "held.jsonl", "--model", str(tiny_model_dir), "--set", "data.on_invalid=quarantine"]
    result = runner.invoke(root, args)
    assert result.exit_code == 0, result.output
    # The same report and quarantine as with a recipe, in runs/<file name>.
    assert "1 of 14 lines quarantined (invalid_json: 1)" in result.output and "my.jsonl:11: invalid_json" in result.output
    run = RunPaths(tmp_path / "runs" / "my")
    assert len(read_jsonl(run.split("train"))) == 10 and len(read_jsonl(run.split("val"))) == 3  # held.jsonl is the eval file
    assert read_jsonl(run.quarantine)[0]["reason"] == "invalid_json"
    # The printed recipe lines reproduce the audit: written to a file, they load to the same recipe.
    lines = result.output[result.output.index("name: my") : result.output.index("on_invalid: quarantine") + len("on_invalid: quarantine")]
    (tmp_path / "again.yaml").write_text(lines + "\n", encoding="utf-8")
    again = load_recipe(tmp_path / "again.yaml")
    assert again.data.train == tmp_path / "my.jsonl" and again.data.eval == tmp_path / "held.jsonl"
    assert again.base_model == str(tiny_model_dir) and again.data.on_invalid == "quarantine" and again.run_dir == run.root

    # Without --set the broken line fails the audit, as with a recipe: exit 1, the line named.
    result = runner.invoke(root, ["data", "prepare", "my.jsonl", "--model", str(tiny_model_dir)])
    assert result.exit_code == 1 and isinstance(result.exception, DataError) and "my.jsonl:11: invalid_json" in result.exception.message
    result = runner.invoke(root, ["data", "prepare", "nope.jsonl"])
    assert isinstance(result.exception, RecipeError) and result.exception.problems == ["data.train: file not found: nope.jsonl"]
