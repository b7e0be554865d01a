"""LLM-as-judge against any OpenAI-compatible endpoint: rubric scores 1-5 and pairwise tuned-vs-base.

Pairwise verdicts are asked in both orders (tuned as A, then tuned as B): a judge that prefers a
position contradicts itself, and the two answers combine into a tie. The share of items where the
two orders agree is reported. Every reply is cached on disk under (judge model, prompt hash), so a
rerun pays only for what it has not asked yet; unparseable replies are retried (with a little
sampling, so the retry can differ) and, once retries are spent, counted as failures. A reply the
endpoint cut at `eval.judge.max_tokens` (finish_reason "length") is counted, with the budget it was
cut at (kept in the cache with the reply): a verdict cut before its score reads as a failure, and
the count says why.
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
        self.cache: dict[str, tuple[str, int | None]] = {}  # key -> (reply, the max_tokens it was cut at)
        if cache_path.is_file():
            for line in cache_path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    entry = json.loads(line)
                    # Lines written before the finish reason was kept count as not cut.
                    cut = entry.get("max_tokens") if entry.get("finish_reason") == "length" else None
                    self.cache[entry["key"]] = (entry["reply"], cut)
        self.calls = self.cache_hits = 0

    def _key(self, prompt: str) -> str:
        return hashlib.sha256(f"{self.cfg.model}\n{prompt}".encode()).hexdigest()

    def _call(self, prompt: str, attempt: int) -> tuple[str, str | None]:
        """(reply, finish_reason); an error's reply starts with NUL."""
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
            return f"\x00error: {exc}", None
        choice = response.choices[0]
        return choice.message.content or "", choice.finish_reason

    def ask(self, prompt: str, parse):
        """(parsed verdict or None, reply, attempts, cut_at): cached answer first, then up to 1 + retries
        calls; cut_at is the max_tokens the reply was cut at, None when it ended by itself."""
        key = self._key(prompt)
        if key in self.cache:
            self.cache_hits += 1
            reply, cut_at = self.cache[key]
            return parse(reply), reply, 0, cut_at
        reply, finish = "", None
        for attempt in range(self.cfg.retries + 1):
            reply, finish = self._call(prompt, attempt)
            verdict = None if reply.startswith("\x00") else parse(reply)
            if verdict is not None:
                break
        cut_at = self.cfg.max_tokens if finish == "length" else None
        if verdict is None:
            return None, reply.lstrip("\x00"), self.cfg.retries + 1, cut_at
        self.cache[key] = (reply, cut_at)
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        entry = {"key": key, "model": self.cfg.model, "prompt_sha256": key, "reply": reply,
                 "finish_reason": finish, "max_tokens": self.cfg.max_tokens}
        with self.cache_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")
        return verdict, reply, attempt + 1, cut_at


def rubric_scores(judge: Judge, prompts, references, answers) -> list[dict]:
    rows = []
    for prompt, reference, answer in zip(prompts, references, answers):
        text = RUBRIC_PROMPT.format(rubric=judge.cfg.rubric, conversation=conversation_text(prompt), reference=reference, answer=answer)
        score, reply, attempts, cut_at = judge.ask(text, parse_score)
        rows.append({"score": score, "reply": reply, "attempts": attempts, "cut_at_max_tokens": cut_at})
    return rows


def pairwise(judge: Judge, prompts, references, tuned, base) -> list[dict]:
    """Per item: verdict in each order (mapped to tuned/base/tie), the combined outcome, and per order the
    max_tokens its reply was cut at (None: not cut)."""
    rows = []
    for prompt, reference, t, b in zip(prompts, references, tuned, base):
        if t.strip() == b.strip():  # nothing to compare: a tie without asking
            rows.append({"orders": ["tie", "tie"], "winner": "tie", "agree": True, "identical": True, "cut_at_max_tokens": []})
            continue
        conversation = conversation_text(prompt)
        first, _, _, first_cut = judge.ask(PAIRWISE_PROMPT.format(conversation=conversation, reference=reference, a=t, b=b), parse_choice)
        second, _, _, second_cut = judge.ask(PAIRWISE_PROMPT.format(conversation=conversation, reference=reference, a=b, b=t), parse_choice)
        as_tuned_first = {"A": "tuned", "B": "base", "tie": "tie"}.get(first)
        as_tuned_second = {"A": "base", "B": "tuned", "tie": "tie"}.get(second)
        row = {"orders": [as_tuned_first, as_tuned_second], "cut_at_max_tokens": [first_cut, second_cut]}
        if as_tuned_first is None or as_tuned_second is None:
            rows.append({**row, "winner": None, "agree": None})
            continue
        agree = as_tuned_first == as_tuned_second
        rows.append({**row, "winner": as_tuned_first if agree else "tie", "agree": agree})
    return rows


def summarize(rubric: dict[str, list[dict]] | None, pairs: list[dict] | None) -> dict:
    """judge.* numbers: rubric means per model, win/loss/tie rates (a tie counts half a win), agreement,
    and `truncated`: n of the judge's replies (of) that were cut, and the max_tokens they were cut at."""
    out: dict = {"failures": 0}
    cuts: list[int | None] = []  # one per reply the verdicts came from
    if rubric:
        for model, rows in rubric.items():
            cuts += [r.get("cut_at_max_tokens") for r in rows]
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
        cuts += [cut for p in pairs for cut in p.get("cut_at_max_tokens", [])]
    cut_at = [c for c in cuts if c is not None]
    out["truncated"] = {"n": len(cut_at), "of": len(cuts), "max_tokens": sorted(set(cut_at))}
    return out
