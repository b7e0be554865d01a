"""Build data/general.jsonl: general chat answered by the untuned base model, mixed into training.

Trained only on tickets, the model learns to answer *everything* with a ticket JSON object, and
the forgetting suite catches it (`tunekit eval` compares base and tuned on general questions).
Mixing in general chat whose answers come from the base model itself ("replay") teaches the
adapter that the JSON format belongs to the triage system prompt only, and keeps the base's
behaviour everywhere else: the replayed answers are exactly what the base would have said.

The prompts are built from templates here (explanations, advice, short writing, comparisons,
everyday questions, small code tasks) and none is a forgetting-suite question; `tunekit eval`'s
contamination check would flag one. Only answers the base finished within the token budget are
kept, so no training row teaches the model to stop mid-sentence.

    python examples/ticket_triage/general.py [--max-new-tokens 160] [--batch-size 16]

Greedy decoding on CPU gives the same file on the same library versions; the shipped file is the
one the example's recipe uses, so the demo never has to run this.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).parent

CONCEPTS = [
    "photosynthesis", "gravity", "a rainbow", "recycling", "the internet", "a vaccine", "inflation", "a volcano",
    "the water cycle", "electricity", "a black hole", "democracy", "an eclipse", "evaporation", "a budget",
    "the seasons", "friction", "a habit", "compound interest", "a password manager", "cloud computing", "a museum",
    "the tides", "sleep", "a thunderstorm", "an election", "a library", "composting", "a spreadsheet", "an earthquake",
    "a solar panel", "a calendar", "a map", "a microscope", "a bicycle gear", "a fever", "a dictionary", "a bridge",
    "a hurricane", "a battery", "a telescope", "a passport", "a thermometer", "a coral reef", "a glacier",
]
ACTIVITIES = [
    "learning a new language", "sleeping better", "saving money", "studying for an exam", "starting to run",
    "keeping a plant alive", "writing a good email", "cooking rice", "staying focused at work", "packing for a trip",
    "making new friends in a new city", "reading more books", "drinking more water", "organising a small party",
    "taking better photos with a phone", "preparing for a job interview", "keeping a kitchen clean", "learning to draw",
    "speaking in public", "walking a dog", "growing tomatoes", "painting a room", "learning to swim",
    "writing a short speech", "keeping a desk tidy", "planning a weekly menu", "making a presentation",
    "learning to play the guitar", "moving to a new flat", "staying warm in winter",
]
FORMS = ["a short poem", "a two-sentence story", "a haiku", "a short thank-you note", "a short birthday message", "a limerick"]
TOPICS = ["the ocean", "autumn", "a lost key", "coffee", "a rainy day", "a friendly robot", "the moon", "a train journey", "a cat", "mountains"]
PAIRS = [
    ("a lake", "a sea"), ("weather", "climate"), ("a virus", "bacteria"), ("a town", "a city"), ("tea", "coffee"),
    ("a laptop", "a tablet"), ("baking", "frying"), ("a poem", "a song"), ("a crocodile", "an alligator"),
    ("a hill", "a mountain"), ("speed", "velocity"), ("a noun", "a verb"), ("renting", "buying a home"),
    ("a meteor", "a comet"), ("a frog", "a toad"),
]
EVERYDAY = [
    "How are you today?", "Can you recommend a good hobby for a rainy weekend?", "What should I cook for dinner tonight?",
    "Tell me a fun fact about octopuses.", "Tell me a fun fact about honeybees.", "Tell me a fun fact about penguins.",
    "Why do leaves change colour in autumn?", "Why do we yawn?", "Why is the ocean salty?", "How do airplanes stay in the air?",
    "How does a refrigerator keep food cold?", "What makes a good teacher?", "What are some healthy breakfast ideas?",
    "How can I be more patient?", "What is a good name for a goldfish?", "Suggest three names for a bakery.",
    "What can I do if I feel bored?", "How do I politely decline an invitation?", "Give me a riddle.", "Tell me a short joke.",
    "What are the benefits of walking every day?", "How do I make a cup of tea?", "What is a good gift for a grandmother?",
    "How long should I boil an egg?", "What should I bring to a picnic?", "How can I remember names better?",
    "Describe a sunset in one sentence.", "What is a balanced diet?", "Why is exercise important?", "How do I start a journal?",
    "Tell me a fun fact about elephants.", "Tell me a fun fact about the moon.", "Why do cats purr?", "Why do birds migrate?",
    "How do I clean a pair of white shoes?", "What is a good book for a long flight?", "How can I make my room feel cosier?",
    "What are some games to play at a birthday party?", "How do I write a good shopping list?", "What is a good morning routine?",
    "Describe a forest in one sentence.", "Describe a busy market in two sentences.", "Why do we need sleep?",
    "How do I greet someone politely in a letter?", "Suggest a name for a hiking club.", "What can I do with leftover bread?",
]
CODE_TASKS = [
    "checks whether a word is a palindrome", "converts kilometres to miles", "returns the last element of a list",
    "counts the words in a sentence", "returns the smallest number in a list", "turns a string into upper case",
    "checks whether a number is divisible by three", "joins a list of words with spaces", "returns a list without duplicates",
    "computes the area of a rectangle", "returns the number of seconds in a given number of minutes", "repeats a string n times",
]
REWRITE = [
    "the meeting is moved to Thursday afternoon", "our shop opens at nine and closes at six",
    "please bring your own water bottle to the hike", "the library will be closed for repairs next week",
    "I finished the report and sent it to the team", "the train was late because of the snow",
]


def prompts() -> list[str]:
    out = [f"Explain {c} in simple words." for c in CONCEPTS]
    out += [f"Give me three tips for {a}." for a in ACTIVITIES]
    out += [f"Write {form} about {topic}." for i, form in enumerate(FORMS) for topic in TOPICS[i : i + 5]]
    out += [f"What is the difference between {a} and {b}?" for a, b in PAIRS]
    out += EVERYDAY
    out += [f"Write a Python function that {task}." for task in CODE_TASKS]
    out += [f"Rewrite this sentence to sound more formal: {s}." for s in REWRITE]
    out += [f"Write one friendly sentence telling a colleague that {s}." for s in REWRITE]
    return list(dict.fromkeys(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=HERE / "data" / "general.jsonl")
    args = parser.parse_args()

    from tunekit.eval.generation import Decoding, generate
    from tunekit.models import load_model, load_tokenizer, resolve_model

    path = resolve_model("smollm2-135m-instruct")
    model, tokenizer = load_model(path).eval(), load_tokenizer(path)
    questions = prompts()
    chats = [[{"role": "user", "content": q}] for q in questions]
    result = generate(model, tokenizer, chats, Decoding(args.max_new_tokens, args.batch_size), label="answering")
    kept = 0
    with args.out.open("w", encoding="utf-8") as fh:
        for question, answer, length in zip(questions, result.outputs, result.lengths):
            if length >= args.max_new_tokens or not answer.strip():
                continue  # cut off by the budget: not a finished answer
            row = {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer.strip()}]}
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            kept += 1
    print(f"wrote {kept} of {len(questions)} answered prompts to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
