"""Near-duplicate removal and leakage checks with MinHash LSH (the `rensa` Rust library).

A row's text is its user/assistant content (system prompts left out: one shared system prompt
would otherwise make every short row look alike), lower-cased and cut into word shingles. LSH
proposes candidates; a candidate counts only when the MinHash Jaccard estimate reaches
`data.clean.near_threshold`. Rows are visited in priority order (test, eval, then train; input
order within a file), so the first occurrence is kept and held-out rows are never the ones removed.
"""

from __future__ import annotations

import string

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rensa import RMinHash, RMinHashLSH

from tunekit.config import CleanConfig
from tunekit.data.clean import _PRIORITY
from tunekit.data.validate import Example, Rejected

NEAR_DUPLICATE = "near_duplicate"
EXTERNAL = "external"
_SEED = 1234
# Candidates verified per row at most: templated data can put thousands of rows in one bucket,
# and checking all of them would make the stage quadratic. The earliest rows are checked first.
_MAX_CANDIDATES = 200
# LSH banding is chosen so a pair exactly at the threshold becomes a candidate this often.
_CANDIDATE_RECALL = 0.95


@dataclass
class Leak:
    """A row (`row`) that also appears, exactly or nearly, in another split or an external file."""

    row: Example
    other_source: str
    other_line: int
    other: str  # test, eval, or `external` for data.external_eval files
    kind: str  # exact | near
    similarity: float

    @property
    def pair(self) -> str:
        other = f"{EXTERNAL}:{self.other_source}" if self.other == EXTERNAL else self.other
        return f"{self.row.origin}->{other}"


