"""Row formats and input types: exact canonical forms, record numbers, reason codes, SFT's refusal."""

from __future__ import annotations

import json
import pytest

from tunekit.data import prepare_data
from tunekit.data.validate import read_input
from tunekit.errors import DataError
from tests.unit.data_helpers import make_recipe as make, write_lines
from tunekit.runs import read_jsonl


def msg(role: str, content: str, **extra) -> dict:
    return {"role": role, "content": content, **extra}


def assert_accounted(report: dict, lines: int, blank: int, kept: int, quarantined: int) -> None:
    (entry,) = report["files"]
    assert (entry["lines"], entry["blank"], entry["kept"], entry["quarantined"]) == (lines, blank, kept, quarantined)
    assert entry["lines"] == entry["blank"] + entry["kept"] + entry["quarantined"]
    assert report["accounting"]["ok"] is True


# --- each format → its canonical form ----------------------------------------------------------

CANONICAL = [
    (
        {"messages": [msg("user", "a"), msg("assistant", "b", weight=0), msg("user", "c"), msg("assistant", "d", weight=1)]},
        {"messages": [msg("user", "a"), msg("assistant", "b", weight=0), msg("user", "c"), msg("assistant", "d", weight=1)]},
    ),
    (
        {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]},
        {"messages": [msg("system", "S"), msg("user", "hi"), msg("assistant", "yo")]},
    ),
    (
        {"system": "S", "conversations": [{"from": "user", "value": "q1"}, {"from": "assistant", "value": "a1"},
                                          {"from": "human", "value": "q2"}, {"from": "gpt", "value": "a2"}]},
        {"messages": [msg("system", "S"), msg("user", "q1"), msg("assistant", "a1"), msg("user", "q2"), msg("assistant", "a2")]},
    ),
    (
        {"instruction": "Sum.", "input": "1 2", "output": "3", "text": "### pre-rendered"},
        {"messages": [msg("user", "Sum.\n\n1 2"), msg("assistant", "3")]},
    ),
    (
        {"prompt": "Capital of France?", "completion": "Paris.", "system": "Be brief."},
        {"messages": [msg("system", "Be brief."), msg("user", "Capital of France?"), msg("assistant", "Paris.")]},
    ),
    (
        {"prompt": [msg("user", "q")], "completion": [msg("assistant", "a")]},
        {"messages": [msg("user", "q"), msg("assistant", "a")]},
    ),
    (
        {"prompt": "Say hi", "chosen": "Hi!", "rejected": "No."},
        {"prompt": [msg("user", "Say hi")], "chosen": [msg("assistant", "Hi!")], "rejected": [msg("assistant", "No.")]},
    ),
    (
        {"prompt": [msg("system", "S"), msg("user", "q")], "chosen": [msg("assistant", "good")], "rejected": [msg("assistant", "bad")]},
        {"prompt": [msg("system", "S"), msg("user", "q")], "chosen": [msg("assistant", "good")], "rejected": [msg("assistant", "bad")]},
    ),
    (  # no `prompt`: the turns both answers share are the prompt (TRL's implicit-prompt layout)
        {"chosen": [msg("user", "q"), msg("assistant", "good")], "rejected": [msg("user", "q"), msg("assistant", "bad")]},
        {"prompt": [msg("user", "q")], "chosen": [msg("assistant", "good")], "rejected": [msg("assistant", "bad")]},
    ),
    ({"text": "Raw corpus text.\nSecond line."}, {"text": "Raw corpus text.\nSecond line."}),
]


@pytest.mark.parametrize(("row", "canonical"), CANONICAL)
def test_each_format_converts_exactly_to_the_canonical_form(tmp_path, row, canonical):
    path = write_lines(tmp_path / "train.jsonl", [row])
    result = read_input("train", path, "train.jsonl", "auto")
    assert result.rejected == []
    (example,) = result.examples
    assert example.to_json() == {**canonical, "meta": {"source": "train.jsonl", "line": 1}}


def test_pre_rendered_text_beside_alpaca_fields_is_reported_as_ignored(tmp_path):
    path = write_lines(tmp_path / "train.jsonl", [CANONICAL[3][0]])
    result = read_input("train", path, "train.jsonl", "auto")
    assert result.detected_format == "alpaca" and dict(result.ignored_keys) == {"text": 1}


