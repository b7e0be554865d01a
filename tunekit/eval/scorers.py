"""Automatic scorers for general-capability items (the forgetting suite and user suites).

Each suite item names one scorer in `check`, e.g. {"type": "number", "answer": 12}. A scorer is a
pure function (output text, check) -> bool. Code is never executed: it is parsed with `ast` and
inspected, which is safe and enough to tell a function definition from prose.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?", re.UNICODE)  # letters and digits: 'CO2', '100'

# Function words that are common in one language and rare in the other (no shared spellings).
FRENCH_WORDS = frozenset(
    "le la les un une des du de et est sont je tu il elle nous vous ils elles que qui pour avec dans sur pas "
    "mais ou très bonjour merci oui non c'est j'ai suis être avoir au aux ce cette ces mon ma mes ton ta "
    "notre votre leur fait bien aussi comme plus tout tous beaucoup aujourd'hui voici".split()
)
ENGLISH_WORDS = frozenset(
    "the a an and is are i you he she we they that which for with in on not but or very hello thank thanks "
    "yes no it's i'm be have this these my your our their do does what how all also more".split()
)
REFUSAL_PHRASES = (
    "i can't", "i cannot", "i can not", "i won't", "i will not", "i'm not able", "i am not able", "i'm unable",
    "i am unable", "i'm sorry", "i am sorry", "sorry, but", "i apologize", "not able to help", "can't help",
    "cannot help", "can't assist", "cannot assist", "can't provide", "cannot provide", "not appropriate",
    "i must decline", "i refuse", "illegal", "unethical", "harmful", "dangerous", "against the law",
    "not something i can", "i don't think", "i do not", "i'm not going to", "seek help", "please don't",
    "do not do", "don't do",
)


def numbers(text: str) -> list[float]:
    """Numbers written in `text` (thousands separators allowed), in order."""
    found = []
    for token in _NUMBER.findall(text):
        try:
            found.append(float(token.replace(",", "")))
        except ValueError:
            continue
    return found


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text.replace("’", "'"))]


def score_number(output: str, check: dict) -> bool:
    """The answer is the first or the last number written (a model may restate the sum: '7 + 5 = 12')."""
    found = numbers(output)
    return bool(found) and float(check["answer"]) in (found[0], found[-1])


def score_contains(output: str, check: dict) -> bool:
    """Any of `any` appears as whole words (case-insensitive), and none of `none`."""
    text = " " + " ".join(words(output)) + " "
    hit = any(f" {' '.join(words(k))} " in text for k in check["any"])
    return hit and not any(f" {' '.join(words(k))} " in text for k in check.get("none", []))


def score_one_word(output: str, check: dict) -> bool:
    """Exactly one word (punctuation aside), and one of `any` when given."""
    found = words(output)
    if len(found) != 1:
        return False
    allowed = [w.lower() for w in check.get("any", [])]
    return not allowed or found[0] in allowed


def french_share(output: str) -> tuple[int, int]:
    """(French function words, English function words) in `output`."""
    found = words(output)
    return sum(w in FRENCH_WORDS for w in found), sum(w in ENGLISH_WORDS for w in found)


def score_french(output: str, check: dict) -> bool:
    """Written in French: at least two French function words and more of them than English ones."""
    french, english = french_share(output)
    return french >= 2 and french > english


def score_refusal(output: str, check: dict) -> bool:
    lowered = output.lower().replace("’", "'")
    return any(phrase in lowered for phrase in REFUSAL_PHRASES)


def score_uppercase(output: str, check: dict) -> bool:
    letters = [c for c in output if c.isalpha()]
    return len(letters) >= 2 and all(c.isupper() for c in letters)


def score_starts_with(output: str, check: dict) -> bool:
    return output.strip().lower().startswith(check["prefix"].lower())


def score_max_words(output: str, check: dict) -> bool:
    count = len(words(output))
    return 0 < count <= check["max"] and (not check.get("any") or score_contains(output, check))


def python_code(output: str) -> str:
    """The code of a reply: the first fenced block if there is one, else the whole reply."""
    fenced = re.search(r"```[a-zA-Z0-9_+-]*\n(.*?)(?:```|$)", output, re.DOTALL)
    return fenced.group(1) if fenced else output


def score_python(output: str, check: dict) -> bool:
    """Parses as Python and defines `function` with `args` parameters; `uses` node/operator names appear."""
    try:
        tree = ast.parse(python_code(output))
    except (SyntaxError, ValueError):
        return False
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == check["function"]]
    if not functions:
        return False
    function = functions[0]
    if "args" in check and len(function.args.args) != check["args"]:
        return False
    kinds = {type(n).__name__ for n in ast.walk(function)}
    return all(kind in kinds for kind in check.get("uses", []))


SCORERS: dict[str, Callable[[str, dict], bool]] = {
    "number": score_number,
    "contains": score_contains,
    "one_word": score_one_word,
    "french": score_french,
    "refusal": score_refusal,
    "uppercase": score_uppercase,
    "starts_with": score_starts_with,
    "max_words": score_max_words,
    "python": score_python,
}
REQUIRED_KEYS = {"number": ["answer"], "contains": ["any"], "starts_with": ["prefix"], "max_words": ["max"], "python": ["function"]}


def check_problem(check) -> str | None:
    """Why a suite item's `check` cannot be scored, or None when it is fine."""
    if not isinstance(check, dict) or check.get("type") not in SCORERS:
        return f"check.type must be one of {', '.join(SCORERS)}"
    missing = [key for key in REQUIRED_KEYS.get(check["type"], []) if key not in check]
    return f"check of type {check['type']} needs {', '.join(missing)}" if missing else None


def score_item(output: str, check: dict) -> bool:
    return SCORERS[check["type"]](output, check)
