"""Forgetting suite: scorers on crafted replies, the shipped suite's format, selection and drop verdicts."""

from __future__ import annotations

import json

import pytest

from tunekit.errors import DataError
from tunekit.config import suite_categories
from tunekit.eval import forgetting, scorers


@pytest.mark.parametrize(
    "output, check, right",
    [
        ("12", {"type": "number", "answer": 12}, True),
        ("7 + 5 = 12.", {"type": "number", "answer": 12}, True),
        ("The answer is 1,200", {"type": "number", "answer": 1200}, True),
        ("7", {"type": "number", "answer": 12}, False),
        ("no idea", {"type": "number", "answer": 12}, False),
        ("The capital is Paris.", {"type": "contains", "any": ["Paris"]}, True),
        ("Comparison of sparisons", {"type": "contains", "any": ["Paris"]}, False),  # whole words only
        ("Carbon dioxide, CO2", {"type": "contains", "any": ["carbon dioxide"]}, True),
        ("Water boils at 100 degrees.", {"type": "contains", "any": ["100"]}, True),  # numbers are words too
        ("It has 1000 parts.", {"type": "contains", "any": ["100"]}, False),
        ("Plants take in CO2.", {"type": "contains", "any": ["carbon dioxide", "CO2"]}, True),
        ("Blue.", {"type": "one_word", "any": ["blue"]}, True),
        ("The sky is blue.", {"type": "one_word", "any": ["blue"]}, False),
        ("Bonjour, comment allez-vous ? Je suis très content.", {"type": "french"}, True),
        ("Hello, how are you? I am fine.", {"type": "french"}, False),
        ("I'm sorry, but I can't help with that.", {"type": "refusal"}, True),
        ("Sure! Step 1: buy", {"type": "refusal"}, False),
        ("PARIS IS THE CAPITAL.", {"type": "uppercase"}, True),
        ("Paris", {"type": "uppercase"}, False),
        ("Yes, it is.", {"type": "starts_with", "prefix": "yes"}, True),
        ("Paris is it", {"type": "max_words", "max": 5, "any": ["Paris"]}, True),
        ("It is the city of Paris in France", {"type": "max_words", "max": 5, "any": ["Paris"]}, False),
        ("```python\ndef add(a, b):\n    return a + b\n```", {"type": "python", "function": "add", "args": 2, "uses": ["Return", "Add"]}, True),
        ("def add(a, b):\n    return a - b", {"type": "python", "function": "add", "args": 2, "uses": ["Return", "Add"]}, False),
        ("def add(a):\n    return a + 1", {"type": "python", "function": "add", "args": 2}, False),
        ("Here is the function add: it adds.", {"type": "python", "function": "add"}, False),
    ],
)
def test_scorers(output, check, right):
    assert scorers.score_item(output, check) is right


def test_shipped_suite_is_valid_and_covers_every_category():
    items = forgetting.load_suite("general")
    assert len(items) >= 700
    counts = {}
    for item in items:
        counts[item["category"]] = counts.get(item["category"], 0) + 1
    assert set(counts) == {"arithmetic", "reasoning", "knowledge", "instructions", "refusal", "code"}
    assert min(counts.values()) >= 60
    # Every item's own answer would score right: the scorers and the answers agree.
    for item in items:
        check = item["check"]
        if check["type"] == "number":
            assert scorers.score_item(f"The answer is {check['answer']}.", check)
        elif check["type"] == "contains":
            assert scorers.score_item(f"It is {check['any'][0]}.", check)
    assert len({item["messages"][0]["content"] for item in items}) == len(items)
    assert len({item["id"] for item in items}) == len(items)
    assert suite_categories(["general"]) == list(counts)


def test_shipped_suite_file_is_what_the_builder_writes():
    from tunekit.eval.suites import build_general

    lines = [json.dumps(item, ensure_ascii=False) for item in build_general.candidates()]
    assert forgetting.suite_path("general").read_text(encoding="utf-8").splitlines() == lines


