"""LLM-as-judge against any OpenAI-compatible endpoint: rubric scores 1-5 and pairwise tuned-vs-base.

Pairwise verdicts are asked in both orders (tuned as A, then tuned as B): a judge that prefers a
position contradicts itself, and the two answers combine into a tie. The share of items where the
two orders agree is reported. Every reply is cached on disk under (judge model, prompt hash), so a
rerun pays only for what it has not asked yet; unparseable replies are retried (with a little
sampling, so the retry can differ) and, once retries are spent, counted as failures.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from tunekit.errors import TunekitError

RUBRIC_PROMPT = """You are grading an AI assistant's answer.
Rubric: {rubric}

Conversation:
{conversation}

Reference answer:
{reference}

Assistant's answer:
{answer}

Rate the assistant's answer from 1 (bad) to 5 (excellent). Reply with "Score: N" and nothing else."""

PAIRWISE_PROMPT = """You are comparing two AI assistants' answers to the same conversation.

Conversation:
{conversation}

Reference answer:
{reference}

Answer A:
{a}

Answer B:
{b}

Which answer is better? Reply with "A", "B" or "tie" and nothing else."""

_SCORE_PATTERNS = (
    re.compile(r"score\W{0,5}(?:is\W{0,2})?([1-5])(?![\d.])", re.IGNORECASE),
    re.compile(r"(?<![\d.])([1-5])\s*(?:/|out of)\s*5", re.IGNORECASE),
    re.compile(r"^\W*([1-5])\W*$"),
)
_CHOICE_PATTERNS = (
    re.compile(r"^\W*(A|B)\b"),
    re.compile(r"\b(?:answer|winner|better|choice)\W{0,3}(?:is\W{0,2})?(?:answer\W{0,2})?\(?(A|B)\b", re.IGNORECASE),
)


def parse_score(reply: str) -> int | None:
    """A rubric score 1-5 from a judge's reply, or None when the reply gives none."""
    for pattern in _SCORE_PATTERNS:
        found = pattern.search(reply.strip())
        if found:
            return int(found.group(1))
    return None


def parse_choice(reply: str) -> str | None:
    """'A', 'B' or 'tie' from a pairwise reply, or None."""
    text = reply.strip()
    if re.match(r"^\W*(tie|equal|both)\b", text, re.IGNORECASE):
        return "tie"
    for pattern in _CHOICE_PATTERNS:
        found = pattern.search(text)
        if found:
            return found.group(1).upper()
    return None


def conversation_text(messages: list[dict]) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


class Judge:
    """Asks one judge model; caches replies in `cache_path` (JSONL, one line per reply)."""

    def __init__(self, cfg, cache_path: Path):
        import openai

        self.cfg, self.cache_path = cfg, cache_path
        api_key = os.environ.get(cfg.api_key_env, "") if cfg.api_key_env else "tunekit"
        if cfg.api_key_env and not api_key:
            raise TunekitError(f"eval.judge.api_key_env: environment variable {cfg.api_key_env} is not set")
        self.client = openai.OpenAI(base_url=cfg.base_url, api_key=api_key, timeout=cfg.timeout_s, max_retries=0)
        self.cache: dict[str, str] = {}
        if cache_path.is_file():
            for line in cache_path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    entry = json.loads(line)
                    self.cache[entry["key"]] = entry["reply"]
        self.calls = self.cache_hits = 0

    def _key(self, prompt: str) -> str:
        return hashlib.sha256(f"{self.cfg.model}\n{prompt}".encode()).hexdigest()

    def _call(self, prompt: str, attempt: int) -> str:
        import openai

        self.calls += 1
        try:
            response = self.client.chat.completions.create(
                model=self.cfg.model,
                messages=[{"role": "user", "content": prompt}],
                max_tokens=self.cfg.max_tokens,
                temperature=0.0 if attempt == 0 else 0.7,
                seed=attempt,
            )
        except openai.OpenAIError as exc:
            return f"\x00error: {exc}"
        return response.choices[0].message.content or ""

    def ask(self, prompt: str, parse):
        """(parsed verdict or None, reply, attempts): cached answer first, then up to 1 + retries calls."""
        key = self._key(prompt)
        if key in self.cache:
            self.cache_hits += 1
            return parse(self.cache[key]), self.cache[key], 0
        reply = ""
        for attempt in range(self.cfg.retries + 1):
            reply = self._call(prompt, attempt)
            verdict = None if reply.startswith("\x00") else parse(reply)
            if verdict is not None:
                self.cache[key] = reply
                self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                with self.cache_path.open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps({"key": key, "model": self.cfg.model, "prompt_sha256": key, "reply": reply}) + "\n")
                return verdict, reply, attempt + 1
        return None, reply.lstrip("\x00"), self.cfg.retries + 1


def rubric_scores(judge: Judge, prompts, references, answers) -> list[dict]:
    rows = []
    for prompt, reference, answer in zip(prompts, references, answers):
        text = RUBRIC_PROMPT.format(rubric=judge.cfg.rubric, conversation=conversation_text(prompt), reference=reference, answer=answer)
        score, reply, attempts = judge.ask(text, parse_score)
        rows.append({"score": score, "reply": reply, "attempts": attempts})
    return rows


def pairwise(judge: Judge, prompts, references, tuned, base) -> list[dict]:
    """Per item: verdict in each order (mapped to tuned/base/tie), and the combined outcome."""
    rows = []
    for prompt, reference, t, b in zip(prompts, references, tuned, base):
        if t.strip() == b.strip():  # nothing to compare: a tie without asking
            rows.append({"orders": ["tie", "tie"], "winner": "tie", "agree": True, "identical": True})
            continue
        conversation = conversation_text(prompt)
        first, _, _ = judge.ask(PAIRWISE_PROMPT.format(conversation=conversation, reference=reference, a=t, b=b), parse_choice)
        second, _, _ = judge.ask(PAIRWISE_PROMPT.format(conversation=conversation, reference=reference, a=b, b=t), parse_choice)
        as_tuned_first = {"A": "tuned", "B": "base", "tie": "tie"}.get(first)
        as_tuned_second = {"A": "base", "B": "tuned", "tie": "tie"}.get(second)
        if as_tuned_first is None or as_tuned_second is None:
            rows.append({"orders": [as_tuned_first, as_tuned_second], "winner": None, "agree": None})
            continue
        agree = as_tuned_first == as_tuned_second
        rows.append({"orders": [as_tuned_first, as_tuned_second], "winner": as_tuned_first if agree else "tie", "agree": agree})
    return rows


def summarize(rubric: dict[str, list[dict]] | None, pairs: list[dict] | None) -> dict:
    """judge.* numbers: rubric means per model, win/loss/tie rates (a tie counts half a win), agreement."""
    out: dict = {"failures": 0}
    if rubric:
        for model, rows in rubric.items():
            scores = [r["score"] for r in rows if r["score"] is not None]
            out[f"{model}_rubric_mean"] = sum(scores) / len(scores) if scores else None
            out["failures"] += sum(r["score"] is None for r in rows)
    if pairs is not None:
        judged = [p for p in pairs if p["winner"] is not None]
        n = len(judged)
        wins = sum(p["winner"] == "tuned" for p in judged)
        losses = sum(p["winner"] == "base" for p in judged)
        ties = n - wins - losses
        out.update(
            win_rate=(wins + 0.5 * ties) / n if n else None,
            loss_rate=losses / n if n else None,
            tie_rate=ties / n if n else None,
            order_agreement=sum(bool(p["agree"]) for p in judged) / n if n else None,
            pairs_judged=n,
        )
        out["failures"] += len(pairs) - n
    return out
