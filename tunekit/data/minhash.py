"""MinHash signatures and LSH candidates for near-duplicate search, vectorised end to end.

Shingles never exist as Python strings: the texts of a batch are joined into one byte buffer,
words are found and hashed with numpy (64-bit hashes over each word's bytes, 8 at a time),
word n-grams are combined into 64-bit shingle hashes, and rensa turns the flat hash buffer into
MinHash signatures in Rust. Only LSH band keys are kept for every row; the rows that share a
band key with another row (a small share of real data) get their signatures again, and their
candidate pairs are verified by estimated Jaccard similarity, all at once in numpy. Building
per-row shingle strings was the cost of this stage before (about 17k rows/s per core); see
bench/data_prepare.py for today's figure.
"""

from __future__ import annotations

import string
from itertools import chain
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
from rensa import RMinHash

SEED = 1234
# Rows whose candidates are verified at most: templated data can put thousands of rows in one
# bucket, and checking all of them would make the stage quadratic. The earliest rows come first.
MAX_CANDIDATES = 200
# LSH banding is chosen so a pair exactly at the threshold becomes a candidate this often.
CANDIDATE_RECALL = 0.95
# Bytes per batch of texts hashed at once: bounds the numpy temporaries.
_BATCH_BYTES = 1 << 22
# Rows whose signatures are computed at once (then reduced to band keys).
_BATCH_ROWS = 8192

_U64 = np.uint64
_MIX1, _MIX2 = _U64(0xBF58476D1CE4E5B9), _U64(0x94D049BB133111EB)
_COMBINE = _U64(0x9E3779B97F4A7C15)
_MISSING_WORD = _U64(0x2545F4914F6CDD1D)  # stands for "no word here" in a text shorter than a shingle

# A byte is part of a word unless it is ASCII whitespace or punctuation, so punctuation and the
# spacing around it ("X1?" vs "X1 ?") do not make two copies of a row look different. Bytes of
# multi-byte UTF-8 characters are word bytes; Unicode spaces are turned into " " beforehand.
_WORD_BYTE = np.ones(256, dtype=bool)
_WORD_BYTE[[ord(c) for c in string.punctuation + string.whitespace + "\x1c\x1d\x1e\x1f"]] = False
_WORD_TABLE = bytes(_WORD_BYTE.astype(np.uint8))  # bytes.translate table: 1 for a word byte, else 0
_UNICODE_SPACES = str.maketrans({c: " " for c in map(chr, range(0x80, 0x3001)) if c.isspace()})


def lsh_bands(num_perm: int, threshold: float) -> int:
    """Bands for the LSH index: the fewest (fewest spurious candidates) for which a pair at
    `threshold` is still proposed with probability >= CANDIDATE_RECALL. rensa needs a divisor."""
    for bands in sorted(b for b in range(1, num_perm + 1) if num_perm % b == 0):
        rows = num_perm // bands
        if 1 - (1 - threshold**rows) ** bands >= CANDIDATE_RECALL:
            return bands
    return num_perm


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, in place: spreads every input bit over the whole 64-bit hash."""
    x ^= x >> _U64(30)
    x *= _MIX1
    x ^= x >> _U64(27)
    x *= _MIX2
    x ^= x >> _U64(31)
    return x


# MASKS[n] keeps the first n bytes of a little-endian 8-byte load.
_MASKS = np.array([(1 << (8 * n)) - 1 for n in range(9)], dtype=_U64)


def _word_hashes(blob: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each word's bytes, read 8 at a time (unaligned loads from a strided view)."""
    loads = np.ndarray(shape=(len(blob) - 7,), dtype="<u8", buffer=blob, strides=(1,))
    hashes = lengths.astype(_U64)
    hashes *= _COMBINE
    chunk = loads[starts]
    chunk &= _MASKS[np.minimum(lengths, 8)]
    hashes ^= chunk
    hashes *= _MIX1
    todo, offset = np.flatnonzero(lengths > 8), 8
    while len(todo):  # one more pass per 8 bytes of the longest word; few words need any
        remaining = lengths[todo] - offset
        chunk = loads[starts[todo] + offset] & _MASKS[np.minimum(remaining, 8)]
        hashes[todo] = (hashes[todo] ^ chunk) * _MIX1
        todo, offset = todo[remaining > 8], offset + 8
    return _mix(hashes)


