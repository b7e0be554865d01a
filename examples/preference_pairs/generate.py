"""Generate a small preference dataset for DPO (train.jsonl in prompt/chosen/rejected form).

Each prompt is a customer question; the chosen answer is short, polite and on topic, the
rejected one is curt and unhelpful. The wording of every part comes from small pools combined
at random, so pairs differ while the preference stays the same: answer helpfully, not rudely.

Deterministic: the same seed writes byte-identical files.

    python examples/preference_pairs/generate.py [--seed 7] [--pairs 48]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

TOPICS = [
    ("reset my password", "Open Settings, choose Security and press Reset password; a link arrives by email."),
    ("change my delivery address", "Go to Orders, pick the order and press Edit address before it ships."),
    ("cancel my subscription", "Open Account, choose Subscription and press Cancel; it stays active until the period ends."),
    ("download my invoice", "Open Orders, pick the order and press Download invoice to get the PDF."),
    ("update my card details", "Go to Billing, press Payment methods and add the new card."),
    ("track my parcel", "Open Orders and press Track; the carrier's link shows where the parcel is."),
    ("return a damaged item", "Open Orders, choose the item and press Return; we send a free label."),
    ("turn on two-factor login", "Open Settings, choose Security and switch on Two-factor login."),
]
OPENERS = ["How do I", "Can you tell me how to", "What is the way to", "Please explain how to", "I need to"]
POLITE = ["Sure!", "Happy to help.", "Of course.", "Good question."]
RUDE = [
    "Figure it out yourself.",
    "Not my problem.",
    "Read the manual.",
    "Why would I know that?",
    "Stop asking me.",
]


def make_pairs(seed: int, pairs: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for index in range(pairs):
        task, answer = TOPICS[index % len(TOPICS)]
        question = f"{rng.choice(OPENERS)} {task}?"
        rows.append({"prompt": question, "chosen": f"{rng.choice(POLITE)} {answer}", "rejected": rng.choice(RUDE)})
    rng.shuffle(rows)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--pairs", type=int, default=48)
    args = parser.parse_args()
    out = Path(__file__).resolve().parent / "data"
    out.mkdir(exist_ok=True)
    rows = make_pairs(args.seed, args.pairs)
    with (out / "train.jsonl").open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} pairs to {out / 'train.jsonl'}")


if __name__ == "__main__":
    main()
