"""Cleaning: normalisation, MinHash near-dedup, and leakage against held-out and external files."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from tunekit.config import CleanConfig
from tunekit.data import prepare_data
from tunekit.data.minhash import jaccard, lsh_bands, shingle_hashes, signatures
from tunekit.data.neardup import row_text
from tunekit.data.normalize import map_strings, normalize_rows, normalize_unicode, normalize_whitespace, text_normalizer
from tests.unit.data_helpers import make_recipe as make, write_lines
from tunekit.runs import RunPaths, read_jsonl

WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa quebec "
    "romeo sierra tango uniform victor whiskey xray yankee zulu amber basil cedar dune ember fern grove heath "
    "iris jade kelp lark moss nettle olive pine quartz reed sage thyme umber vine willow yarrow zinnia"
).split()


def chat(user: str, assistant: str, system: str | None = None) -> dict:
    messages = [{"role": "system", "content": system}] if system is not None else []
    return {"messages": [*messages, {"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def sentence(seed: int, n: int = 45) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n))


def distinct(seed: int) -> dict:
    return chat(sentence(seed), sentence(seed + 10_000, 20))


def edited(row: dict, position: int = 20, word: str = "CHANGED") -> dict:
    """The same row with one word of the user turn replaced: 3-shingle Jaccard about 0.9."""
    words = row["messages"][0]["content"].split()
    words[position] = word
    return chat(" ".join(words), row["messages"][1]["content"])


def quarantined(run: RunPaths) -> list[tuple]:
    return [(q["source"], q["line"], q["reason"]) for q in read_jsonl(run.quarantine)]


def split_lines(run: RunPaths, name: str = "train") -> list[int]:
    return [row["meta"]["line"] for row in read_jsonl(run.split(name))]


# --- normalisation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  hello   world \t", "hello world"),
        ("a\tb", "a b"),
        ("line one  \r\nline two\rline three", "line one\nline two\nline three"),
        ("keep\n\n\nblank lines", "keep\n\n\nblank lines"),
        ("def f():\n    return  1", "def f():\n    return 1"),  # indentation kept, inner run collapsed
        ("tab\t\tsep", "tab sep"),
    ],
)
def test_whitespace_normalisation_examples(text, expected):
    assert normalize_whitespace(text) == expected


def test_unicode_normalisation_forms():
    decomposed = "Cafe\u0301 \uff21\ufb01"  # e + combining acute, full-width A, fi ligature
    assert normalize_unicode(decomposed, "NFC") == "Caf\u00e9 \uff21\ufb01"
    assert normalize_unicode(decomposed, "NFKC") == "Caf\u00e9 Afi"
    assert normalize_unicode(decomposed, "none") == decomposed
    assert text_normalizer(CleanConfig(normalize_unicode="none", normalize_whitespace=False)) is None


def test_map_strings_maps_every_content_string_of_any_row_shape():
    row = {"prompt": " p ", "chosen": [{"role": "assistant", "content": " c  d ", "weight": 1}], "n": 3}
    assert map_strings(row, str.strip) == {"prompt": "p", "chosen": [{"role": "assistant", "content": "c  d", "weight": 1}], "n": 3}
    assert row["prompt"] == " p "  # a copy, the input is untouched


def test_normalize_rows_counts_changed_rows():
    class Row:
        def __init__(self, messages):
            self.messages = messages

    rows = [Row(chat("plain", "text")["messages"]), Row(chat("two  spaces", "x")["messages"]),
            Row(chat("Cafe\u0301", "x")["messages"]), Row(chat("Cafe\u0301  ", "x")["messages"])]  # fmt: skip
    stats = normalize_rows(rows, CleanConfig())
    assert (stats["rows_changed"], stats["rows_changed_by_unicode"], stats["rows_changed_by_whitespace"]) == (3, 2, 2)
    assert rows[3].messages[0]["content"] == "Caf\u00e9"


def test_exact_dedup_runs_on_normalised_text(tmp_path, smol_tokenizer):
    write_lines(tmp_path / "train.jsonl", [
        chat("Caf\u00e9 order status?", "It shipped."),
        chat("Cafe\u0301   order status?  ", "It shipped.\r\n"),  # same row once normalised
        chat("Another question", "Another answer"),
    ])  # fmt: skip
    recipe, run = make(tmp_path)
    report = prepare_data(recipe, run, smol_tokenizer)
    assert quarantined(run) == [("train.jsonl", 2, "duplicate")]
    assert report["normalization"]["rows_changed"] == 1
    assert read_jsonl(run.split("train"))[0]["messages"][0]["content"] == "Caf\u00e9 order status?"

    recipe, run = make(tmp_path, clean={"normalize_unicode": "none", "normalize_whitespace": False, "near_dedup": False})
    report = prepare_data(recipe, run, smol_tokenizer)
    assert quarantined(run) == [] and report["normalization"]["rows_changed"] == 0


# --- near duplicates ------------------------------------------------------------------------


def _shingles(text: str, size: int = 3) -> list[int]:
    flat, offsets = shingle_hashes([text], size)
    assert offsets.tolist() == [0, len(flat)]
    return flat.tolist()


def test_shingles_and_bands():
    # Word 3-grams: 4 words give 2 shingles, and the n-gram "b c d" hashes the same in any text.
    assert len(_shingles("a b c d")) == 2 and _shingles("a b c d")[1] == _shingles("b c d")[0]
    assert len(_shingles("a b")) == 1 and _shingles("a b") != _shingles("a")  # short texts: one shingle
    # Punctuation and spacing do not matter; a Unicode space splits words like an ASCII one.
    assert _shingles("x1? y, z") == _shingles("x1 ? y z") == _shingles("x1\u00a0y\tz")
    assert _shingles("") == _shingles("?!") and len(_shingles("")) == 1
    # Words longer than one 8-byte load are hashed whole; texts never run into each other.
    assert _shingles("abcdefghijklmnopq r s") != _shingles("abcdefghijklmnopX r s")
    flat, offsets = shingle_hashes(["a b c", "", "d e f g", "h"], 3)
    assert offsets.tolist() == [0, 1, 2, 4, 5]
    assert flat[2:4].tolist() == _shingles("d e f g") and flat[0] == _shingles("a b c")[0]
    assert lsh_bands(128, 0.7) == 32  # 4 rows per band: a pair at 0.7 is proposed with p > 0.99
    assert row_text(chat("Q", "A", system="SYS")["messages"]) == "q\na"


def test_near_duplicates_are_removed_with_the_kept_row_recorded(tmp_path, smol_tokenizer):
    base, other = distinct(1), distinct(2)
    half = chat(" ".join(base["messages"][0]["content"].split()[:22] + sentence(99, 23).split()), sentence(98, 20))
    rows = [base, other, edited(base), distinct(3), edited(other, 5, "X"), half, edited(edited(base), 30, "Y")]
    write_lines(tmp_path / "train.jsonl", rows)
    recipe, run = make(tmp_path)

    report = prepare_data(recipe, run, smol_tokenizer)

    assert quarantined(run) == [("train.jsonl", n, "near_duplicate") for n in (3, 5, 7)]
    details = [q["detail"] for q in read_jsonl(run.quarantine)]
    kept_refs = [re.match(r"near-duplicate of (train\.jsonl:\d+) \(kept\), similarity (0\.\d+|1\.00)$", d).group(1) for d in details]
    assert kept_refs == ["train.jsonl:1", "train.jsonl:2", "train.jsonl:1"]
    assert all(float(d.rsplit(" ", 1)[1]) >= 0.7 for d in details)
    assert split_lines(run) == [1, 2, 4, 6]  # the row sharing half its text is distinct enough
    assert report["near_dedup"]["removed"] == 3
    assert report["files"][0]["duplicates"] == 3
    assert report["accounting"]["ok"] and report["accounting"]["kept_rows"] == 4

    recipe, run = make(tmp_path, clean={"near_dedup": False})
    report = prepare_data(recipe, run, smol_tokenizer)
    assert quarantined(run) == [] and split_lines(run) == [1, 2, 3, 4, 5, 6, 7]
    assert report["near_dedup"]["enabled"] is False


def test_near_duplicates_do_not_fail_strict_mode(tmp_path, smol_tokenizer):
    base = distinct(5)
    write_lines(tmp_path / "train.jsonl", [base, edited(base), distinct(6)])
    recipe, run = make(tmp_path, on_invalid="error")
    report = prepare_data(recipe, run, smol_tokenizer)
    assert report["quarantine"]["by_reason"] == {"near_duplicate": 1}


# --- leakage ------------------------------------------------------------------------------


def _leaky_files(tmp_path: Path) -> None:
    test_rows = [distinct(100), distinct(101), distinct(102)]
    external = [distinct(200), distinct(201)]
    train = [
        distinct(1),
        test_rows[0],  # 2: exact copy of test:1
        edited(test_rows[1]),  # 3: near copy of test:2
        distinct(2),
        # 5: exact user/assistant text of external:2, with a system prompt added
        chat(external[1]["messages"][0]["content"], external[1]["messages"][1]["content"], system="Be nice."),
        edited(external[0], 10, "Z"),  # 6: near copy of external:1
        distinct(3),
    ]
    write_lines(tmp_path / "train.jsonl", train)
    write_lines(tmp_path / "test.jsonl", test_rows)
    write_lines(tmp_path / "ext.jsonl", external)


def test_leaks_into_test_and_external_files_are_reported_and_removed(tmp_path, smol_tokenizer):
    _leaky_files(tmp_path)
    recipe, run = make(tmp_path, test="test.jsonl", external_eval=["ext.jsonl"])

    report = prepare_data(recipe, run, smol_tokenizer)

    assert quarantined(run) == [
        ("train.jsonl", 2, "leaks_into_test"),
        ("train.jsonl", 3, "leaks_near_test"),
        ("train.jsonl", 5, "leaks_into_external"),
        ("train.jsonl", 6, "leaks_near_external"),
    ]
    leakage = report["leakage"]
    assert leakage["checked_against"] == ["test", "external:ext.jsonl"]
    assert (leakage["total"], leakage["exact"], leakage["near"], leakage["removed_from_training"]) == (4, 2, 2, True)
    test_pair, ext_pair = leakage["pairs"]["train->test"], leakage["pairs"]["train->external:ext.jsonl"]
    assert (test_pair["exact"], test_pair["near"], ext_pair["exact"], ext_pair["near"]) == (1, 1, 1, 1)
    assert [(e["row"], e["other"], e["kind"]) for e in test_pair["examples"]] == [
        ("train.jsonl:2", "test.jsonl:1", "exact"),
        ("train.jsonl:3", "test.jsonl:2", "near"),
    ]
    assert [(e["row"], e["other"], e["kind"]) for e in ext_pair["examples"]] == [
        ("train.jsonl:5", "ext.jsonl:2", "exact"),
        ("train.jsonl:6", "ext.jsonl:1", "near"),
    ]
    assert 0.7 <= test_pair["examples"][1]["similarity"] < 1.0
    assert split_lines(run) == [1, 4, 7] and split_lines(run, "test") == [1, 2, 3]
    assert report["accounting"]["ok"]
    assert sum(f["quarantined"] for f in report["files"]) == 4


def test_leaks_are_only_reported_when_remove_leaks_is_off(tmp_path, smol_tokenizer):
    _leaky_files(tmp_path)
    recipe, run = make(tmp_path, test="test.jsonl", external_eval=["ext.jsonl"], remove_leaks=False)

    report = prepare_data(recipe, run, smol_tokenizer)

    assert quarantined(run) == []
    assert split_lines(run) == [1, 2, 3, 4, 5, 6, 7]
    leakage = report["leakage"]
    assert (leakage["total"], leakage["exact"], leakage["near"], leakage["removed_from_training"]) == (4, 2, 2, False)
    assert report["accounting"]["ok"]


def test_near_leaks_are_checked_even_with_near_dedup_off(tmp_path, smol_tokenizer):
    base = distinct(7)
    write_lines(tmp_path / "train.jsonl", [distinct(8), edited(base), edited(distinct(8))])
    write_lines(tmp_path / "test.jsonl", [base])
    recipe, run = make(tmp_path, test="test.jsonl", clean={"near_dedup": False})
    report = prepare_data(recipe, run, smol_tokenizer)
    # Line 3 near-duplicates line 1 of the same file: kept, near-dedup is off.
    assert quarantined(run) == [("train.jsonl", 2, "leaks_near_test")]
    assert report["leakage"]["pairs"]["train->test"]["near"] == 1


def test_signatures_estimate_planted_similarity():
    clean = CleanConfig()
    base = distinct(11)
    texts = [row_text(r["messages"]) for r in (base, edited(base), distinct(12))]
    a, b, c = signatures(texts, clean.shingle_size, clean.minhash_permutations)
    assert jaccard(a, b) >= 0.8 and jaccard(a, c) < 0.2
    # The same texts give the same signatures in another process (no per-process hash seed).
    import subprocess
    import sys

    code = "import sys; from tunekit.data.minhash import signatures; print(signatures([sys.argv[1]], 3, 128)[0].tolist())"
    out = subprocess.run([sys.executable, "-c", code, texts[0]], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(a.tolist())


def test_batched_token_lengths_equal_apply_chat_template(smol_tokenizer):
    from tunekit.data.clean import _token_ids

    conversations = [distinct(i)["messages"] for i in range(3)] + [chat("Hi <|im_end|> there", "ok", system="S")["messages"]]
    expected = smol_tokenizer.apply_chat_template(conversations, tokenize=True, return_dict=False)
    assert _token_ids(smol_tokenizer, conversations) == [list(ids) for ids in expected]


def test_leakage_summary_lines(tmp_path, smol_tokenizer):
    from tunekit.data.neardup import leakage_summary

    _leaky_files(tmp_path)
    recipe, run = make(tmp_path, test="test.jsonl", external_eval=["ext.jsonl"])
    report = prepare_data(recipe, run, smol_tokenizer)
    assert leakage_summary(report) == [
        "leakage train->external:ext.jsonl: 1 exact, 1 near-duplicate row(s) removed from training",
        "leakage train->test: 1 exact, 1 near-duplicate row(s) removed from training",
    ]


def test_candidates_are_the_rows_sharing_a_band_bucket():
    import numpy as np

    from tunekit.data.minhash import Candidates, shingle_hashes, signature_rows

    texts = [row_text(distinct(i)["messages"]) for i in range(60)]
    texts += [row_text(edited(distinct(i), position=i % 40)["messages"]) for i in range(0, 60, 3)]
    signatures_all = signature_rows(*shingle_hashes(texts, 3), 128)
    shared = np.zeros(len(texts), dtype=bool)
    for band in range(32):  # 128 permutations at threshold 0.7: 32 bands of 4 rows
        values = [tuple(row) for row in signatures_all[:, band * 4 : band * 4 + 4]]
        shared |= np.array([values.count(v) > 1 for v in values])
    found = Candidates(texts.__getitem__, len(texts), 3, 128, 0.7)
    assert found.rows.tolist() == np.flatnonzero(shared).tolist() and len(found.rows) >= 40
    # Each edited copy (rows 60..79) matches its original (rows 0, 3, 6, ...), nothing else.
    matched = {int(found.rows[j]): [int(found.rows[k]) for k, _ in p] for j, p in found.matches()}
    assert matched == {60 + i: [3 * i] for i in range(20)}


def test_huge_buckets_are_capped():
    from tunekit.data.minhash import MAX_CANDIDATES, Candidates

    texts = ["the same templated row"] * (MAX_CANDIDATES + 50)
    found = Candidates(texts.__getitem__, len(texts), 3, 128, 0.7)
    pairs = dict(found.matches())
    assert found.capped == 49  # rows 201..249 have more than MAX_CANDIDATES earlier copies
    assert [k for k, _ in pairs[MAX_CANDIDATES + 49]] == list(range(MAX_CANDIDATES))
    assert len(pairs[5]) == 5 and all(sim == 1.0 for _, sim in pairs[5])


def test_token_lengths_over_many_batches_equal_the_per_row_template_lengths(smol_tokenizer_dir):
    """Batches are encoded in a worker thread while the next one renders: every length must still
    be the one apply_chat_template(tokenize=True) gives for the row alone, in the rows' order,
    and a row the template refuses (in a middle batch) is quarantined without shifting the rest."""
    from tunekit.data import clean
    from tunekit.data.validate import Example
    from tunekit.models import load_tokenizer

    tokenizer = load_tokenizer(str(smol_tokenizer_dir))
    tokenizer.chat_template = (
        "{% for m in messages %}{% if 'forbidden' in m['content'] %}{{ raise_exception('no forbidden words') }}{% endif %}"
        "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    )
    rng = random.Random(3)
    n_rows, refused_at = clean._BATCH * 3 + 17, clean._BATCH + 5
    rows = [chat(sentence(i, rng.randint(1, 40)), "forbidden" if i == refused_at else sentence(-i, rng.randint(1, 60))) for i in range(n_rows)]
    examples = [Example("train", "train.jsonl", i + 1, row["messages"]) for i, row in enumerate(rows)]
    rejected = clean.measure_tokens(examples, tokenizer)
    assert [(r.line, r.reason) for r in rejected] == [(refused_at + 1, "template_error")]
    expected = [
        -1 if i == refused_at else len(tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=False))
        for i, row in enumerate(rows)
    ]
    assert [e.n_tokens for e in examples] == expected
    assert len(set(expected)) > 20  # lengths vary, so a shifted batch could not pass