def content_strings(value: Any) -> Iterable[str]:
    """The content strings of a canonical row payload, system messages and role names left out."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        if value.get("role") == "system":
            return
        for key, item in value.items():
            if key not in ("role", "weight"):
                yield from content_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from content_strings(item)


def row_text(messages: Any) -> str:
    return "\n".join(content_strings(messages)).lower()


def leak_key(messages: Any) -> tuple:
    """Identity for exact leakage: the user/assistant contents, whitespace at the ends ignored."""
    return tuple(s.strip() for s in content_strings(messages))


# ASCII punctuation becomes a word break, so that punctuation and the spacing around it
# ("X1?" vs "X1 ?") do not make two copies of a row look different. str.translate + split is
# ~25% faster than a \w+ regex, and shingling is the cost of this stage (hashing is in Rust).
_PUNCTUATION_TO_SPACE = str.maketrans({c: " " for c in string.punctuation})


def shingles(text: str, size: int) -> list[str]:
    """Word n-grams of `text`; a text shorter than one shingle is a single shingle."""
    words = text.translate(_PUNCTUATION_TO_SPACE).split()
    if len(words) <= size:
        return [" ".join(words)]
    return list(map(" ".join, zip(*(words[i:] for i in range(size)))))


def lsh_bands(num_perm: int, threshold: float) -> int:
    """Bands for the LSH index: the fewest (fewest spurious candidates) for which a pair at
    `threshold` is still proposed with probability >= _CANDIDATE_RECALL. rensa needs a divisor."""
    for bands in sorted(b for b in range(1, num_perm + 1) if num_perm % b == 0):
        rows = num_perm // bands
        if 1 - (1 - threshold**rows) ** bands >= _CANDIDATE_RECALL:
            return bands
    return num_perm


def signatures(texts: list[str], clean: CleanConfig) -> list[RMinHash]:
    """MinHash signatures of many texts in one call into Rust."""
    token_sets = [shingles(t, clean.shingle_size) for t in texts]
    return RMinHash.from_token_sets(token_sets, clean.minhash_permutations, _SEED)


@dataclass
class NearIndex:
    """Kept rows in an LSH index; `best` finds the most similar one above the threshold."""

    clean: CleanConfig
    refs: list = field(default_factory=list)
    hashes: list = field(default_factory=list)
    capped: int = 0
    checked: int = 0

    def __post_init__(self) -> None:
        perms = self.clean.minhash_permutations
        self.lsh = RMinHashLSH(self.clean.near_threshold, perms, lsh_bands(perms, self.clean.near_threshold))

    def add(self, ref, minhash: RMinHash) -> None:
        self.lsh.insert(len(self.refs), minhash)
        self.refs.append(ref)
        self.hashes.append(minhash)

    def best(self, minhash: RMinHash, accept: Callable[[Any], bool] = lambda ref: True) -> tuple[Any, float] | None:
        candidates = self.lsh.query(minhash)
        if len(candidates) > _MAX_CANDIDATES:
            self.capped += 1
            candidates = sorted(candidates)[:_MAX_CANDIDATES]
        found, found_sim = None, self.clean.near_threshold
        for key in candidates:
            self.checked += 1
            sim = minhash.jaccard(self.hashes[key])
            # Highest similarity wins; on a tie the earlier kept row (smaller key).
            if sim > found_sim or (sim == found_sim and (found is None or key < found)):
                if accept(self.refs[key]):
                    found, found_sim = key, sim
        return None if found is None else (self.refs[found], found_sim)


def _reject(example: Example, reason: str, detail: str) -> Rejected:
    return Rejected(example.source, example.line, reason, detail, raw=example.raw)


def near_deduplicate(
    examples: list[Example], clean: CleanConfig, within_files: bool, remove_leaks: bool, leaks: list[Leak]
) -> tuple[list[Example], list[Rejected], dict[int, RMinHash], dict]:
    """Drop near-duplicates within a file (when `within_files`) and find near leaks across
    files (removed when `remove_leaks`). Rows already in `leaks` (exact) are not counted twice. Returns kept rows in input order, the removed
    rows, each row's signature by id(), and stats for the report."""
    stats = {"enabled": within_files, "threshold": clean.near_threshold, "shingle_size": clean.shingle_size,
             "permutations": clean.minhash_permutations, "bands": lsh_bands(clean.minhash_permutations, clean.near_threshold),
             "removed": 0, "candidates_checked": 0, "rows_over_candidate_cap": 0}  # fmt: skip
    held_out = any(e.origin != "train" for e in examples)
    if not examples or not (within_files or held_out):
        return examples, [], {}, stats
    minhashes = signatures([row_text(e.messages) for e in examples], clean)
    by_id = {id(e): m for e, m in zip(examples, minhashes)}
    index = NearIndex(clean)
    dropped: dict[int, Rejected] = {}
    order = sorted(range(len(examples)), key=lambda i: (_PRIORITY[examples[i].origin], i))
    exact_leaks = {id(leak.row) for leak in leaks}  # kept when remove_leaks is off; counted once
    for i in order:
        example = examples[i]
        # Within one file only when near-dedup is on; across files always (that is leakage).
        match = None if id(example) in exact_leaks else index.best(minhashes[i], lambda kept: within_files or kept.origin != example.origin)
        if match is not None:
            kept, sim = match
            if kept.origin == example.origin:
                dropped[i] = _reject(example, NEAR_DUPLICATE, f"near-duplicate of {kept.source}:{kept.line} (kept), similarity {sim:.2f}")
                continue
            leaks.append(Leak(example, kept.source, kept.line, kept.origin, "near", round(sim, 4)))
            if remove_leaks:
                detail = f"near-duplicate of {kept.source}:{kept.line} in the {kept.origin} file, similarity {sim:.2f}"
                dropped[i] = _reject(example, f"leaks_near_{kept.origin}", detail)
                continue
        index.add(example, minhashes[i])
    stats.update(removed=sum(r.reason == NEAR_DUPLICATE for r in dropped.values()), candidates_checked=index.checked,
                 rows_over_candidate_cap=index.capped)  # fmt: skip
    kept_rows = [e for i, e in enumerate(examples) if i not in dropped]
    return kept_rows, [dropped[i] for i in sorted(dropped)], by_id, stats


