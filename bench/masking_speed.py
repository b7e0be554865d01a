"""CPU cost of the assistant-only loss mask (tunekit.train.masking.tokenize_chat) per example.

Baseline, measured in the same run: rendering the chat template once and tokenizing the text with
offsets, which any masking needs; the ratio is what locating the turns adds on top. Chats are
synthetic support tickets with 1 or 3 assistant turns, under the embedded SmolLM2 template.
Appends one JSON object per workload to bench/results/masking_speed.jsonl.

    TUNEKIT_HOME=/tmp/tkhome python bench/masking_speed.py --examples 300
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from results_file import append_record  # bench/ is on sys.path when a script here runs
from tunekit.models import load_tokenizer, resolve_model
from tunekit.train.manifest import hardware
from tunekit.train.masking import tokenize_chat

RESULTS = Path(__file__).parent / "results" / "masking_speed.jsonl"


def chats(n: int, turns: int) -> list[list[dict]]:
    out = []
    for i in range(n):
        messages = [{"role": "system", "content": "Classify the ticket. Answer in JSON."}]
        for t in range(turns):
            messages.append({"role": "user", "content": f"Ticket {i}-{t}: my order {i * 7 + t} has not arrived after {t + 3} days."})
            messages.append({"role": "assistant", "content": f'{{"category": "shipping", "order": {i * 7 + t}, "priority": "high"}}'})
        out.append(messages)
    return out


def baseline(tokenizer, messages: list[dict]) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    return tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["input_ids"]


def cpu_seconds(fn, tokenizer, examples: list[list[dict]]) -> float:
    start = time.process_time()
    for messages in examples:
        fn(tokenizer, messages)
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=300)
    args = parser.parse_args()
    tokenizer = load_tokenizer(resolve_model("smollm2-135m-instruct"))
    for turns in (1, 3):
        examples = chats(args.examples, turns)
        cpu_seconds(tokenize_chat, tokenizer, examples[:20])  # warm the template cache
        masked = cpu_seconds(tokenize_chat, tokenizer, examples)
        base = cpu_seconds(baseline, tokenizer, examples)
        append_record(
            RESULTS,
            {
                "workload": f"tokenize_chat, SmolLM2 template, {turns} assistant turn(s)",
                "examples": args.examples,
                "examples_per_cpu_s": round(args.examples / masked, 1),
                "cpu_ms_per_example": round(1000 * masked / args.examples, 3),
                "baseline": "one render + tokenize with offsets, no masking",
                "baseline_cpu_ms_per_example": round(1000 * base / args.examples, 3),
                "ratio_vs_baseline": round(masked / base, 2),
                "hardware": hardware(),
                "note": "CPU time (time.process_time) of one process; the machine was shared and loaded",
                "date": time.strftime("%Y-%m-%d"),
            },
        )


if __name__ == "__main__":
    main()
