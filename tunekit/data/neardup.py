"""Near-duplicate removal and leakage checks with MinHash LSH (tunekit.data.minhash, on rensa).

A row's text is its user/assistant content (system prompts left out: one shared system prompt
would otherwise make every short row look alike), lower-cased and cut into word shingles. LSH
proposes candidates; a candidate counts only when the MinHash Jaccard estimate reaches
`data.clean.near_threshold`. Rows are visited in priority order (test, eval, then train; input
order within a file), so the first occurrence is kept and held-out rows are never the ones removed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunekit.config import CleanConfig
from tunekit.data.clean import _PRIORITY
from tunekit.data.minhash import Candidates, best_match, lsh_bands
from tunekit.data.validate import Example, Rejected

NEAR_DUPLICATE = "near_duplicate"
EXTERNAL = "external"


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
    parts = []
    for message in messages:
        # The common shape (role + string content) without the generic walk: this runs per row.
        if type(message) is dict and type(message.get("content")) is str and message.keys() <= {"role", "content", "weight"}:
            if message.get("role") != "system":
                parts.append(message["content"])
        else:
            parts.extend(content_strings(message))
    return "\n".join(parts).lower()


def leak_key(messages: Any) -> tuple:
    """Identity for exact leakage: the user/assistant contents, whitespace at the ends ignored."""
    return tuple(s.strip() for s in content_strings(messages))


def _candidates(rows: list[Example], clean: CleanConfig) -> Candidates:
    """Candidates among `rows` (in visit order); each row's text is made only while it is hashed."""
    return Candidates(lambda i: row_text(rows[i].messages), len(rows), clean.shingle_size, clean.minhash_permutations, clean.near_threshold)


def _reject(example: Example, reason: str, detail: str) -> Rejected:
    return Rejected(example.source, example.line, reason, detail, raw=example.raw)


def near_deduplicate(
    examples: list[Example], clean: CleanConfig, within_files: bool, remove_leaks: bool, leaks: list[Leak]
) -> tuple[list[Example], list[Rejected], dict]:
    """Drop near-duplicates within a file (when `within_files`) and find near leaks across
    files (removed when `remove_leaks`). Rows already in `leaks` (exact) are not counted twice.
    Returns kept rows in input order, the removed rows, and stats for the report."""
    stats = {"enabled": within_files, "threshold": clean.near_threshold, "shingle_size": clean.shingle_size,
             "permutations": clean.minhash_permutations, "bands": lsh_bands(clean.minhash_permutations, clean.near_threshold),
             "removed": 0, "candidates_checked": 0, "rows_over_candidate_cap": 0}  # fmt: skip
    held_out = any(e.origin != "train" for e in examples)
    if not examples or not (within_files or held_out):
        return examples, [], stats
    order = sorted(range(len(examples)), key=lambda i: (_PRIORITY[examples[i].origin], i))
    visit = [examples[i] for i in order]
    found = _candidates(visit, clean)
    # Only rows sharing a band with another row can match; the rest are kept without a look.
    flagged = [visit[row] for row in found.rows]
    del visit
    kept = [True] * len(flagged)  # the rows in the index: not removed so far
    dropped: dict[int, Rejected] = {}
    exact_leaks = {id(leak.row) for leak in leaks}  # kept when remove_leaks is off; counted once
    for j, pairs in found.matches():
        example = flagged[j]
        if id(example) in exact_leaks:
            continue
        # Within one file only when near-dedup is on; across files always (that is leakage).
        mine = example.origin
        match = best_match(pairs, lambda k: kept[k] and (within_files or flagged[k].origin != mine))
        if match is None:
            continue
        other, sim = flagged[match[0]], match[1]
        if other.origin == example.origin:
            detail = f"near-duplicate of {other.source}:{other.line} (kept), similarity {sim:.2f}"
            dropped[id(example)], kept[j] = _reject(example, NEAR_DUPLICATE, detail), False
            continue
        leaks.append(Leak(example, other.source, other.line, other.origin, "near", round(sim, 4)))
        if remove_leaks:
            detail = f"near-duplicate of {other.source}:{other.line} in the {other.origin} file, similarity {sim:.2f}"
            dropped[id(example)], kept[j] = _reject(example, f"leaks_near_{other.origin}", detail), False
    stats.update(removed=sum(r.reason == NEAR_DUPLICATE for r in dropped.values()), candidates_checked=found.checked,
                 rows_over_candidate_cap=found.capped)  # fmt: skip
    return [e for e in examples if id(e) not in dropped], [r for e in examples if (r := dropped.get(id(e)))], stats


def external_leaks(
    examples: list[Example], external: list[Example], clean: CleanConfig, remove_leaks: bool, leaks: list[Leak]
) -> tuple[list[Example], list[Rejected]]:
    """Training rows that equal or nearly equal a row of an external eval file.

    `external` rows must be normalised like the training rows."""
    if not external:
        return examples, []
    exact = {}
    for row in external:
        exact.setdefault(leak_key(row.messages), row)
    train = [e for e in examples if e.origin == "train"]
    # External rows first, so a training row's earlier candidates include every external row.
    found = _candidates([*external, *train], clean)
    n_external = len(external)
    near: dict[int, tuple[Example, float]] = {}
    for j, pairs in found.matches():
        if found.rows[j] >= n_external and (match := best_match(pairs, lambda k: found.rows[k] < n_external)) is not None:
            near[int(found.rows[j]) - n_external] = (external[int(found.rows[match[0]])], match[1])
    dropped: dict[int, Rejected] = {}
    for position, example in enumerate(train):
        other = exact.get(leak_key(example.messages))
        if other is not None:
            kind, sim, reason = "exact", 1.0, f"leaks_into_{EXTERNAL}"
        elif position in near:
            (other, sim), kind, reason = near[position], "near", f"leaks_near_{EXTERNAL}"
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
    examples, near_rows, near_stats = near_deduplicate(examples, data.clean, within, data.remove_leaks, leaks)
    external = read_external(data.external_eval, read)
    normalize_rows(external, data.clean)
    examples, external_rows = external_leaks(examples, external, data.clean, data.remove_leaks, leaks)
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
