"""Contamination: test examples found in the training data, exactly or nearly (MinHash), never false hits."""

from __future__ import annotations

from tunekit.eval.contamination import find_contamination


def chat(user: str, answer: str, system: str | None = None) -> list[dict]:
    head = [{"role": "system", "content": system}] if system else []
    return [*head, {"role": "user", "content": user}, {"role": "assistant", "content": answer}]


LONG = ("My parcel with order number 5521 never arrived although the tracking page said it was delivered to my front door "
        "on Monday afternoon, and nobody in the building has seen it since then")


def test_exact_near_and_clean_examples():
    train = [
        ("train", 1, chat("Where is my refund for the blue kettle?", '{"category": "refund"}', system="sys A")),
        ("train", 2, chat(LONG, '{"category": "shipping", "priority": "high"}')),
        ("val", 1, chat("I want to close my account today.", '{"category": "account"}')),
    ]
    tests = [
        # Same user/assistant contents, another system prompt and extra spaces at the ends: exact.
        chat("  Where is my refund for the blue kettle?", '{"category": "refund"} ', system="sys B"),
        # One word changed in a long ticket: near duplicate.
        chat(LONG.replace("Monday", "Tuesday"), '{"category": "shipping", "priority": "high"}'),
        chat("The app crashes when I open settings.", '{"category": "technical"}'),
        chat("I want to close my account today.", '{"category": "account"}'),
    ]
    flags = find_contamination(tests, train, near_threshold=0.8)
    assert flags[0] == {"kind": "exact", "split": "train", "line": 1, "similarity": 1.0}
    assert flags[1]["kind"] == "near" and flags[1]["line"] == 2 and 0.8 <= flags[1]["similarity"] < 1.0
    assert flags[2] is None
    assert flags[3] == {"kind": "exact", "split": "val", "line": 1, "similarity": 1.0}
    # A stricter threshold keeps the near copy out.
    assert find_contamination(tests[1:2], train, near_threshold=0.99) == [None]
    assert find_contamination(tests, [], near_threshold=0.8) == [None] * 4
