"""Example rows shared by the tests (the `chat_rows` fixture, and module-scoped fixtures that
cannot depend on a per-test fixture)."""

from __future__ import annotations

import json


def chat_examples(n: int = 10) -> list[dict]:
    """`n` valid, distinct single-turn chat examples with JSON answers (a fresh list each call)."""
    return [
        {
            "messages": [
                {"role": "user", "content": f"Ticket {i}: my order {i} has not arrived."},
                {"role": "assistant", "content": json.dumps({"category": "shipping", "priority": "high" if i % 2 else "low"})},
            ]
        }
        for i in range(n)
    ]
