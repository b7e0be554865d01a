"""Task metrics on generated text. Pure functions: strings in, numbers out.

Which metrics exist, and which of these functions each one uses, is the metric table's business
(tunekit.config.metrics, read through tunekit.eval.task).

JSON is parsed strictly: the whole output (surrounding whitespace aside) must be one JSON object
or array. A reply wrapped in a Markdown fence (```json ... ```) or followed by an explanation is
*not* valid JSON here, because a program consuming the model's answer would fail on it too.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

def parse_json(text: str) -> Any | None:
    """The JSON object or array in `text`, or None when `text` is not exactly one of them."""
    try:
        value = json.loads(text.strip())
    except (json.JSONDecodeError, RecursionError):
        return None
    return value if isinstance(value, (dict, list)) else None


def exact_match(output: str, reference: str) -> bool:
    return output.strip() == reference.strip()


def json_valid(output: str) -> bool:
    return parse_json(output) is not None


_SPACES = re.compile(r"\s+")
_EDGE_PUNCTUATION = ".,;:!?\"'`"


def normalize_text(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed, punctuation at the ends dropped."""
    text = _SPACES.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()
    return text.strip(_EDGE_PUNCTUATION).strip()


def normalized_match(output: str, reference: str) -> bool:
    """Same answer up to case, spacing and end punctuation; two JSON values match when equal as data."""
    got, expected = parse_json(output), parse_json(reference)
    if got is not None and expected is not None:
        return _same_value(got, expected)
    return normalize_text(output) == normalize_text(reference)


def rouge_l(output: str, reference: str) -> float:
    """ROUGE-L F1 on lower-cased word tokens (longest common subsequence)."""
    a, b = output.lower().split(), reference.lower().split()
    if not a or not b:
        return float(a == b)
    previous = [0] * (len(b) + 1)
    for word in a:
        current = [0]
        for j, other in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if word == other else max(previous[j], current[j - 1]))
        previous = current
    lcs = previous[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(a), lcs / len(b)
    return 2 * precision * recall / (precision + recall)


def schema_valid(output: str, validator) -> bool:
    """Parses as JSON and validates against the recipe's schema (a jsonschema validator)."""
    value = parse_json(output)
    return value is not None and validator.is_valid(value)


def rule_passes(output: str, rule: dict) -> bool:
    """A format rule: {regex | contains | starts_with | ends_with: text} (whitespace at the ends ignored)."""
    text = output.strip()
    if rule.get("regex") is not None:
        return re.search(rule["regex"], text) is not None
    if rule.get("contains") is not None:
        return rule["contains"] in text
    if rule.get("starts_with") is not None:
        return text.startswith(rule["starts_with"])
    return text.endswith(rule["ends_with"])


def extract_label(text: str, *, field: str | None = None, regex: str | None = None) -> str | None:
    """The class label of a reply: a field of its JSON object, or group 1 (else the match) of a regex."""
    if field is not None:
        value = parse_json(text)
        if not isinstance(value, dict) or field not in value or isinstance(value[field], (dict, list)):
            return None
        return str(value[field])
    if regex is not None:
        found = re.search(regex, text)
        if not found:
            return None
        return found.group(1) if found.groups() else found.group(0)
    return None


def _same_value(a: Any, b: Any) -> bool:
    # Compare canonical JSON so that 1 and true, or 1 and 1.0, are different answers.
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def field_matches(output: str, reference: str) -> dict[str, bool] | None:
    """Per reference field: does the parsed output hold the same value? None if the reference is no JSON object.

    Keys the output has beyond the reference's are ignored here (exact_match catches them).
    """
    expected = parse_json(reference)
    if not isinstance(expected, dict):
        return None
    got = parse_json(output)
    got = got if isinstance(got, dict) else {}
    return {key: key in got and _same_value(got[key], value) for key, value in expected.items()}


def field_counts(references: list[str]) -> dict[str, int]:
    """How many references carry each field (the denominator of its per-field accuracy)."""
    counts: dict[str, int] = {}
    for reference in references:
        expected = parse_json(reference)
        if isinstance(expected, dict):
            for key in expected:
                counts[key] = counts.get(key, 0) + 1
    return counts
