"""Read a user's data file record by record: every record is kept as an example, counted as
blank, or rejected with a reason code and its 1-based number (line, array item or table row)."""

from __future__ import annotations

import marshal
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tunekit.data.formats import CHAT, FORMATS, LABEL, PREFERENCE_KIND, TEXT_KIND, RowProblem, convert, detect_format, ignored_keys
from tunekit.data.readers import JSONL, UNIT, PackedRaw, RawSpan, open_input
from tunekit.errors import DataError


class Example:
    """One usable row, in canonical form, with where it came from.

    `kind` is chat, preference or text. `messages` always holds every message of the row (see
    formats.Converted), so stages that read text work on all kinds alike; `payload` is the
    canonical dict of a preference or text row, rebuilt from `messages` so edits made there
    (normalisation, PII redaction, a prepended system prompt) reach the written row.

    Rows are held compactly, so a million of them do not make a million dict trees: `messages`
    is kept serialised (marshal: fast, about the size of the text) and each read gives a fresh
    copy, so a change must be assigned back (`e.messages = changed`). `raw`, the original record
    kept for the quarantine, is for JSONL input a span of the file, read again only if the row
    is dropped later (`RawSpan`)."""

    __slots__ = ("origin", "source", "line", "_messages", "_raw", "n_tokens", "kind", "n_rejected", "n_chosen", "group")

    def __init__(
        self,
        origin: str,  # the recipe key of its file: train, eval or test
        source: str,
        line: int,
        messages: list[dict],
        raw: "str | RawSpan" = "",  # the original record, for the quarantine if dropped later
        n_tokens: int = 0,
        kind: str = CHAT,
        n_rejected: int = 0,  # preference rows: how many messages before the last `n_chosen` are the rejected answer
        n_chosen: int = 0,
        group: str | None = None,  # the row's `data.group_key` value, for split: grouped (set by prepare)
    ) -> None:
        self.origin, self.source, self.line, self.messages, self._raw = origin, source, line, messages, raw
        self.n_tokens, self.kind, self.n_rejected, self.n_chosen, self.group = n_tokens, kind, n_rejected, n_chosen, group

    @property
    def messages(self) -> list[dict]:
        held = self._messages
        return marshal.loads(held) if type(held) is bytes else held

    @messages.setter
    def messages(self, value: list[dict]) -> None:
        try:
            self._messages = marshal.dumps(value)
        except ValueError:  # a value marshal cannot hold (only from exotic columnar input): keep it as is
            self._messages = value

    @property
    def raw(self) -> str:
        held = self._raw
        return held if type(held) is str else held.read()  # a RawSpan or PackedRaw

    @raw.setter
    def raw(self, value: str) -> None:
        self._raw = value

    def __repr__(self) -> str:
        return f"Example({self.origin!r}, {self.source!r}, {self.line}, kind={self.kind!r}, n_tokens={self.n_tokens})"

    def _parts(self) -> tuple[list[dict], list[dict], list[dict]]:
        messages = self.messages
        end = len(messages) - self.n_chosen
        return messages[: end - self.n_rejected], messages[end:], messages[end - self.n_rejected : end]

    @property
    def prompt(self) -> list[dict]:
        return self._parts()[0]

    @property
    def chosen(self) -> list[dict]:
        return self._parts()[1]

    @property
    def rejected(self) -> list[dict]:
        return self._parts()[2]

    @property
    def payload(self) -> dict:
        """The canonical row without meta: messages, prompt/chosen/rejected, or text."""
        if self.kind == PREFERENCE_KIND:
            prompt, chosen, rejected = self._parts()
            return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
        if self.kind == TEXT_KIND:
            return {"text": self.messages[0]["content"]}
        return {"messages": self.messages}

    def to_json(self) -> dict:
        return {**self.payload, "meta": {"source": self.source, "line": self.line}}


@dataclass
class Rejected:
    """One row that goes to quarantine, with the original text so nothing is lost."""

    source: str
    line: int
    reason: str
    detail: str
    raw: str

    def to_json(self) -> dict:
        return {"source": self.source, "line": self.line, "reason": self.reason, "detail": self.detail, "raw": self.raw}