def _batch_hashes(texts: list[str], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Shingle hashes of a batch and the shingle count of each text (at least one each)."""
    encoded = [(t if t.isascii() else t.translate(_UNICODE_SPACES)).encode("utf-8", "surrogatepass") for t in texts]
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    # Spaces around every text, so no word runs into the next one; 8 more pad the last load.
    joined = b" " + b" ".join(encoded) + b" " * 9
    blob = np.frombuffer(joined, dtype=np.uint8)
    is_word = np.frombuffer(joined.translate(_WORD_TABLE), dtype=bool)
    edges = np.flatnonzero(is_word[1:] != is_word[:-1]) + 1  # a word's start, then its end, ...
    starts, ends = edges[0::2], edges[1::2]
    with np.errstate(over="ignore"):
        words = _word_hashes(blob, starts, ends - starts)
        text_starts = np.concatenate(([1], np.cumsum(lengths + 1)[:-1] + 1))
        first_word = np.searchsorted(starts, text_starts)  # few queries into many words: cheap
        n_words = np.diff(first_word, append=len(starts))
        text_of_word = np.repeat(np.arange(len(texts)), n_words)
        shingles, full = words.copy(), np.ones(len(words), dtype=bool)
        for k in range(1, size):
            full[-k:] = False
            full[:-k] &= text_of_word[k:] == text_of_word[:-k]  # words i..i+k are in one text
            shingles *= _COMBINE
            shingles[:-k] += np.where(full[:-k], words[k:], _MISSING_WORD)
            shingles[-k:] += _MISSING_WORD
        shingles = _mix(shingles)
    # A full n-gram starts here, or this is the only shingle of a text shorter than one n-gram.
    full[first_word[(n_words > 0) & (n_words < size)]] = True
    shingles, owner = shingles[full], text_of_word[full]
    counts = np.maximum(np.bincount(owner, minlength=len(texts)), 1)
    if (n_words == 0).any():  # a text without words (empty, or punctuation only) is one empty shingle
        empty = np.flatnonzero(n_words == 0)
        order = np.argsort(np.concatenate((owner, empty)), kind="stable")
        shingles = np.concatenate((shingles, _mix(np.full(len(empty), _MISSING_WORD))))[order]
    return shingles, counts


def shingle_hashes(texts: list[str], size: int) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of the word `size`-grams of each text, flat, with row offsets (len + 1).

    Words are split at ASCII punctuation and any whitespace; a text shorter than one n-gram is
    a single shingle, so short rows are still compared. Equal texts give equal hashes in any
    process (no per-process hash seed)."""
    parts, counts, batch, batch_bytes = [], [], [], 0
    for text in texts:
        batch.append(text)
        batch_bytes += len(text) + 1
        if batch_bytes >= _BATCH_BYTES:
            hashes, n = _batch_hashes(batch, size)
            parts.append(hashes), counts.append(n)
            batch, batch_bytes = [], 0
    if batch or not parts:
        hashes, n = _batch_hashes(batch, size)
        parts.append(hashes), counts.append(n)
    offsets = np.zeros(len(texts) + 1, dtype=_U64)
    np.cumsum(np.concatenate(counts), out=offsets[1:])
    return np.concatenate(parts).astype(_U64), offsets


def signature_rows(flat: np.ndarray, offsets: np.ndarray, num_perm: int) -> np.ndarray:
    """MinHash signatures as a (rows, num_perm) uint32 array."""
    if len(offsets) <= 1:
        return np.zeros((0, num_perm), dtype=np.uint32)
    matrix = RMinHash.digest_matrix_from_flat_token_hashes(flat, offsets, num_perm, SEED)
    # rensa hands rows out as Python lists only; fromiter over the chained rows is the cheapest copy.
    values = np.fromiter(chain.from_iterable(matrix.to_rows()), dtype=np.uint32, count=(len(offsets) - 1) * num_perm)
    return values.reshape(-1, num_perm)


def signatures(texts: list[str], size: int, num_perm: int) -> np.ndarray:
    """MinHash signatures of `texts` (rows of a uint32 array); `jaccard` compares two."""
    return signature_rows(*shingle_hashes(texts, size), num_perm)


def jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard similarity: the share of equal signature positions (`b` may be 2-D)."""
    return (np.asarray(b) == a).sum(axis=-1) / a.shape[-1]


def band_keys(signatures: np.ndarray, bands: int) -> np.ndarray:
    """(rows, bands) 64-bit keys: rows with equal signature values over a band share its key."""
    width = signatures.shape[1] // bands
    values = signatures.reshape(len(signatures), bands, width).astype(_U64)
    with np.errstate(over="ignore"):
        keys = values[:, :, 0].copy()
        for column in range(1, width):
            keys *= _COMBINE
            keys += values[:, :, column]
    return keys


@dataclass
class Candidates:
    """Near-duplicate candidates among `count` texts, in visit order; `text_of(i)` gives the i-th.

    Texts are hashed in batches and only their LSH band keys are kept (bands x 8 bytes a row),
    so memory does not grow with the text. `rows` are the positions of the texts that share a
    band with any other text; their signatures are computed again and, for each, the earlier
    flagged rows in a shared band bucket (the earliest MAX_CANDIDATES of each bucket, then of
    the row) are compared by estimated Jaccard similarity, all pairs at once; `matches()` gives
    the pairs at or above the threshold. Rows not flagged have no candidate at all."""

    text_of: Callable[[int], str]
    count: int
    shingle_size: int
    num_perm: int
    threshold: float
    rows: np.ndarray = field(init=False)
    checked: int = 0  # candidate pairs compared
    capped: int = 0  # rows with more than MAX_CANDIDATES candidates

    def __post_init__(self) -> None:
        bands = lsh_bands(self.num_perm, self.threshold)
        keys = np.empty((self.count, bands), dtype=_U64)
        for lo in range(0, self.count, _BATCH_ROWS):
            keys[lo : lo + _BATCH_ROWS] = band_keys(self._signatures_of(range(lo, min(lo + _BATCH_ROWS, self.count))), bands)
        shared = np.zeros(self.count, dtype=bool)
        for band in range(bands):
            order = np.argsort(keys[:, band])
            same = keys[order[1:], band] == keys[order[:-1], band]
            shared[order[1:][same]] = shared[order[:-1][same]] = True
        self.rows = np.flatnonzero(shared)
        keys = keys[self.rows]
        self._signatures = np.concatenate(
            [self._signatures_of(self.rows[lo : lo + _BATCH_ROWS]) for lo in range(0, len(self.rows), _BATCH_ROWS)]
            or [np.zeros((0, self.num_perm), dtype=np.uint32)]
        )
        self._index_bands(keys)
        self._owner, self._member, self._similarity = self._compare()

    def _signatures_of(self, rows) -> np.ndarray:
        return signatures([self.text_of(int(i)) for i in rows], self.shingle_size, self.num_perm)

    def _index_bands(self, keys: np.ndarray) -> None:
        """Per band: flagged rows sorted by band key (stable, so in visit order within a key)."""
        n = len(keys)
        self._sorted = np.argsort(keys, axis=0, kind="stable").T  # (bands, n)
        sorted_keys = np.take_along_axis(keys.T, self._sorted, axis=1)
        new_run = np.ones_like(sorted_keys, dtype=bool)
        new_run[:, 1:] = sorted_keys[:, 1:] != sorted_keys[:, :-1]
        run_start = np.maximum.accumulate(np.where(new_run, np.arange(n), 0), axis=1)
        slot = np.empty_like(self._sorted)
        np.put_along_axis(slot, self._sorted, np.arange(n)[None, :], axis=1)
        self._slot, self._run_start = slot, np.take_along_axis(run_start, slot, axis=1)  # (bands, n), by row

    def _pairs(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """(row, earlier row) pairs sharing a band bucket, for rows lo..hi-1, sorted, unique."""
        n = len(self.rows)
        starts = self._run_start[:, lo:hi]
        counts = self._slot[:, lo:hi] - starts
        over = (counts > MAX_CANDIDATES).any(axis=0)
        counts = np.minimum(counts, MAX_CANDIDATES)
        band, row = np.nonzero(counts)
        counts, starts = counts[band, row], starts[band, row]
        ends = np.cumsum(counts)
        # A ragged arange: positions starts[i] .. starts[i] + counts[i] - 1 of each band's order.
        position = np.arange(int(ends[-1]) if len(ends) else 0) + np.repeat(starts - (ends - counts), counts)
        key = np.unique(np.repeat(row + lo, counts) * n + self._sorted[np.repeat(band, counts), position])
        owner, member = key // n, key % n
        first = np.searchsorted(owner, owner, side="left")
        rank = np.arange(len(owner)) - first
        over[owner[rank == MAX_CANDIDATES] - lo] = True
        self.capped += int(np.count_nonzero(over))
        keep = rank < MAX_CANDIDATES  # the earliest candidates of a row are compared first
        return owner[keep], member[keep]

    def _compare(self, chunk: int = 1024) -> tuple[list[int], list[int], list[float]]:
        owners, members, sims = [], [], []
        for lo in range(0, len(self.rows), chunk):
            owner, member = self._pairs(lo, min(lo + chunk, len(self.rows)))
            self.checked += len(owner)
            similarity = (self._signatures[owner] == self._signatures[member]).sum(axis=1) / self.num_perm
            close = similarity >= self.threshold
            owners += owner[close].tolist()
            members += member[close].tolist()
            sims += similarity[close].tolist()
        return owners, members, sims

    def matches(self) -> Iterator[tuple[int, list[tuple[int, float]]]]:
        """(j, [(k, similarity), ...]) for each flagged row j (an index into `rows`) with earlier
        flagged rows k at or above the threshold; j ascending, and k ascending within a row."""
        start = 0
        for end in range(1, len(self._owner) + 1):
            if end == len(self._owner) or self._owner[end] != self._owner[start]:
                yield self._owner[start], list(zip(self._member[start:end], self._similarity[start:end]))
                start = end


def best_match(candidates: list[tuple[int, float]], accept: Callable[[int], bool]) -> tuple[int, float] | None:
    """The most similar accepted candidate; on a tie the earlier one (candidates are ascending)."""
    found = None
    for key, similarity in candidates:
        if (found is None or similarity > found[1]) and accept(key):
            found = (key, similarity)
    return found
