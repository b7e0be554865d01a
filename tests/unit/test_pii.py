"""PII and secrets: every planted item found with its exact text, look-alikes left alone, and the
report / redact / drop / off modes of `data.clean.pii` through prepare_data."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tunekit.config import parse_recipe
from tunekit.data import prepare_data
from tunekit.data.pii import find_pii, iban_valid, luhn_valid, redact
from tunekit.runs import RunPaths, read_jsonl

# kind -> items planted in text; each must come back as exactly that span and kind.
PLANTED = {
    "email": ["jane.doe@example.com", "o'brien+orders@mail.example.co.uk", "X_Y-9@sub.domain.io"],
    "phone": [
        "+1 (555) 123-4567",
        "555-123-4567",
        "(555) 987-6543",
        "555.867.5309",
        "+44 20 7946 0958",
        "+33 6 12 34 56 78",
        "+49 151 12345678",
        "+91 98765 43210",
        "1-800-555-0199",
        "020 7946 0958",
    ],
    "credit_card": [
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "5555555555554444",
        "3782 822463 10005",
        "6011111111111117",
        "4222222222222",
        "2223003122003222",
    ],
    "iban": ["DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432", "FR14 2004 1010 0505 0001 3M02 606", "NL91ABNA0417164300"],
    "ip": ["192.168.1.1", "8.8.8.8", "255.255.255.255", "2001:db8::ff00:42:8329", "fe80::1", "2001:0db8:85a3:0000:0000:8a2e:0370:7334"],
    "ssn": ["123-45-6789", "078-05-1120"],
    "secret": [
        "AKIAIOSFODNN7EXAMPLE",
        "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
        "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
        "sk-proj-abcdefghijklmnopqrstuvwx1234",
        "xoxb-1234567890-abcdefghij",
        "AIzaSyA1234567890abcdefghijklmnopqrstuv",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAx4\n-----END RSA PRIVATE KEY-----",
    ],
}

# Look-alikes that must not be flagged as anything.
NOT_PII = [
    "order #41513 shipped",
    "order 1234567 and invoice INV-2023-00042",
    "delivered on 2023-01-15 at 10:30:45",
    "dates 01/15/2023, 15.01.2023 and 2024-01-15T10:30:00Z",
    "it costs $1,234.56, or 1299.99 EUR, or €45.00; 1,000,000 sold",
    "in 2024 we sold 3 items, version 1.2.3",
    "card-like but Luhn-invalid: 4111 1111 1111 1112, 4111111111111112, 5555-5555-5555-4445",
    "IBAN-like but failing mod-97: DE89 3704 0044 0532 0130 01 and GB82WEST12345698765433",
    "not IPs: 256.1.1.1, 1.1.1.256, 999.10.10.10, 192.168.01.1",
    "not SSNs: 000-12-3456, 666-12-3456, 900-12-3456, 123-00-6789, 123-45-0000",
    "a time 12:30:45 and a MAC 00:1A:2B:3C:4D:5E",
    "tracking 1Z999AA10123456784 and password: hunter2",
    "the api_key setting names a file: api_key = /etc/keys/production",
]


@pytest.mark.parametrize("kind,item", [(k, i) for k, items in PLANTED.items() for i in items])
def test_every_planted_item_is_found_with_its_exact_span(kind, item):
    text = f"Hi, here it is: {item} - thanks"
    matches = find_pii(text)
    assert [(m.kind, m.text) for m in matches] == [(kind, item)]


@pytest.mark.parametrize("text", NOT_PII)
def test_look_alikes_are_not_flagged(text):
    assert find_pii(text) == []


def test_generic_secret_assignments_flag_only_random_looking_values():
    text = 'api_key = "a8f5f167f44f4964e6c998dee827110c" and client_secret: Zx9qW3rT7yU1iO5pA2sD; theme = solarized_dark_mode'
    assert [(m.kind, m.text) for m in find_pii(text)] == [
        ("secret", "a8f5f167f44f4964e6c998dee827110c"),
        ("secret", "Zx9qW3rT7yU1iO5pA2sD"),
    ]
    assert redact(text)[0] == 'api_key = "[SECRET]" and client_secret: [SECRET]; theme = solarized_dark_mode'


def _luhn_check_digit(body: str) -> str:
    return next(d for d in "0123456789" if luhn_valid(body + d))


def test_no_luhn_invalid_number_is_ever_flagged_as_a_card():
    rng = random.Random(7)
    invalid = valid = 0
    for _ in range(3000):
        length = rng.choice([13, 15, 16, 19])
        digits = "".join(rng.choice("0123456789") for _ in range(length))
        spaced = " ".join(digits[i : i + 4] for i in range(0, length, 4))
        for form in (digits, spaced):
            cards = [m for m in find_pii(f"number {form} here") if m.kind == "credit_card"]
            if luhn_valid(digits):
                valid += 1
            else:
                invalid += 1
                assert cards == [], form
    assert invalid > 5000 and valid > 400
    # ...and every valid one made from a real prefix is found.
    for prefix in ("4", "51", "37", "6011"):
        number = prefix + "0" * (15 - len(prefix))
        number += _luhn_check_digit(number)
        assert [m.kind for m in find_pii(f"pay with {number}")] == ["credit_card"]


def test_checksums():
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert iban_valid("DE89370400440532013000") and not iban_valid("DE89370400440532013001")
    assert not iban_valid("DE8937040044053201300")  # right checksum arithmetic, wrong length for DE


def test_redact_replaces_each_item_with_its_typed_placeholder():
    text = (
        "Mail jane.doe@example.com or call +1 (555) 123-4567. Card 4111 1111 1111 1111, "
        "IBAN DE89 3704 0044 0532 0130 00, server 10.0.0.7, SSN 123-45-6789, key AKIAIOSFODNN7EXAMPLE. "
        "Order #41513 on 2023-01-15 for $19.99."
    )
    redacted, counts = redact(text)
    assert redacted == (
        "Mail [EMAIL] or call [PHONE]. Card [CREDIT_CARD], IBAN [IBAN], server [IP], SSN [SSN], key [SECRET]. "
        "Order #41513 on 2023-01-15 for $19.99."
    )
    assert counts == {"email": 1, "phone": 1, "credit_card": 1, "iban": 1, "ip": 1, "ssn": 1, "secret": 1}


def test_only_the_asked_types_are_found_and_other_types_still_claim_their_span():
    text = "jane@example.com, 4111 1111 1111 1111, DE89 3704 0044 0532 0130 00"
    assert [m.kind for m in find_pii(text, ["email"])] == ["email"]
    # The IBAN's digit groups are not reported as a card even when IBANs are not asked for.
    assert [m.text for m in find_pii(text, ["credit_card"])] == ["4111 1111 1111 1111"]


# ---------------------------------------------------------------- through prepare_data


def _chat(user: str, assistant: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


ROWS = [
    _chat("Where is my parcel number one?", "It arrives tomorrow morning."),
    _chat("Email me at jane.doe@example.com please", "Sure, I will write to jane.doe@example.com today."),
    _chat("My card 4111 1111 1111 1111 was charged twice", "Refund issued to the card ending 1111."),
    _chat("Call me on +44 20 7946 0958", "We will call you from 10.0.0.7 support line."),
    _chat("Is order #41513 from 2023-01-15 for $19.99 late?", "No, order #41513 ships today."),
    _chat("Wire it to DE89 3704 0044 0532 0130 00", "Done; key AKIAIOSFODNN7EXAMPLE rotated, SSN 123-45-6789 on file."),
]


def _prepare(tmp_path: Path, smol_tokenizer, pii: str, pii_types: list[str] | None = None) -> tuple[dict, RunPaths]:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    clean = {"pii": pii, "near_dedup": False}
    if pii_types is not None:
        clean["pii_types"] = pii_types
    data = {"train": "train.jsonl", "val_fraction": 0.0, "clean": clean}
    recipe = parse_recipe({"name": "pii", "output_dir": str(tmp_path / "runs"), "data": data}, base_dir=tmp_path)
    run = RunPaths(recipe.run_dir)
    return prepare_data(recipe, run, smol_tokenizer), run


FOUND_TYPES = ["email", "phone", "credit_card", "iban", "ip", "ssn", "secret"]
FOUND = {"credit_card": 1, "email": 2, "iban": 1, "ip": 1, "phone": 1, "secret": 1, "ssn": 1}


def test_report_mode_counts_and_lists_rows_without_changing_them(tmp_path, smol_tokenizer):
    report, run = _prepare(tmp_path, smol_tokenizer, "report")
    assert report["pii"]["found"] == FOUND
    assert report["pii"]["rows_affected"] == 4
    assert report["pii"]["rows"] == ["train.jsonl:2", "train.jsonl:3", "train.jsonl:4", "train.jsonl:6"]
    assert [r["messages"] for r in read_jsonl(run.split("train"))] == [r["messages"] for r in ROWS]


def test_redact_mode_writes_placeholders_and_counts_them(tmp_path, smol_tokenizer):
    report, run = _prepare(tmp_path, smol_tokenizer, "redact")
    assert report["pii"]["found"] == FOUND and report["pii"]["redacted"] == 8
    written = [[m["content"] for m in r["messages"]] for r in read_jsonl(run.split("train"))]
    assert written == [
        ["Where is my parcel number one?", "It arrives tomorrow morning."],
        ["Email me at [EMAIL] please", "Sure, I will write to [EMAIL] today."],
        ["My card [CREDIT_CARD] was charged twice", "Refund issued to the card ending 1111."],
        ["Call me on [PHONE]", "We will call you from [IP] support line."],
        ["Is order #41513 from 2023-01-15 for $19.99 late?", "No, order #41513 ships today."],
        ["Wire it to [IBAN]", "Done; key [SECRET] rotated, SSN [SSN] on file."],
    ]


def test_drop_mode_quarantines_rows_with_the_types_found(tmp_path, smol_tokenizer):
    report, run = _prepare(tmp_path, smol_tokenizer, "drop", ["email", "ssn"])
    quarantined = read_jsonl(run.quarantine)
    assert [(q["line"], q["reason"], q["detail"]) for q in quarantined] == [
        (2, "pii", "contains email (2)"),
        (6, "pii", "contains ssn (1)"),
    ]
    assert quarantined[0]["raw"] == json.dumps(ROWS[1])
    assert report["pii"]["found"] == {"email": 2, "ssn": 1} and report["pii"]["dropped"] == 2
    assert report["splits"]["train"]["rows"] == 4
    assert report["accounting"]["ok"]


def test_off_mode_does_not_scan(tmp_path, smol_tokenizer):
    report, run = _prepare(tmp_path, smol_tokenizer, "off")
    assert report["pii"] == {"mode": "off", "types": list(FOUND_TYPES)}
    assert report["splits"]["train"]["rows"] == 6

