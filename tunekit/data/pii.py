"""Personal data and secrets in example contents: find, count, redact or quarantine.

Each kind has a regex for candidates and, where the format carries a checksum or a range, a
validator (Luhn for cards, mod-97 for IBANs, octet ranges for IPs, reserved ranges for SSNs), so
numbers that only look similar (order numbers, dates, prices, years) are not flagged.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from tunekit.data.validate import Example, Rejected

PLACEHOLDERS = {
    "email": "[EMAIL]",
    "phone": "[PHONE]",
    "credit_card": "[CREDIT_CARD]",
    "iban": "[IBAN]",
    "ip": "[IP]",
    "ssn": "[SSN]",
    "secret": "[SECRET]",
}
PII_REASON = "pii"
_LISTED_ROWS = 50

# ---------------------------------------------------------------- candidates and validators

_A = re.ASCII  # \w and \d as ASCII: a phone right after CJK text ("电话555-123-4567") still has a boundary
_EMAIL = re.compile(r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+'-]*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,24}\b", _A)

# Cards are written as one run of digits or in the issuers' printed groups with one separator.
# Patterns start with the character they consume and look behind it (`\d(?<!X\d)`): the regex
# engine then skips quickly to candidate characters, several times faster on long texts.
_CARD = re.compile(
    r"\d(?<![\w.,+-]\d)(?:\d{12,18}"
    r"|\d{3}(?P<sep>[ -])\d{4}(?P=sep)\d{4}(?P=sep)\d{1,4}(?:(?P=sep)\d{1,3})?"
    r"|\d{3}(?P<sep2>[ -])\d{6}(?P=sep2)\d{4,5})(?![\w]|[.,-]\d)",
    _A,
)

# Country code, check digits, then the BBAN, compact or printed in groups of four.
_IBAN = re.compile(r"[A-Z](?<![A-Za-z0-9_][A-Z])[A-Z]\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b", _A)
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22,
    "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25,
    "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27,
    "ST": 25, "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?=\d)(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\w|\.\d)", _A)
_IPV4_GATE = re.compile(r"\d(?<![\w.]\d)\d{0,2}\.\d", _A)
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|\d{1,3}(?:\.\d{1,3}){3})?(?![\w:])", _A)

_SSN = re.compile(r"\d(?<![\w-]\d)\d\d(?P<sep>[- ])\d{2}(?P=sep)\d{4}(?![\w-]|[.,]\d)", _A)
_SSN_LABELLED = re.compile(r"(?i)\b(?:ssn|social security(?: number| no\.?)?)\s*(?:#|:|is)?\s*(?P<value>(?!000|666|9\d\d)\d{3}(?!00)\d{2}(?!0000)\d{4})\b", _A)

# Phones: international (+CC ...), US (area code) 555-0134 style, European domestic (0...), and bare digit
# runs only when a word like "phone" or "call" stands right before them.
_PHONE_START = r"(?<![\w#$€£¥.,/:-])"
_PHONE_END = r"(?![\w/]|[.,:-]\d)"
_PHONE = re.compile(
    "|".join(
        [
            r"(?<![\w#$€£¥.,/-])\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){1,5}[ .-]?\d{2,4}" + _PHONE_END,
            r"(?<![\w#$€£¥.,/:+-])(?:1[ .-])?(?:\(\d{3}\) ?|\d{3}[ .-])\d{3}[ .-]\d{4}" + _PHONE_END,
            _PHONE_START + r"0\d{1,4}[ -]\d{3,4}[ -]?\d{3,4}" + _PHONE_END,
            _PHONE_START + r"0\d(?P<s2>[ .-])\d{2}(?:(?P=s2)\d{2}){3}" + _PHONE_END,
        ]
    ),
    _A,
)
# Where a phone may start: a +, ( or digit that does not continue a word, price or number.
_PHONE_GATE = re.compile(r"[+(\d](?<![\w#$€£¥.,/-][+(\d])", _A)
_PHONE_LABELLED = re.compile(
    r"(?i)\b(?:phone|tel|telephone|mobile|cell|call|fax|whatsapp|text me at|sms)\b[^\d\n]{0,12}(?P<value>\+?\d{10,13})\b",
    _A,
)

_SECRET_TOKENS = re.compile(
    r"\b(?:(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[0-9A-Z]{16}"
    r"|gh[pousr]_[A-Za-z0-9]{30,255}|github_pat_[A-Za-z0-9_]{22,255}"
    r"|sk-(?:proj-|svcacct-|admin-|ant-)?[A-Za-z0-9_-]{20,}"
    r"|xox[baprs]-[A-Za-z0-9-]{10,}"
    r"|AIza[0-9A-Za-z_-]{35}"
    r"|[rs]k_(?:live|test)_[0-9A-Za-z]{16,}"
    r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})",
    _A,
)
_PEM = re.compile(r"-----BEGIN ((?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?)-----(?:[\s\S]*?-----END \1-----)?")
_SECRET_ASSIGNMENT = re.compile(
    r"(?i)\b(?:api[_-]?key|apikey|secret(?:[_-]?key)?|client[_-]?secret|access[_-]?key(?:[_-]?id)?|"
    r"secret[_-]?access[_-]?key|(?:access|auth|api|bearer|refresh)[_-]?token|token|password|passwd|pwd)\b"
    r"[\"']?\s*(?:=|:|=>)\s*[\"']?(?P<value>[A-Za-z0-9_\-+/=.~]{16,})",
    _A,
)


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum every payment card number carries."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _card_ok(text: str) -> bool:
    digits = re.sub(r"\D", "", text)
    return 13 <= len(digits) <= 19 and len(set(digits)) > 1 and luhn_valid(digits)


def iban_valid(compact: str) -> bool:
    """ISO 13616: known country length, and the rearranged number is 1 modulo 97."""
    if _IBAN_LENGTHS.get(compact[:2]) != len(compact):
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _ipv6_ok(text: str) -> bool:
    # "::" alone, or something like "12:30:45" (a time), is not worth flagging.
    if sum(1 for part in text.split(":") if part) < 2:
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _ssn_ok(text: str) -> bool:
    """Area 000, 666 and 900-999, group 00 and serial 0000 are never issued."""
    digits = re.sub(r"\D", "", text)
    return not (digits[:3] in ("000", "666") or digits[0] == "9" or digits[3:5] == "00" or digits[5:] == "0000")


def _phone_ok(text: str) -> bool:
    digits = re.sub(r"\D", "", text)
    return 7 <= len(digits) <= 15


def _entropy(value: str) -> float:
    counts = Counter(value)
    return -sum(n / len(value) * math.log2(n / len(value)) for n in counts.values())


def _random_looking(value: str) -> bool:
    """A value that looks generated (mixed letters and digits, high entropy), not a word or a path."""
    has_digit = any(c.isdigit() for c in value)
    has_alpha = any(c.isalpha() for c in value)
    return has_digit and has_alpha and _entropy(value) >= 3.0


@dataclass
class _Detector:
    kind: str
    pattern: re.Pattern
    check: Callable[[str], bool] | None = None
    group: str | int = 0  # the part of the match that is the PII (an assignment's value, not its key)
    needs: tuple[str, ...] = field(default=())  # cheap pre-check: skip texts with none of these
    min_digits: int = 0  # cheap pre-check: skip texts with fewer ASCII digits than the shortest match
    needs_lower: tuple[str, ...] = field(default=())  # cheap pre-check on the lower-cased text
    # Where a match may start: `pattern` is then tried only at those positions (anchored), which
    # is much faster for patterns with alternatives that all begin with a lookbehind.
    gate: re.Pattern | None = None

    def spans(self, text: str, n_digits: int, lower: str) -> Iterable[tuple[int, int]]:
        if n_digits < self.min_digits or (self.needs and not any(n in text for n in self.needs)):
            return
        if self.needs_lower and not any(n in lower for n in self.needs_lower):
            return
        for match in self._matches(text):
            start, end = match.span(self.group)
            if self.check is None or self.check(text[start:end]):
                yield start, end

    def _matches(self, text: str) -> Iterable[re.Match]:
        if self.gate is None:
            yield from self.pattern.finditer(text)
            return
        end = 0
        for candidate in self.gate.finditer(text):
            if candidate.start() < end:
                continue
            if (match := self.pattern.match(text, candidate.start())) is not None:
                end = match.end()
                yield match


def _iban_spans(text: str) -> Iterable[tuple[int, int]]:
    """IBAN candidates cut to their country's length, so a word after the number is not taken along."""
    for match in _IBAN.finditer(text):
        expected = _IBAN_LENGTHS.get(match.group()[:2])
        if expected is None:
            continue
        start, taken, end = match.start(), 0, match.start()
        for position in range(match.start(), match.end()):
            if text[position] != " ":
                taken += 1
            if taken == expected:
                end = position + 1
                break
        compact = text[start:end].replace(" ", "")
        if taken == expected and not text[end : end + 1].isalnum() and iban_valid(compact):
            yield start, end