@dataclass
class InputFile:
    """An input file and what became of each of its records (`lines` counts records of any input)."""

    key: str  # train, eval or test: the `data.<key>` it was named by
    path: Path
    source: str
    sha256: str = ""
    lines: int = 0
    blank: int = 0
    examples: list[Example] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    # Per format: how many records had it, and the first few record numbers (for messages).
    format_counts: Counter = field(default_factory=Counter)
    format_lines: dict[str, list[int]] = field(default_factory=lambda: {fmt: [] for fmt in FORMATS})
    ignored_keys: Counter = field(default_factory=Counter)
    input_type: str = JSONL  # jsonl, json, csv, parquet or hf_dataset

    @property
    def unit(self) -> str:
        """What a record number counts: line, item (JSON array) or row (Parquet, saved dataset)."""
        return UNIT[self.input_type]

    @property
    def detected_format(self) -> str:
        found = [fmt for fmt, lines in self.format_lines.items() if lines]
        return found[0] if len(found) == 1 else ("mixed" if found else "none")

    @property
    def kinds(self) -> Counter:
        return Counter(e.kind for e in self.examples)


_SHOWN_LINES = 5


def _where(unit: str, number: int, detail: str) -> str:
    # Line numbers speak for themselves; an array item or a table row is named so it is not read as a line.
    return detail if unit == "line" or detail.startswith(f"{unit} {number}") else f"{unit} {number}: {detail}"


def read_input(key: str, path: Path, source: str, format_setting: str) -> InputFile:
    """Read and validate every record of one input; bad records are collected, never fatal."""
    opened = open_input(key, path)
    result = InputFile(key=key, path=path, source=source, sha256=opened.sha256, input_type=opened.input_type)
    for record in opened.records:
        result.lines += 1
        if record.blank:
            result.blank += 1
            continue
        try:
            if record.problem is not None:
                raise record.problem
            fmt = detect_format(record.row, format_setting)
            result.format_counts[fmt] += 1
            if len(result.format_lines[fmt]) < _SHOWN_LINES:
                result.format_lines[fmt].append(record.number)
            row = convert(record.row, fmt)
        except RowProblem as problem:
            detail = _where(result.unit, record.number, problem.detail)
            result.rejected.append(Rejected(source, record.number, problem.reason, detail, record.raw))
            continue
        result.ignored_keys.update(ignored_keys(record.row, fmt))
        raw = record.span or PackedRaw.pack(record.raw)  # not the text itself: it is read back if needed
        example = Example(key, source, record.number, row.messages, raw=raw, kind=row.kind)
        example.n_rejected, example.n_chosen = row.n_rejected, row.n_chosen
        result.examples.append(example)
    if format_setting == "auto":
        _refuse_mixed_formats(result)
    return result


def _refuse_mixed_formats(result: InputFile) -> None:
    found = {fmt: lines for fmt, lines in result.format_lines.items() if lines}
    if len(found) < 2:
        return
    units = f"{result.unit}s"

    def sample(fmt: str) -> str:
        shown, count = ", ".join(map(str, found[fmt])), result.format_counts[fmt]
        return shown + (f" and {count - _SHOWN_LINES} more" if count > _SHOWN_LINES else "")

    parts = [f"{LABEL[fmt]} rows on {units} {sample(fmt)}" for fmt in found]
    raise DataError(
        f"{result.path} mixes formats: {', '.join(parts[:-1])} and {parts[-1]}",
        hint="convert the file to one format (or set data.format to quarantine the rows of the other ones)",
    )


def _lengths(tokenizer, conversations: list[list[dict]]) -> list[int]:
    # transformers 5 returns a BatchEncoding from apply_chat_template(tokenize=True) unless
    # return_dict=False; accept either shape so other tokenizer versions work too.
    out = tokenizer.apply_chat_template(conversations, tokenize=True, return_dict=False)
    if isinstance(out, Mapping):
        out = out["input_ids"]
    return [len(ids) for ids in out]


def measure_non_chat(examples: list[Example], tokenizer) -> list[Rejected]:
    """Set `n_tokens` on preference rows (the longer of prompt+chosen and prompt+rejected under the
    chat template) and text rows (plain tokenization); rows the template refuses are returned."""
    texts = [e for e in examples if e.kind == TEXT_KIND]
    for start in range(0, len(texts), 256):
        batch = texts[start : start + 256]
        for example, ids in zip(batch, tokenizer([e.messages[0]["content"] for e in batch])["input_ids"]):
            example.n_tokens = len(ids)
    refused = []
    for example in examples:
        if example.kind != PREFERENCE_KIND:
            continue
        try:
            example.n_tokens = max(_lengths(tokenizer, [example.prompt + example.chosen, example.prompt + example.rejected]))
        except Exception as exc:  # noqa: BLE001 - the template's own message is the useful part
            example.n_tokens = -1
            detail = f"the model's chat template refused this example: {exc}"
            refused.append(Rejected(example.source, example.line, "template_error", detail, raw=example.raw))
    return refused