def test_user_suite_errors_name_the_line(tmp_path):
    path = tmp_path / "mine.jsonl"
    good = {"category": "c", "messages": [{"role": "user", "content": "2+2?"}], "check": {"type": "number", "answer": 4}}
    path.write_text("\n".join([json.dumps(good), "{bad", json.dumps({**good, "check": {"type": "nope"}}),
                               json.dumps({**good, "check": {"type": "contains"}})]) + "\n")
    with pytest.raises(DataError) as err:
        forgetting.load_suite(str(path))
    assert "3 bad suite item(s)" in err.value.message
    assert "line 2: not JSON" in err.value.message and "line 3: check.type must be one of" in err.value.message
    assert "line 4: check of type contains needs any" in err.value.message
    path.write_text(json.dumps(good) + "\n")
    assert forgetting.load_suite(str(path))[0]["id"] == "mine-1"
    with pytest.raises(DataError, match="not found"):
        forgetting.load_suite("no-such-suite")


def test_select_is_round_robin_over_categories_and_keeps_order():
    items = [{"category": c, "id": f"{c}{i}"} for c, n in (("a", 5), ("b", 1), ("c", 3)) for i in range(n)]
    chosen = forgetting.select(items, 5)
    assert [i["id"] for i in chosen] == ["a0", "a1", "b0", "c0", "c1"]
    assert forgetting.select(items, None) == items and forgetting.select(items, 100) == items


def test_summarize_drop_and_verdicts():
    items = [{"category": "x"}] * 50 + [{"category": "y"}] * 50
    base = [True] * 50 + [True] * 50
    tuned = [True] * 49 + [False] + [True] * 40 + [False] * 10  # x: drop 0.02 (warn), y: drop 0.2 (fail)
    summary = forgetting.summarize(items, {"base": base, "tuned": tuned}, warn=0.02, fail=0.05)
    assert summary["categories"]["x"] == {"n": 50, "base": 1.0, "tuned": 0.98, "drop": pytest.approx(0.02), "verdict": "warn"}
    assert summary["categories"]["y"]["verdict"] == "fail" and summary["categories"]["y"]["drop"] == pytest.approx(0.2)
    assert summary["overall"]["drop"] == pytest.approx(0.11) and summary["overall"]["verdict"] == "fail"
    assert forgetting.verdict_of(0.0199, 0.02, 0.05) == "ok" and forgetting.verdict_of(0.05, 0.02, 0.05) == "warn"
    assert forgetting.verdict_of(-0.1, 0.02, 0.05) == "ok"


def test_example_replay_data_shares_no_question_with_the_suite_and_fills_the_mix():
    """examples/ticket_triage/data/general.jsonl is trained on (train.mix): a suite question in it
    would be left out of the forgetting score, and too few rows would stop training."""
    from pathlib import Path

    from tunekit.config import load_recipe
    from tunekit.eval.contamination import find_contamination, user_turns
    from tunekit.train.mixing import mixed_count

    example = Path(__file__).resolve().parents[2] / "examples" / "ticket_triage"
    recipe = load_recipe(example / "recipe.yaml")
    rows = [json.loads(line) for line in recipe.train.mix.file.read_text(encoding="utf-8").splitlines()]
    assert all([m["role"] for m in row["messages"]] == ["user", "assistant"] and row["messages"][1]["content"] for row in rows)
    train_rows = sum(1 for _ in (example / "data" / "train.jsonl").open()) * (1 - recipe.data.val_fraction)
    assert len(rows) >= mixed_count(int(train_rows), recipe.train.mix.ratio)
    questions = [user_turns(item["messages"]) for item in forgetting.load_suite("general")]
    train = [("mix", n, user_turns(row["messages"])) for n, row in enumerate(rows, start=1)]
    assert find_contamination(questions, train, near_threshold=recipe.eval.contamination.near_threshold) == [None] * len(questions)
