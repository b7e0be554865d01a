"""Unicode and whitespace normalisation of every content string of a canonical row.

Runs before exact dedup so that rows differing only in invisible ways (NFD vs NFC accents,
CRLF line ends, doubled spaces, trailing blanks) count as the same row.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from typing import Any

from tunekit.config import CleanConfig

# Runs of horizontal whitespace between non-blank characters; leading indentation is matched
# separately so code blocks keep their indentation.
_INNER_RUN = re.compile(r"(?<=\S)(?:[ \t]{2,}|\t)")
_TRAILING = re.compile(r"[ \t]+(?=\n)")
# Keys whose string values are identifiers, not content: normalising them could only hide a typo.
_IDENTIFIER_KEYS = frozenset({"role", "from"})


def normalize_whitespace(text: str) -> str:
    """CRLF/CR to LF, strip the ends and each line's trailing blanks, collapse inner runs of
    spaces/tabs to one space. Newlines and the indentation at the start of a line are kept:
    collapsing indentation would break code in replies."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = text.strip()
    # The substring tests skip the regexes for the common clean text (most rows): 10x faster.
    if " \n" in text or "\t\n" in text:
        text = _TRAILING.sub("", text)
    if "  " in text or "\t" in text:
        text = _INNER_RUN.sub(" ", text)
    return text


def normalize_unicode(text: str, form: str) -> str:
    """NFC or NFKC normal form (`none` returns the text unchanged)."""
    if form == "none" or unicodedata.is_normalized(form, text):
        return text
    return unicodedata.normalize(form, text)


def text_normalizer(clean: CleanConfig) -> Callable[[str], str] | None:
    """The string function the recipe asks for, or None when normalisation is off."""
    form, whitespace = clean.normalize_unicode, clean.normalize_whitespace
    if form == "none" and not whitespace:
        return None
    if not whitespace:
        return lambda text: normalize_unicode(text, form)
    return lambda text: normalize_whitespace(normalize_unicode(text, form))


def map_strings(value: Any, fn: Callable[[str], str]) -> Any:
    """A copy of a JSON-like value (dicts, lists, strings, numbers) with `fn` applied to every
    content string; dict keys and identifier fields (`role`) are left as they are."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {k: (v if k in _IDENTIFIER_KEYS else map_strings(v, fn)) for k, v in value.items()}
    if isinstance(value, list):
        return [map_strings(v, fn) for v in value]
    return value


def normalize_rows(rows: list, clean: CleanConfig, attr: str = "messages") -> dict:
    """Normalise `getattr(row, attr)` of each row in place; returns counts for the report.

    `rows_changed` counts rows whose content changed at all; `rows_changed_by_unicode` and
    `rows_changed_by_whitespace` count the rows each step changed (a row can be in both)."""
    stats = {
        "unicode_form": clean.normalize_unicode,
        "whitespace": clean.normalize_whitespace,
        "rows_changed": 0,
        "rows_changed_by_unicode": 0,
        "rows_changed_by_whitespace": 0,
    }
    fn = text_normalizer(clean)
    if fn is None:
        return stats
    form = clean.normalize_unicode
    for row in rows:
        before = getattr(row, attr)
        after = map_strings(before, fn)
        if after == before:
            continue
        setattr(row, attr, after)
        stats["rows_changed"] += 1
        unicode_only = map_strings(before, lambda t: normalize_unicode(t, form))
        stats["rows_changed_by_unicode"] += unicode_only != before
        stats["rows_changed_by_whitespace"] += unicode_only != after
    return stats