_NO_DIGITS = str.maketrans("", "", "0123456789")
_BLOCKED = "_blocked"
# Order matters: a span taken by an earlier detector is not claimed by a later one (the digits
# inside an IBAN are not a card, those inside an email are not a phone).
_DETECTORS = [
    _Detector("secret", _PEM, needs=("-----BEGIN",)),
    _Detector("secret", _SECRET_TOKENS),
    _Detector(
        "secret",
        _SECRET_ASSIGNMENT,
        _random_looking,
        group="value",
        needs=("=", ":"),
        needs_lower=("key", "secret", "token", "pass", "pwd"),
    ),
    _Detector("email", _EMAIL, needs=("@",)),
    _Detector("iban", _IBAN, min_digits=2),  # spans come from _iban_spans, see _spans_of
    # An IBAN-shaped string that fails its checksum is a typo'd or made-up account number, not a
    # card or a phone: claim its span so no digit detector reads parts of it. Never reported.
    _Detector(_BLOCKED, _IBAN, min_digits=2),
    _Detector("credit_card", _CARD, _card_ok, min_digits=13),
    _Detector("ssn", _SSN, _ssn_ok, min_digits=9),
    _Detector("ssn", _SSN_LABELLED, group="value", min_digits=9, needs_lower=("ssn", "social security")),
    _Detector("ip", _IPV6, _ipv6_ok, needs=(":",)),
    _Detector("ip", _IPV4, needs=(".",), min_digits=4, gate=_IPV4_GATE),
    _Detector("phone", _PHONE, _phone_ok, min_digits=7, gate=_PHONE_GATE),
    _Detector(
        "phone",
        _PHONE_LABELLED,
        group="value",
        min_digits=10,
        needs_lower=("phone", "tel", "mobile", "cell", "call", "fax", "whatsapp", "text me", "sms"),
    ),
]