def external_leaks(
    examples: list[Example],
    external: list[Example],
    clean: CleanConfig,
    remove_leaks: bool,
    leaks: list[Leak],
    minhashes: dict[int, RMinHash] | None = None,
) -> tuple[list[Example], list[Rejected]]:
    """Training rows that equal or nearly equal a row of an external eval file.

    `external` rows must be normalised like the training rows. `minhashes` reuses the
    signatures computed by near_deduplicate."""
    if not external:
        return examples, []
    exact = {}
    for row in external:
        exact.setdefault(leak_key(row.messages), row)
    index = NearIndex(clean)
    for row, minhash in zip(external, signatures([row_text(r.messages) for r in external], clean)):
        index.add(row, minhash)
    train = [e for e in examples if e.origin == "train"]
    known = minhashes or {}
    missing = [e for e in train if id(e) not in known]
    known = {**known, **{id(e): m for e, m in zip(missing, signatures([row_text(e.messages) for e in missing], clean))}}
    dropped: dict[int, Rejected] = {}
    for example in train:
        other = exact.get(leak_key(example.messages))
        if other is not None:
            kind, sim, reason = "exact", 1.0, f"leaks_into_{EXTERNAL}"
        elif (match := index.best(known[id(example)])) is not None:
            (other, sim), kind, reason = match, "near", f"leaks_near_{EXTERNAL}"
        else:
            continue
        leaks.append(Leak(example, other.source, other.line, EXTERNAL, kind, round(sim, 4)))
        if remove_leaks:
            what = "same user/assistant text as" if kind == "exact" else f"near-duplicate (similarity {sim:.2f}) of"
            dropped[id(example)] = _reject(example, reason, f"{what} {other.source}:{other.line} in data.external_eval")
    return [e for e in examples if id(e) not in dropped], [r for e in examples if (r := dropped.get(id(e)))]


def leakage_report(leaks: list[Leak], removed: bool, checked: list[str], shown: int = 5) -> dict:
    """Counts per pair of splits/files, exact and near, with the first few source:line pairs."""
    pairs: dict[str, dict] = {}
    for leak in leaks:
        entry = pairs.setdefault(leak.pair, {"exact": 0, "near": 0, "examples": []})
        entry[leak.kind] += 1
        if len(entry["examples"]) < shown:
            entry["examples"].append({
                "row": f"{leak.row.source}:{leak.row.line}",
                "other": f"{leak.other_source}:{leak.other_line}",
                "kind": leak.kind,
                "similarity": leak.similarity,
            })  # fmt: skip
    return {
        "checked_against": checked,
        "removed_from_training": removed,
        "total": len(leaks),
        "exact": sum(leak.kind == "exact" for leak in leaks),
        "near": sum(leak.kind == "near" for leak in leaks),
        "pairs": dict(sorted(pairs.items())),
    }


def read_external(paths: list[Path], read: Callable[[str, Path, str], Any]) -> list[Example]:
    """Usable rows of the data.external_eval files; `read(key, path, source)` reads one file."""
    rows: list[Example] = []
    for path in paths:
        rows += read("external_eval", Path(path), Path(path).name).examples
    return rows


def near_and_leak_stage(
    data, examples: list[Example], exact_leaks: list[tuple[Example, Example]], read: Callable[[str, Path, str], Any]
) -> tuple[list[Example], list[Rejected], dict]:
    """Near-dedup, then leakage against data.external_eval; `data` is the recipe's DataConfig.

    `exact_leaks` are the (row, kept row) pairs exact dedup found across files. Returns the kept
    rows, the removed rows and the report sections `near_dedup` and `leakage`."""
    from tunekit.data.normalize import normalize_rows  # here to keep the module import graph flat

    leaks = [Leak(row, kept.source, kept.line, kept.origin, "exact", 1.0) for row, kept in exact_leaks]
    # data.dedup: false keeps repeats within a file; near-dedup must not remove them either.
    within = data.dedup and data.clean.near_dedup
    examples, near_rows, minhashes, near_stats = near_deduplicate(examples, data.clean, within, data.remove_leaks, leaks)
    external = read_external(data.external_eval, read)
    normalize_rows(external, data.clean)
    examples, external_rows = external_leaks(examples, external, data.clean, data.remove_leaks, leaks, minhashes)
    checked = sorted({e.origin for e in examples if e.origin != "train"}) + [f"{EXTERNAL}:{Path(p).name}" for p in data.external_eval]
    sections = {"near_dedup": near_stats, "leakage": leakage_report(leaks, data.remove_leaks, checked)}
    return examples, [*near_rows, *external_rows], sections


def leakage_summary(report: dict) -> list[str]:
    """One console line per split/file pair with leaked rows, for `tunekit data prepare`."""
    leakage = report.get("leakage") or {}
    action = "removed from training" if leakage.get("removed_from_training") else "kept (data.remove_leaks is off)"
    return [
        f"leakage {pair}: {entry['exact']} exact, {entry['near']} near-duplicate row(s) {action}"
        for pair, entry in leakage.get("pairs", {}).items()
    ]
