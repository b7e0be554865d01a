"""Judge reply parsing and the win/tie/agreement arithmetic (the endpoint itself: tests/e2e/test_judge.py)."""

from __future__ import annotations

import pytest

from tunekit.eval.judge import parse_choice, parse_score, summarize


@pytest.mark.parametrize(
    "reply, score",
    [("Score: 4", 4), ("score=5", 5), ("**Score:** 3", 3), ("I'd give it 2/5.", 2), ("4 out of 5", 4), (" 1 ", 1),
     ("Score: 7", None), ("The answer is fine.", None), ("Score: 3.5", None), ("12/50", None), ("", None)],
)
def test_parse_score(reply, score):
    assert parse_score(reply) == score


@pytest.mark.parametrize(
    "reply, choice",
    [("A", "A"), ("B.", "B"), ("**B**", "B"), ("Answer B is better.", "B"), ("The better answer is A", "A"),
     ("Tie", "tie"), ("equal", "tie"), ("Both are bad", "tie"), ("I cannot decide", None), ("", None)],
)
def test_parse_choice(reply, choice):
    assert parse_choice(reply) == choice


def test_summarize_counts_ties_half_and_agreement():
    rubric = {"tuned": [{"score": 5}, {"score": 3}, {"score": None}], "base": [{"score": 1}, {"score": 2}, {"score": 3}]}
    pairs = [
        {"winner": "tuned", "agree": True}, {"winner": "tuned", "agree": True}, {"winner": "base", "agree": True},
        {"winner": "tie", "agree": False}, {"winner": None, "agree": None},
    ]
    out = summarize(rubric, pairs)
    assert out["tuned_rubric_mean"] == 4.0 and out["base_rubric_mean"] == 2.0
    assert out["win_rate"] == pytest.approx((2 + 0.5) / 4)
    assert out["loss_rate"] == pytest.approx(1 / 4) and out["tie_rate"] == pytest.approx(1 / 4)
    assert out["order_agreement"] == pytest.approx(3 / 4)
    assert out["failures"] == 2 and out["pairs_judged"] == 4