@dataclass(frozen=True)
class PiiMatch:
    kind: str
    start: int
    end: int
    text: str


def _spans_of(detector: _Detector, text: str, n_digits: int, lower: str) -> Iterable[tuple[int, int]]:
    if detector.kind == "iban":
        return _iban_spans(text) if n_digits >= detector.min_digits else ()
    return detector.spans(text, n_digits, lower)


def find_pii(text: str, kinds: Iterable[str] | None = None) -> list[PiiMatch]:
    """Non-overlapping PII in `text`, in text order, limited to `kinds` (default: every kind).

    Every detector runs, so a disabled kind still keeps its span from being read as another
    kind (an IBAN's digits are never reported as a card when IBANs are not asked for)."""
    wanted = set(PLACEHOLDERS if kinds is None else kinds)
    taken: list[PiiMatch] = []
    n_digits = len(text) - len(text.translate(_NO_DIGITS))
    lower = text.lower()
    for detector in _DETECTORS:
        for start, end in _spans_of(detector, text, n_digits, lower):
            if any(start < m.end and m.start < end for m in taken):
                continue
            taken.append(PiiMatch(detector.kind, start, end, text[start:end]))
    return sorted((m for m in taken if m.kind in wanted), key=lambda m: m.start)


def redact(text: str, kinds: Iterable[str] | None = None) -> tuple[str, Counter]:
    """`text` with each PII span replaced by its typed placeholder, and the count per kind."""
    matches = find_pii(text, kinds)
    pieces, cursor = [], 0
    for match in matches:
        pieces += [text[cursor : match.start], PLACEHOLDERS[match.kind]]
        cursor = match.end
    pieces.append(text[cursor:])
    return "".join(pieces), Counter(m.kind for m in matches)


# ---------------------------------------------------------------- over a data set


def scrub_examples(examples: list[Example], mode: str, kinds: list[str]) -> tuple[list[Example], list[Rejected], dict]:
    """Apply `data.clean.pii` to every content string of every example.

    report: count only; redact: replace with placeholders (the quarantine copy `raw` too, so
    redacted data does not leak through a later duplicate drop); drop: quarantine the row with
    reason `pii` and the kinds found. Returns kept examples, quarantined rows and the report."""
    summary: dict = {"mode": mode, "types": list(kinds)}
    if mode == "off":
        return examples, [], summary
    found: Counter = Counter()
    rows: list[str] = []
    kept: list[Example] = []
    rejected: list[Rejected] = []
    for example in examples:
        counts: Counter = Counter()
        if mode == "redact":
            messages = example.messages  # a copy (rows are held serialised): assigned back below
            for message in messages:
                message["content"], message_counts = redact(message["content"], kinds)
                counts += message_counts
            if counts:
                example.messages = messages
        else:
            # One scan per row, not per message; NUL never occurs inside a match, so none spans two messages.
            counts.update(m.kind for m in find_pii("\x00".join(m["content"] for m in example.messages), kinds))
        if counts:
            found += counts
            rows.append(f"{example.source}:{example.line}")
        if counts and mode == "drop":
            listed = ", ".join(f"{kind} ({n})" for kind, n in sorted(counts.items()))
            rejected.append(Rejected(example.source, example.line, PII_REASON, f"contains {listed}", example.raw))
            continue
        if counts and mode == "redact":
            example.raw = redact(example.raw, kinds)[0]
        kept.append(example)
    summary.update(
        {
            "found": dict(sorted(found.items())),
            "rows_affected": len(rows),
            "rows": rows[:_LISTED_ROWS],
            "redacted": sum(found.values()) if mode == "redact" else 0,
            "dropped": len(rejected),
        }
    )
    return kept, rejected, summary
