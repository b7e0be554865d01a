"""`tunekit data preview` through the real CLI: one example, trained tokens marked ⟦ ⟧ off a terminal."""

from __future__ import annotations

import json

import pytest

from tests.e2e.cli_helpers import tunekit
from tunekit.runs import write_jsonl

SYSTEM = "Answer in JSON."
ROWS = [
    {"messages": [{"role": "user", "content": f"Ticket {i}: where is order {i}?"}, {"role": "assistant", "content": f'{{"order": {i}}}'}]}
    for i in range(6)
] + [
    {
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello.", "weight": 0},
            {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Goodbye."},
        ]
    }
]


@pytest.fixture
def recipe(tmp_path, tiny_model_dir):
    write_jsonl(tmp_path / "train.jsonl", ROWS)
    path = tmp_path / "recipe.yaml"
    path.write_text(
        f"name: preview\nbase_model: {tiny_model_dir}\n"
        f"data: {{train: train.jsonl, max_length: 64, over_length: truncate, system_prompt: {SYSTEM}, val_fraction: 0.0}}\n"
    )
    return path


def _n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_help():
    result = tunekit("data", "preview", "--help")
    assert result.returncode == 0 and "--index" in result.stdout and "--split" in result.stdout


def test_raw_example_shows_exactly_the_trained_reply(recipe, smol_tokenizer):
    result = tunekit("data", "preview", str(recipe), "--index", "6")
    assert result.returncode == 0, result.stderr[-2000:]
    text = (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n"  # weight 0: context only
        "<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"
    )
    body = text + "⟦Goodbye.<|im_end|>⟧\n"
    assert f"\n{body}\n" in result.stdout
    assert f"train.jsonl line 7 (raw data" in result.stdout
    n_tokens = _n_tokens(smol_tokenizer, text + "Goodbye.<|im_end|>\n")
    n_trained = _n_tokens(smol_tokenizer, "Goodbye.<|im_end|>")
    assert result.stdout.rstrip().endswith(f"tokens: {n_tokens}, trained tokens: {n_trained}, truncated: no")


def test_prepared_split_and_truncation(recipe, smol_tokenizer):
    assert tunekit("data", "prepare", str(recipe)).returncode == 0
    prepared = [json.loads(line) for line in (recipe.parent / "runs" / "preview" / "data" / "train.jsonl").read_text().splitlines()]
    index = next(i for i, row in enumerate(prepared) if len(row["messages"]) == 3)  # system, user, reply
    row = prepared[index]
    reply = row["messages"][-1]["content"]
    result = tunekit("data", "preview", str(recipe), "--index", str(index), "--split", "train")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"train.jsonl example {index} (from train.jsonl line {row['meta']['line']})" in result.stdout
    user = row["messages"][1]["content"]
    assert f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n⟦{reply}<|im_end|>⟧\n" in result.stdout
    assert result.stdout.count("⟦") == 2  # the legend line and the one reply

    # Cut right after the reply's first token: one trained token is left, the rest is shown as cut.
    prompt = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    keep = _n_tokens(smol_tokenizer, prompt) + 1
    full = _n_tokens(smol_tokenizer, prompt + reply + "<|im_end|>\n")
    cut = tunekit("data", "preview", str(recipe), "--index", str(index), "--set", f"data.max_length={keep}")
    assert cut.returncode == 0, cut.stderr[-2000:]
    first = smol_tokenizer.decode(smol_tokenizer(reply, add_special_tokens=False)["input_ids"][:1])
    assert f"<|im_start|>assistant\n⟦{first}⟧\n\n--- cut by data.max_length={keep} (not seen in training) ---\n" in cut.stdout
    assert cut.stdout.rstrip().endswith(
        f"tokens: {keep}, trained tokens: 1, truncated: yes: {full - keep} token(s) past data.max_length={keep} are cut"
    )


def test_mistakes_are_one_clear_line(recipe):
    out_of_range = tunekit("data", "preview", str(recipe), "--index", "7")
    assert out_of_range.returncode == 1 and "Traceback" not in out_of_range.stderr
    assert "--index 7 is out of range: data.train" in out_of_range.stderr and "has 7 example(s) (0 to 6)" in out_of_range.stderr
    no_split = tunekit("data", "preview", str(recipe), "--split", "test")
    assert no_split.returncode == 1 and "no test split to preview" in no_split.stderr
    bad_split = tunekit("data", "preview", str(recipe), "--split", "dev")
    assert bad_split.returncode == 1 and "--split 'dev' is not a split" in bad_split.stderr