def test_declared_format_reads_a_row_that_would_match_several(tmp_path):
    row = {"instruction": "x", "output": "y", "text": "raw"}
    path = write_lines(tmp_path / "train.jsonl", [row])
    (example,) = read_input("train", path, "train.jsonl", "text").examples
    assert example.to_json()["text"] == "raw"


# --- reason codes ------------------------------------------------------------------------------

SG = "conversations"
REASONS = [
    ({"messages": [msg("user", "q"), msg("assistant", "a", weight=2)]}, "bad_weight", "messages[1].weight is 2"),
    ({"messages": [msg("user", "q"), msg("assistant", "a", weight=True)]}, "bad_weight", "must be 0 or 1"),
    ({"messages": [msg("user", "q", weight=1), msg("assistant", "a")]}, "bad_weight", "only assistant messages take a weight"),
    ({"messages": [msg("user", "q"), msg("assistant", "a", weight=0)]}, "bad_weight", "nothing to learn"),
    ({"prompt": "p", "chosen": "same ", "rejected": " same"}, "chosen_equals_rejected", "the same answer"),
    ({"chosen": [msg("user", "q"), msg("assistant", "x")], "rejected": [msg("user", "q"), msg("assistant", "x")]},
     "chosen_equals_rejected", "the same answer"),
    ({SG: [{"from": "human"}, {"from": "gpt", "value": "a"}]}, "missing_field", "conversations[0] has no `value`"),
    ({SG: [{"from": "bot", "value": "q"}, {"from": "gpt", "value": "a"}]}, "bad_role", "conversations[0].from is 'bot'"),
    ({SG: [{"from": "human", "value": "q"}, {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
     "role_order", "conversations[0] and conversations[1] are both user"),
    ({SG: [{"from": "human", "value": " "}, {"from": "gpt", "value": "a"}]}, "empty_content", "conversations[0] (user) has empty content"),
    ({SG: [{"from": "human", "value": 3}, {"from": "gpt", "value": "a"}]}, "non_string_content", "conversations[0].value must be a string"),
    ({SG: [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}, {"from": "human", "value": "q2"}]},
     "last_not_assistant", "the last message is user"),
    ({"prompt": "p", "chosen": "a"}, "missing_field", "preference row has no `rejected`"),
    ({"prompt": "p", "chosen": [msg("bot", "a")], "rejected": "b"}, "bad_role", "chosen[0].role is 'bot'"),
    ({"prompt": "p", "chosen": [msg("user", "a")], "rejected": "b"}, "role_order", "chosen[0] is user"),
    ({"prompt": [msg("user", "q"), msg("assistant", "a")], "chosen": "x", "rejected": "y"}, "role_order", "must end with a user turn"),
    ({"prompt": "p", "chosen": "", "rejected": "b"}, "empty_content", "`chosen` is empty"),
    ({"prompt": "p", "chosen": 5, "rejected": "b"}, "non_string_content", "`chosen` must be a string"),
    ({"prompt": "p", "chosen": [msg("assistant", "a"), msg("user", "more")], "rejected": "b"}, "last_not_assistant", "`chosen` is user"),
    ({"prompt": "p"}, "missing_field", "has no `completion`"),
    ({"text": 5}, "non_string_content", "`text` must be a string"),
    ({"text": ""}, "empty_content", "`text` is empty"),
    ({"messages": [msg("user", "q"), msg("assistant", "a")], SG: []}, "unknown_format", "several formats"),
]


@pytest.mark.parametrize(("row", "reason", "detail"), REASONS)
def test_each_problem_gets_its_reason_code(tmp_path, row, reason, detail):
    path = write_lines(tmp_path / "train.jsonl", ["", row])
    result = read_input("train", path, "train.jsonl", "auto")
    (rejected,) = result.rejected
    assert (rejected.line, rejected.reason, rejected.raw) == (2, reason, json.dumps(row))
    assert detail in rejected.detail
    assert result.lines == result.blank + len(result.examples) + len(result.rejected) == 2


def test_mixed_formats_name_the_lines_of_each_format(tmp_path):
    chat = {"messages": [msg("user", "q"), msg("assistant", "a")]}
    sharegpt = {SG: [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    path = write_lines(tmp_path / "train.jsonl", [chat, sharegpt, chat, {"text": "t"}, "{broken"])
    with pytest.raises(DataError) as err:
        read_input("train", path, "train.jsonl", "auto")
    assert err.value.message == (
        f"{path} mixes formats: chat `messages` rows on lines 1, 3, ShareGPT `conversations` rows on lines 2 "
        "and raw `text` rows on lines 4"
    )
    array = tmp_path / "train.json"
    array.write_text(json.dumps([chat, {"prompt": "p", "completion": "c"}]), encoding="utf-8")
    with pytest.raises(DataError, match=r"chat `messages` rows on items 1 and `prompt/completion` rows on items 2"):
        read_input("train", array, "train.json", "auto")


# --- input types -------------------------------------------------------------------------------


def test_json_array_items_are_numbered_and_bom_crlf_are_handled(tmp_path, smol_tokenizer):
    good = [{"prompt": f"question {i}", "completion": f"answer {i}"} for i in range(2)]
    items = [good[0], [1, 2], {"foo": 1}, good[1], {"prompt": "p", "completion": 7}]
    text = json.dumps(items, indent=2).replace("\n", "\r\n")
    (tmp_path / "train.json").write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    recipe, run = make(tmp_path, train="train.json")
    report = prepare_data(recipe, run, smol_tokenizer)

    quarantined = read_jsonl(run.quarantine)
    assert [(q["line"], q["reason"]) for q in quarantined] == [(2, "not_an_object"), (3, "unknown_format"), (5, "non_string_content")]
    assert [q["detail"].split(":")[0] for q in quarantined] == ["item 2 is a JSON list, not an object", "item 3", "item 5"]
    assert [json.loads(q["raw"]) for q in quarantined] == [items[1], items[2], items[4]]
    kept = [(r["meta"]["line"], r["messages"][0]["content"]) for r in read_jsonl(run.split("train"))]
    assert kept == [(1, "question 0"), (4, "question 1")]
    assert report["files"][0]["input"] == "json" and report["files"][0]["unit"] == "item"
    assert_accounted(report, lines=5, blank=0, kept=2, quarantined=3)


def test_json_file_holding_json_lines_is_read_line_by_line(tmp_path):
    path = write_lines(tmp_path / "train.json", [{"text": "one"}, "{oops", {"text": "two"}])
    result = read_input("train", path, "train.json", "auto")
    assert result.input_type == "jsonl" and [e.line for e in result.examples] == [1, 3]
    assert [(r.line, r.reason) for r in result.rejected] == [(2, "invalid_json")]


def test_broken_json_array_is_one_clear_error(tmp_path):
    (tmp_path / "train.json").write_text('[{"text": "a"},\n {"text": }]', encoding="utf-8")
    with pytest.raises(DataError, match=r"not a valid JSON array: Expecting value at line 2 column 11"):
        read_input("train", tmp_path / "train.json", "train.json", "auto")


def test_csv_records_are_numbered_by_the_line_they_start_on(tmp_path, smol_tokenizer):
    data = (
        "\ufeffinstruction,input,output\r\n"  # line 1: header
        "Say hi,,hi\r\n"  # 2
        '"Two\nlines",x,y\r\n'  # 3-4: one record over two lines
        "\r\n"  # 5: blank
        "Count,,\r\n"  # 6: empty output
        "only,two\r\n"  # 7: too few fields
        "Last,,done\r\n"  # 8
    )
    (tmp_path / "train.csv").write_bytes(data.encode("utf-8"))
    recipe, run = make(tmp_path, train="train.csv")
    report = prepare_data(recipe, run, smol_tokenizer)

    rows = read_jsonl(run.split("train"))
    assert [(r["meta"]["line"], r["messages"][0]["content"]) for r in rows] == [(2, "Say hi"), (3, "Two\nlines\n\nx"), (8, "Last")]
    quarantined = read_jsonl(run.quarantine)
    assert [(q["line"], q["reason"]) for q in quarantined] == [(6, "empty_content"), (7, "invalid_csv")]
    assert quarantined[0]["raw"] == json.dumps({"instruction": "Count", "input": "", "output": ""})
    assert quarantined[1]["detail"] == "line 7 has 2 fields; the header has 3"
    assert report["files"][0]["input"] == "csv"
    assert_accounted(report, lines=6, blank=1, kept=3, quarantined=2)


@pytest.mark.parametrize(
    ("csv_text", "expected"),
    [
        ("prompt,completion\nWhat is 2+2?,4\n", {"messages": [msg("user", "What is 2+2?"), msg("assistant", "4")]}),
        ('text\n"Plain, text."\n', {"text": "Plain, text."}),
        (
            "messages\n" + '"' + json.dumps([msg("user", "q"), msg("assistant", "a")]).replace('"', '""') + '"\n',
            {"messages": [msg("user", "q"), msg("assistant", "a")]},
        ),
        ("prompt,chosen,rejected\n[not json,yes,no\n",
         {"prompt": [msg("user", "[not json")], "chosen": [msg("assistant", "yes")], "rejected": [msg("assistant", "no")]}),
    ],
)
def test_csv_columns_map_to_the_formats(tmp_path, csv_text, expected):
    (tmp_path / "t.csv").write_text(csv_text, encoding="utf-8")
    (example,) = read_input("train", tmp_path / "t.csv", "t.csv", "auto").examples
    assert example.payload == expected and example.line == 2


def test_csv_messages_column_with_bad_json_is_quarantined(tmp_path):
    (tmp_path / "t.csv").write_text('messages\n"[{oops"\n', encoding="utf-8")
    result = read_input("train", tmp_path / "t.csv", "t.csv", "auto")
    assert [(r.line, r.reason) for r in result.rejected] == [(2, "invalid_json")]
    assert "`messages` column is not valid JSON" in result.rejected[0].detail


def test_parquet_rows_are_numbered_and_missing_nested_keys_do_not_appear(tmp_path, smol_tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {"messages": [msg("user", "q0"), msg("assistant", "a0", weight=1)]},
        {"messages": [msg("user", "q1"), msg("robot", "a1")]},
        {"messages": [msg("user", "q2"), msg("assistant", "a2")]},  # no weight: the column gives None
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    recipe, run = make(tmp_path, train="train.parquet")
    report = prepare_data(recipe, run, smol_tokenizer)

    assert [r["messages"] for r in read_jsonl(run.split("train"))] == [rows[0]["messages"], rows[2]["messages"]]
    (bad,) = read_jsonl(run.quarantine)
    assert (bad["line"], bad["reason"]) == (2, "bad_role") and bad["detail"].startswith("row 2: messages[1].role is 'robot'")
    assert json.loads(bad["raw"])["messages"][1] == {"role": "robot", "content": "a1", "weight": None}
    assert report["files"][0]["input"] == "parquet"
    assert_accounted(report, lines=3, blank=0, kept=2, quarantined=1)


def test_saved_hf_dataset_dir_is_read_row_by_row(tmp_path, smol_tokenizer):
    from datasets import Dataset, DatasetDict

    rows = [
        {"instruction": "Say a", "input": None, "output": "a"},
        {"instruction": "Say b", "input": "now", "output": ""},
        {"instruction": "Say c", "input": "", "output": "c"},
    ]
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    recipe, run = make(tmp_path, train="saved")
    report = prepare_data(recipe, run, smol_tokenizer)

    assert [(r["meta"]["line"], r["messages"]) for r in read_jsonl(run.split("train"))] == [
        (1, [msg("user", "Say a"), msg("assistant", "a")]),
        (3, [msg("user", "Say c"), msg("assistant", "c")]),
    ]
    (bad,) = read_jsonl(run.quarantine)
    assert (bad["line"], bad["reason"], bad["detail"]) == (2, "empty_content", "row 2: `output` is empty")
    assert report["files"][0]["input"] == "hf_dataset" and len(report["files"][0]["sha256"]) == 64
    assert_accounted(report, lines=3, blank=0, kept=2, quarantined=1)

    DatasetDict({"train": Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "dict"))
    with pytest.raises(DataError, match=r"saved DatasetDict with splits train; name one split"):
        read_input("train", tmp_path / "dict", "dict", "auto")


def test_a_hub_id_written_as_a_path_gets_a_hint_to_write_hf(tmp_path):
    with pytest.raises(DataError, match="file not found") as err:
        read_input("train", tmp_path / "HuggingFaceH4" / "ultrachat", "ultrachat", "auto")
    assert "`hf://HuggingFaceH4/ultrachat`" in err.value.hint


# --- Hugging Face hub datasets (hf://...) ------------------------------------------------------


def test_hub_dataset_ids_in_the_recipe(tmp_path):
    from tunekit.config import HubDataset, parse_recipe
    from tunekit.errors import RecipeError

    recipe, _ = make(tmp_path, train="hf://org/chats/en@v1.0:train[:10%]", eval="hf://org/chats", test="local.jsonl")
    train, held_out = recipe.data.train, recipe.data.eval
    assert isinstance(train, HubDataset) and (train.repo, train.config, train.revision, train.split) == ("org/chats", "en", "v1.0", "train[:10%]")
    assert (held_out.repo, held_out.config, held_out.revision, held_out.split) == ("org/chats", None, None, None)
    assert recipe.data.test == tmp_path / "local.jsonl"  # paths are still anchored to the recipe's folder
    # The resolved recipe written into a run reads back the same.
    again = parse_recipe(__import__("yaml").safe_load(recipe.to_yaml()))
    assert again.data.train == "hf://org/chats/en@v1.0:train[:10%]" and isinstance(again.data.train, HubDataset)
    for bad in ("hf://chats", "hf://a/b/c/d", "hf://a/b:", "hf://a/b@"):
        with pytest.raises(RecipeError, match=r"data.train: `hf://.*` is not a hub dataset id; write hf://OWNER/NAME"):
            make(tmp_path, train=bad)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An offline `datasets` cache holding `tunekit/tiny-chat` (splits train and test).

    The hub cannot be reached from the tests, so the cache is written by datasets' own Parquet
    builder (the builder a hub load uses for Parquet repos) and placed under the directory
    names a hub load of `tunekit/tiny-chat` gives it (`tunekit___tiny-chat/default/...`)."""
    import os

    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets.packaged_modules.parquet.parquet import Parquet

    cache, source = tmp_path / "hf-cache", tmp_path / "hub-files"
    source.mkdir()
    rows = [{"messages": [msg("user", f"Question {i}?"), msg("assistant", f"Answer {i}.")]} for i in range(6)]
    pq.write_table(pa.Table.from_pylist(rows), source / "train.parquet")
    pq.write_table(pa.Table.from_pylist(rows[:2]), source / "test.parquet")
    files = {"train": [str(source / "train.parquet")], "test": [str(source / "test.parquet")]}
    Parquet(cache_dir=str(cache), dataset_name="tiny-chat", hash="0" * 40, data_files=files).download_and_prepare()
    (config_dir,) = (cache / "tiny-chat").iterdir()
    config_dir.rename(cache / "tiny-chat" / "default")
    (cache / "tiny-chat").rename(cache / "tunekit___tiny-chat")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    return rows


def test_hub_dataset_is_prepared_from_the_local_cache(tmp_path, hub_cache, smol_tokenizer):
    recipe, run = make(tmp_path, train="hf://tunekit/tiny-chat", test="hf://tunekit/tiny-chat:test")
    report = prepare_data(recipe, run, smol_tokenizer)

    train, test = read_jsonl(run.split("train")), read_jsonl(run.split("test"))
    # The test split's two rows are rows 1-2 of train: removed from training as exact leaks.
    assert [r["meta"] for r in train] == [{"source": "hf://tunekit/tiny-chat", "line": n} for n in (3, 4, 5, 6)]
    assert [r["messages"] for r in test] == [row["messages"] for row in hub_cache[:2]]
    assert test[0]["meta"] == {"source": "hf://tunekit/tiny-chat:test", "line": 1}
    files = {f["path"]: f for f in report["files"]}
    assert files["hf://tunekit/tiny-chat"]["input"] == "hf_dataset" and len(files["hf://tunekit/tiny-chat"]["sha256"]) == 64
    assert report["leakage"]["pairs"]["train->test"]["exact"] == 2 and report["accounting"]["ok"] is True


def test_hub_dataset_offline_and_not_cached_is_one_clear_error(tmp_path, hub_cache):
    from tunekit.config import HubDataset

    with pytest.raises(DataError) as err:
        read_input("eval", HubDataset("hf://someone/missing/en"), "missing", "auto")
    message, hint = str(err.value), err.value.hint
    assert message.startswith("data.eval: the hub dataset hf://someone/missing/en (split 'validation') cannot be loaded: ")
    assert "offline mode is on (HF_HUB_OFFLINE) and it is not in the local cache" in message
    assert "load_dataset('someone/missing', 'en', split='validation').save_to_disk(DIR)" in hint and "data.eval" in hint
    with pytest.raises(DataError, match=r"hf://tunekit/tiny-chat:nope \(split 'nope'\) cannot be loaded"):
        read_input("train", HubDataset("hf://tunekit/tiny-chat:nope"), "x", "auto")


# --- preference and text rows through prepare, and into training ---------------------------------


def test_prepare_writes_canonical_preference_rows_with_pair_lengths(tmp_path, smol_tokenizer):
    rows = [{"prompt": f"Question {i}?", "chosen": f"Good answer {i}.", "rejected": "Bad" + " bad" * i} for i in range(3)]
    write_lines(tmp_path / "train.jsonl", [*rows, rows[0]])
    recipe, run = make(tmp_path, system_prompt="Be kind.")
    report = prepare_data(recipe, run, smol_tokenizer)

    system = msg("system", "Be kind.")
    assert read_jsonl(run.split("train")) == [
        {"prompt": [system, msg("user", r["prompt"])], "chosen": [msg("assistant", r["chosen"])],
         "rejected": [msg("assistant", r["rejected"])], "meta": {"source": "train.jsonl", "line": i + 1}}
        for i, r in enumerate(rows)
    ]
    assert [(q["line"], q["reason"]) for q in read_jsonl(run.quarantine)] == [(4, "duplicate")]

    def pair_length(row: dict) -> int:
        prompt = [system, msg("user", row["prompt"])]
        return max(
            len(smol_tokenizer.apply_chat_template(prompt + [msg("assistant", row[side])], tokenize=True, return_dict=False))
            for side in ("chosen", "rejected")
        )

    lengths = sorted(pair_length(r) for r in rows)
    tokens = report["splits"]["train"]["tokens"]
    assert (tokens["min"], tokens["max"]) == (lengths[0], lengths[-1])
    assert report["format"]["detected"] == {"train.jsonl": "preference"}
    assert_accounted(report, lines=4, blank=0, kept=3, quarantined=1)


def test_prepare_writes_text_rows_without_a_system_prompt(tmp_path, smol_tokenizer):
    texts = ["The first document.", "A second, longer document about tokenizers."]
    write_lines(tmp_path / "train.jsonl", [{"text": t} for t in texts] + ["", {"text": "  "}])
    recipe, run = make(tmp_path, system_prompt="Ignored for text.")
    report = prepare_data(recipe, run, smol_tokenizer)

    assert read_jsonl(run.split("train")) == [
        {"text": t, "meta": {"source": "train.jsonl", "line": i + 1}} for i, t in enumerate(texts)
    ]
    lengths = sorted(len(smol_tokenizer(t)["input_ids"]) for t in texts)
    assert (report["splits"]["train"]["tokens"]["min"], report["splits"]["train"]["tokens"]["max"]) == tuple(lengths)
    assert [(q["line"], q["reason"]) for q in read_jsonl(run.quarantine)] == [(4, "empty_content")]
    assert_accounted(report, lines=4, blank=1, kept=2, quarantined=1)


def test_sft_refuses_a_preference_train_split(tmp_path, smol_tokenizer):
    from tunekit.train.sft import build_trainer

    write_lines(tmp_path / "train.jsonl", [{"prompt": f"q{i}", "chosen": "yes", "rejected": "no"} for i in range(2)])
    recipe, run = make(tmp_path)
    prepare_data(recipe, run, smol_tokenizer)
    with pytest.raises(DataError) as err:
        build_trainer(recipe, run)
    assert err.value.message == (
        "data.train holds preference rows; train.method sft needs chat rows (messages, sharegpt, alpaca or prompt/completion)"
    )
    assert "dpo" in err.value.hint and "cpt" in err.value.hint


def test_weight_zero_assistant_turns_get_no_loss(smol_tokenizer):
    from tunekit.train.masking import tokenize_chat

    messages = [msg("user", "Hi"), msg("assistant", "Hello.", weight=0), msg("user", "Bye"), msg("assistant", "Goodbye.", weight=1)]
    weighted = tokenize_chat(smol_tokenizer, messages)
    plain = tokenize_chat(smol_tokenizer, [{"role": m["role"], "content": m["content"]} for m in messages])

    assert weighted.input_ids == plain.input_ids
    trained = [i for i, m in zip(weighted.input_ids, weighted.assistant_masks) if m]
    assert smol_tokenizer.decode(trained) == "Goodbye.<|im_end|>"
    # Exactly the first reply's tokens are switched off; the second keeps the same mask.
    switched_off = [p - w for p, w in zip(plain.assistant_masks, weighted.assistant_masks)]
    assert smol_tokenizer.decode([i for i, d in zip(plain.input_ids, switched_off) if d]) == "Hello.<|im_end|>"
    assert min(switched_off) == 0


# --- rows held compactly -----------------------------------------------------------------------


def test_kept_rows_are_held_serialised_and_their_raw_line_is_read_back(tmp_path):
    from tunekit.data.readers import RawSpan

    lines = ['{"messages": [{"role": "user", "content": "caf\\u00e9?"}, {"role": "assistant", "content": "Oui."}]}',
             '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}']  # fmt: skip
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + lines[0].encode() + b"\r\n" + lines[1].encode())  # BOM, CRLF, no final newline
    first, second = read_input("train", path, "train.jsonl", "auto").examples
    assert isinstance(first._messages, bytes) and isinstance(first._raw, RawSpan)
    assert (first.raw, second.raw) == (lines[0], lines[1])
    messages = first.messages
    messages[0]["content"] = "changed"
    assert first.messages[0]["content"] == "caf\u00e9?"  # each read is a fresh copy...
    first.messages = messages
    assert first.messages[0]["content"] == "changed"  # ...and a change is kept once assigned back
    first.raw = "redacted"
    assert first.raw == "redacted"


def test_columnar_rows_keep_their_raw_record_compressed(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tunekit.data.readers import PackedRaw

    long = "word " * 100
    pq.write_table(pa.Table.from_pylist([{"prompt": long, "completion": "c"}, {"prompt": "short", "completion": "c"}]), tmp_path / "t.parquet")
    big, small = read_input("train", tmp_path / "t.parquet", "t.parquet", "auto").examples
    assert isinstance(big._raw, PackedRaw) and len(big._raw) < len(long) / 4
    assert json.loads(big.raw) == {"prompt": long, "completion": "c"} and json.loads(small.raw) == {"prompt": "short", "completion": "c"}


def test_reading_holds_about_the_text_of_each_row_not_a_dict_tree(tmp_path):
    import tracemalloc

    rows = [{"messages": [msg("user", f"Question {i}: " + "lorem ipsum dolor " * 20), msg("assistant", "sit amet " * 40)]} for i in range(2000)]
    write_lines(tmp_path / "train.jsonl", rows)
    text_bytes = sum(len(m["content"]) for r in rows for m in r["messages"]) / len(rows)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    examples = read_input("train", tmp_path / "train.jsonl", "train.jsonl", "auto").examples
    held = (tracemalloc.get_traced_memory()[0] - before) / len(examples)
    tracemalloc.stop()
    # Dict trees plus the raw line took about 3.5x the text; serialised rows with a file span ~1.3x.
    assert held < 1.6 * text_bytes, (held, text_bytes)
