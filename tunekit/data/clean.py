"""Cleaning after validation: token lengths under the chat template, the over-length policy,
exact deduplication, and removal of training rows that leak into the held-out files."""

from __future__ import annotations

import hashlib
import marshal
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor

from tunekit.data.validate import Example, Rejected, measure_non_chat
from tunekit.errors import DataError

_BATCH = 256
# Held-out files win over train, and test over eval: a row shared with a held-out file is
# removed from the file that is used for learning (or for model selection), never from test.
_PRIORITY = {"test": 0, "eval": 1, "train": 2}
DUPLICATE_REASONS = (
    "duplicate",
    "leaks_into_test",
    "leaks_into_eval",
    "semantic_duplicate",
    # near-duplicates (MinHash) and leaks found by tunekit.data.neardup
    "near_duplicate",
    "leaks_near_test",
    "leaks_near_eval",
    "leaks_into_external",
    "leaks_near_external",
)


def _fast_backend(tokenizer):
    """The Rust tokenizer when it has a batch call that skips offsets, else None."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend if backend is not None and hasattr(backend, "encode_batch_fast") else None


def _token_ids(tokenizer, conversations: list[list[dict]]) -> list[list[int]]:
    # Rendering first and encoding the batch in the Rust tokenizer is ~5x faster than
    # apply_chat_template(tokenize=True), which encodes the same rendered text without special
    # tokens but through the slower Python call path (offsets, padding logic).
    backend = _fast_backend(tokenizer)
    if backend is not None:
        texts = tokenizer.apply_chat_template(conversations, tokenize=False)
        return [encoding.ids for encoding in backend.encode_batch_fast(texts, add_special_tokens=False)]
    # transformers 5 returns a BatchEncoding from apply_chat_template(tokenize=True) unless
    # return_dict=False; accept either shape so other tokenizer versions work too.
    out = tokenizer.apply_chat_template(conversations, tokenize=True, return_dict=False)
    if isinstance(out, Mapping):
        out = out["input_ids"]
    return list(out)


def _batch_lengths(tokenizer, batches: list[list[Example]]) -> Iterator[list[int] | None]:
    """Token lengths per batch (None where rendering or encoding the batch failed), in order.

    With the Rust tokenizer, batch k is encoded in a worker thread (the Rust call releases the
    GIL) while the template of batch k+1 is rendered here: Jinja rendering is Python and would
    otherwise leave the cores idle between encodes (~10 % of the stage on 2 cores)."""
    backend = _fast_backend(tokenizer)
    if backend is None:
        for batch in batches:
            try:
                yield [len(ids) for ids in _token_ids(tokenizer, [e.messages for e in batch])]
            except Exception:  # noqa: BLE001 - the caller finds the refused rows one by one
                yield None
        return

    def lengths(pending: Future | None) -> list[int] | None:
        try:
            return None if pending is None else [len(encoding.ids) for encoding in pending.result()]
        except Exception:  # noqa: BLE001 - as above
            return None

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending: Future | None = None
        for index, batch in enumerate(batches):
            try:
                texts = tokenizer.apply_chat_template([e.messages for e in batch], tokenize=False)
                submitted = pool.submit(backend.encode_batch_fast, texts, add_special_tokens=False)
            except Exception:  # noqa: BLE001 - as above
                submitted = None
            if index:
                yield lengths(pending)
            pending = submitted
        if batches:
            yield lengths(pending)


def measure_tokens(examples: list[Example], tokenizer) -> list[Rejected]:
    """Set `n_tokens` on each example; examples the chat template refuses are returned as rejected."""
    refused: list[Rejected] = measure_non_chat([e for e in examples if e.kind != "chat"], tokenizer)
    examples = [e for e in examples if e.kind == "chat"]
    batches = [examples[start : start + _BATCH] for start in range(0, len(examples), _BATCH)]
    for batch, lengths in zip(batches, _batch_lengths(tokenizer, batches)):
        if lengths is None:  # a template may raise anything; find the rows one by one
            lengths = []
            for example in batch:
                try:
                    lengths.append(len(_token_ids(tokenizer, [example.messages])[0]))
                except Exception as exc:  # noqa: BLE001 - the template's own message is the useful part
                    lengths.append(-1)
                    refused.append(_reject(example, "template_error", f"the model's chat template refused this example: {exc}"))
        for example, n_tokens in zip(batch, lengths):
            example.n_tokens = n_tokens
    return refused


def apply_length_policy(examples: list[Example], max_length: int, policy: str) -> tuple[list[Example], list[Rejected]]:
    """Keep, drop to quarantine, or refuse examples longer than `max_length` tokens."""
    over = [e for e in examples if e.n_tokens > max_length]
    if not over or policy == "truncate":
        return examples, []
    if policy == "error":
        shown = ", ".join(f"{e.source}:{e.line} ({e.n_tokens} tokens)" for e in over[:10])
        more = f" and {len(over) - 10} more" if len(over) > 10 else ""
        raise DataError(
            f"{len(over)} example(s) are longer than data.max_length={max_length} tokens: {shown}{more}",
            hint="raise data.max_length, or set data.over_length to `drop` (quarantine them) or `truncate`",
        )
    rejected = [
        _reject(e, "too_long", f"{e.n_tokens} tokens under the chat template; data.max_length is {max_length}") for e in over
    ]
    return [e for e in examples if e.n_tokens <= max_length], rejected


def dedup_key(messages: list[dict]) -> bytes:
    """Identity of an example for exact dedup: roles and contents, surrounding whitespace ignored.

    A 128-bit digest rather than the texts, so the table of rows seen stays small."""
    identity = tuple((m["role"], m["content"].strip()) for m in messages)
    return hashlib.blake2b(marshal.dumps(identity), digest_size=16).digest()


def deduplicate(
    examples: list[Example], within_files: bool, remove_leaks: bool = True, leaks: list | None = None
) -> tuple[list[Example], list[Rejected]]:
    """Drop repeats: across files (leaks into held-out data) unless `remove_leaks` is off, and
    within a file when asked. Cross-file repeats are appended to `leaks` as (row, kept row).

    Within a file the first occurrence is kept. Returns the kept examples in input order."""
    ordered = sorted(range(len(examples)), key=lambda i: (_PRIORITY[examples[i].origin], i))
    first: dict[bytes, Example] = {}
    dropped: dict[int, Rejected] = {}
    for index in ordered:
        example = examples[index]
        key = dedup_key(example.messages)
        kept = first.get(key)
        if kept is None:
            first[key] = example
        elif kept.origin != example.origin:
            if leaks is not None:
                leaks.append((example, kept))
            if not remove_leaks:
                continue
            reason = f"leaks_into_{kept.origin}"
            dropped[index] = _reject(example, reason, f"same example as {kept.source}:{kept.line} in the {kept.origin} file")
        elif within_files:
            dropped[index] = _reject(example, "duplicate", f"duplicate of {kept.source}:{kept.line} (kept)")
    kept_examples = [e for i, e in enumerate(examples) if i not in dropped]
    return kept_examples, [dropped[i] for i in sorted(dropped)]


def _reject(example: Example, reason: str, detail: str) -> Rejected:
    return Rejected(example.source, example.line, reason, detail, raw=example.raw)
