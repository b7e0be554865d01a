"""Generate the support-ticket triage dataset (train.jsonl and test.jsonl in chat `messages` format).

Each ticket is assembled from template pieces: a topic sentence and a detail sentence that decide
the category, an urgency cue that decides the priority, plus greetings, sign-offs, product names
and customer names for variety. Every pool is split into a train-only and a test-only part, so the
test tickets are worded differently from anything seen in training: a model has to learn the
mapping (topic -> category, urgency -> priority), not memorise sentences.

Deterministic: the same seed writes byte-identical files.

    python examples/ticket_triage/generate.py [--seed 1234] [--train 400] [--test 100]
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
from pathlib import Path

# Kept short: it is part of every training example, and CPU training time grows with tokens.
SYSTEM_PROMPT = "You triage customer support tickets. Reply with only a JSON object with keys category and priority."
CATEGORIES = ["billing", "shipping", "technical", "account", "refund"]
PRIORITIES = ["low", "medium", "high", "urgent"]

# Topic sentences decide the category. {product}, {order}, {amount}, {date} are filled in later.
TOPICS = {
    "billing": {
        "train": [
            "I was charged twice for my {product} subscription this month.",
            "My latest invoice shows {amount} but my plan should cost less.",
            "The card on file was billed {amount} on {date} and I don't know what for.",
            "Can you explain the extra fee on my last bill?",
            "I upgraded my plan and now I'm being billed for both the old and the new one.",
            "Your billing page says my payment failed, but my bank shows it went through.",
            "I need a VAT invoice for order {order} and the download link gives me a blank PDF.",
        ],
        "test": [
            "There are two identical payments of {amount} on my statement from you.",
            "Why did the monthly price go up without any notice?",
            "The receipt for order {order} lists the wrong company name and tax number.",
        ],
    },
    "shipping": {
        "train": [
            "My order {order} still hasn't arrived and it was due on {date}.",
            "The tracking number for my {product} hasn't updated in a week.",
            "The parcel was delivered to the wrong address.",
            "My package arrived with the box crushed and the {product} inside is dented.",
            "I paid for express delivery but order {order} is coming by standard post.",
            "The courier says it was delivered on {date}, but nothing was left at my door.",
            "Only half of order {order} arrived; the {product} is missing from the box.",
        ],
        "test": [
            "Where is my {product}? The estimated delivery date passed days ago.",
            "The delivery driver left my shipment with a neighbour I don't know.",
            "Order {order} has been stuck at the customs depot since {date}.",
        ],
    },
    "technical": {
        "train": [
            "The {product} app crashes as soon as I open the settings screen.",
            "Since the last update my {product} won't connect to Wi-Fi.",
            "I keep getting error 503 when I try to sync my {product}.",
            "The firmware update for my {product} fails at 80 percent.",
            "Exports from the dashboard come out as empty CSV files.",
            "The {product} keeps disconnecting from Bluetooth every few minutes.",
            "Your API returns a timeout for every request since {date}.",
        ],
        "test": [
            "My {product} freezes on the loading screen and then restarts by itself.",
            "The web editor shows a blank white page in every browser I try.",
            "Notifications from the {product} stopped working after I installed the new version.",
        ],
    },
    "account": {
        "train": [
            "I can't log in to my account; the password reset email never arrives.",
            "Please change the email address on my account to my new work address.",
            "My account was locked after too many login attempts.",
            "I want to delete my account and all the data you hold about me.",
            "Two-factor authentication codes from my phone are always rejected.",
            "Someone else seems to have logged into my profile from another country.",
            "How do I add a second user to our company account?",
        ],
        "test": [
            "I forgot my username and the recovery form says my phone number is unknown.",
            "Please merge my two profiles, I registered twice by mistake.",
            "The sign-in page tells me my account is suspended but gives no reason.",
        ],
    },
    "refund": {
        "train": [
            "I returned the {product} on {date} and still haven't received my money back.",
            "I'd like a refund for order {order}; the {product} is not what I expected.",
            "You approved my refund two weeks ago but the {amount} never reached my card.",
            "I cancelled order {order} before it shipped and want the full amount back.",
            "The {product} stopped working after two days and I want my money returned.",
            "Your refund only covered part of the {amount} I paid.",
            "I sent the {product} back within the 30-day window; when will I be reimbursed?",
        ],
        "test": [
            "Please reimburse me for the {product}, it broke the first time I used it.",
            "The return label was accepted on {date} but my {amount} has not been credited.",
            "I was promised my money back for order {order} and I'm still waiting.",
        ],
    },
}

# Detail sentences add context consistent with the category (optional, one per ticket at most).
DETAILS = {
    "billing": {
        "train": ["My account number is on the invoice.", "I have screenshots of both charges.", "This happened last month too."],
        "test": ["I checked my bank app twice."],
    },
    "shipping": {
        "train": ["The tracking page just says in transit.", "I was home all day.", "It was meant to be a gift."],
        "test": ["The carrier hotline keeps hanging up on me."],
    },
    "technical": {
        "train": ["I already tried restarting it.", "Reinstalling did not help.", "It worked fine until yesterday."],
        "test": ["Clearing the cache changed nothing."],
    },
    "account": {
        "train": ["I still have access to my old email.", "My username is the same as my email.", "I checked the spam folder."],
        "test": ["I can verify my identity if needed."],
    },
    "refund": {
        "train": ["I still have the original receipt.", "The return was confirmed by email.", "I paid by credit card."],
        "test": ["The tracking shows your warehouse received it."],
    },
}

# Urgency cues decide the priority.
CUES = {
    "low": {
        "train": [
            "No rush on this, whenever you get a chance.",
            "Not a big deal, just wanted to flag it.",
            "This isn't urgent at all.",
            "Low priority on my side, take your time.",
            "Happy to wait until next week for an answer.",
        ],
        "test": ["Whenever someone has a spare moment is fine.", "It's not time sensitive in any way."],
    },
    "medium": {
        "train": [
            "Could you look into it this week?",
            "I'd appreciate an answer in the next few days.",
            "It's a bit annoying, so a fix soon would be nice.",
            "Please get back to me when you've checked.",
            "I'd like this sorted out before the end of the month.",
        ],
        "test": ["A reply within a couple of days would be good.", "Please check and let me know by Friday."],
    },
    "high": {
        "train": [
            "This is really frustrating and I need it sorted today.",
            "Please fix this as soon as possible, it's affecting my work.",
            "I've already written twice with no answer.",
            "I need this resolved before tomorrow morning.",
            "I'm very unhappy and expect a quick response.",
        ],
        "test": ["This is the third time I'm asking, please prioritise it.", "I can't do my job properly until this is dealt with."],
    },
    "urgent": {
        "train": [
            "Our whole team is blocked right now.",
            "This is costing us money every hour, we need help ASAP.",
            "If this isn't fixed today I'll be contacting my lawyer.",
            "Our entire business is at a standstill, please escalate immediately.",
            "URGENT: all of our customers are affected.",
        ],
        "test": [
            "Nobody in our office can work until this is fixed.",
            "I will take legal action unless this is resolved immediately.",
        ],
    },
}

GREETINGS = {"train": ["Hi,", "Hello support,", "Hey there,", "Good morning,", ""], "test": ["Dear support team,", "Greetings,", ""]}
SIGNOFFS = {"train": ["Thanks, {name}", "Regards, {name}", "Cheers, {name}", ""], "test": ["Best wishes, {name}", "Thank you, {name}", ""]}
NAMES = {"train": ["Anna", "Ben", "Carla", "David", "Emma", "Farid", "Grace", "Hiro"], "test": ["Ines", "Jonas", "Keiko", "Luca"]}
PRODUCTS = {
    "train": ["AeroBlend blender", "Lumo desk lamp", "TrailPro backpack", "SoundWave earbuds", "FitTrack watch", "HomeHub router"],
    "test": ["Nimbus kettle", "Vertex camera", "PixelPad tablet"],
}
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October"]


def _fill(template: str, rng: random.Random, part: str) -> str:
    return template.format(
        product=rng.choice(PRODUCTS[part]),
        order=f"#{rng.randint(10000, 99999)}",
        amount=f"${rng.randint(5, 400)}.{rng.randint(0, 99):02d}",
        date=f"{rng.choice(MONTHS)} {rng.randint(1, 28)}",
        name=rng.choice(NAMES[part]),
    )


def make_ticket(category: str, priority: str, rng: random.Random, part: str) -> str:
    """One ticket text for a (category, priority) pair, built only from the `part` pools."""
    topic = _fill(rng.choice(TOPICS[category][part]), rng, part)
    cue = rng.choice(CUES[priority][part])
    body = [topic]
    if rng.random() < 0.6:
        body.append(rng.choice(DETAILS[category][part]))
    # The urgency cue sits either before or after the problem, so position is not the signal.
    body.insert(0 if rng.random() < 0.3 else len(body), cue)
    greeting = rng.choice(GREETINGS[part])
    signoff = _fill(rng.choice(SIGNOFFS[part]), rng, part)
    # Laid out like an email: greeting, body and sign-off on their own lines.
    return "\n".join(piece for piece in [greeting, " ".join(body), signoff] if piece)


def answer(category: str, priority: str) -> str:
    return json.dumps({"category": category, "priority": priority}, separators=(", ", ": "))


def make_split(n: int, rng: random.Random, part: str, avoid: set[str]) -> list[dict]:
    """n examples with every (category, priority) pair equally often (as far as n allows), shuffled."""
    pairs = list(itertools.product(CATEGORIES, PRIORITIES))
    labels = [pairs[i % len(pairs)] for i in range(n)]
    rng.shuffle(labels)
    rows, seen = [], set(avoid)
    for category, priority in labels:
        for _ in range(1000):  # redraw until the ticket text is new
            ticket = make_ticket(category, priority, rng, part)
            if ticket not in seen:
                break
        else:
            raise RuntimeError(f"template pools too small for {n} distinct {part} tickets")
        seen.add(ticket)
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": ticket},
                    {"role": "assistant", "content": answer(category, priority)},
                ]
            }
        )
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1234, help="Random seed (same seed, same files).")
    parser.add_argument("--train", type=int, default=400, help="Number of training tickets.")
    parser.add_argument("--test", type=int, default=100, help="Number of test tickets.")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data", help="Output directory.")
    args = parser.parse_args()

    rng = random.Random(args.seed)
    train = make_split(args.train, rng, "train", avoid=set())
    test = make_split(args.test, rng, "test", avoid={row["messages"][1]["content"] for row in train})
    write_jsonl(args.out / "train.jsonl", train)
    write_jsonl(args.out / "test.jsonl", test)

    for name, rows in (("train", train), ("test", test)):
        labels = [json.loads(row["messages"][-1]["content"]) for row in rows]
        words = [len(row["messages"][1]["content"].split()) for row in rows]
        by_category = {c: sum(label["category"] == c for label in labels) for c in CATEGORIES}
        by_priority = {p: sum(label["priority"] == p for label in labels) for p in PRIORITIES}
        print(f"{name}: {len(rows)} rows -> {args.out / (name + '.jsonl')}")
        print(f"  category: {by_category}")
        print(f"  priority: {by_priority}")
        print(f"  words per ticket: min {min(words)}, max {max(words)}, mean {sum(words) / len(words):.1f}")


if __name__ == "__main__":
    main()
