"""Read a user's JSONL file line by line: every line is kept as an example, counted as blank,
or rejected with a reason code and its 1-based line number."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tunekit.data.formats import ALPACA, MESSAGES, RowProblem, detect_format, ignored_keys, to_messages
from tunekit.errors import DataError


@dataclass
class Example:
    """One usable row, in canonical form, with where it came from."""

    origin: str  # the recipe key of its file: train, eval or test
    source: str
    line: int
    messages: list[dict]
    raw: str = field(default="", repr=False)  # the original line, for the quarantine if dropped later
    n_tokens: int = 0

    def to_json(self) -> dict:
        return {"messages": self.messages, "meta": {"source": self.source, "line": self.line}}


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
    """An input file and what became of each of its lines."""

    key: str  # train, eval or test: the `data.<key>` it was named by
    path: Path
    source: str
    sha256: str = ""
    lines: int = 0
    blank: int = 0
    examples: list[Example] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    format_lines: dict[str, list[int]] = field(default_factory=lambda: {MESSAGES: [], ALPACA: []})
    ignored_keys: Counter = field(default_factory=Counter)

    @property
    def detected_format(self) -> str:
        found = [fmt for fmt, lines in self.format_lines.items() if lines]
        return found[0] if len(found) == 1 else ("mixed" if found else "none")


def _split_lines(data: bytes) -> list[bytes]:
    """Physical lines, split on \\n only: JSON strings may hold other Unicode line separators."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the newline that ends the last line does not start another one
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def _parse(raw: bytes) -> dict:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RowProblem("invalid_json", f"line is not valid UTF-8 (byte {exc.start})") from None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RowProblem("invalid_json", f"{exc.msg} at column {exc.colno}") from None
    if not isinstance(row, dict):
        raise RowProblem("not_an_object", f"line is a JSON {type(row).__name__}, not an object")
    return row


def _row_format(row: dict, setting: str) -> str:
    fmt = detect_format(row)
    if setting != "auto" and fmt != setting:
        raise RowProblem("unknown_format", f"row is in {fmt} format but the recipe sets data.format: {setting}")
    return fmt


def read_input(key: str, path: Path, source: str, format_setting: str) -> InputFile:
    """Read and validate every line of one file; bad lines are collected, never fatal."""
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "file not found"
        raise DataError(f"data.{key}: {what}: {path}", hint=f"fix `data.{key}` in the recipe (relative paths start at the recipe's folder)")
    data = path.read_bytes()
    result = InputFile(key=key, path=path, source=source, sha256=hashlib.sha256(data).hexdigest())
    for number, raw in enumerate(_split_lines(data), start=1):
        result.lines += 1
        if not raw.strip():
            result.blank += 1
            continue
        text = raw.decode("utf-8", errors="replace")
        try:
            row = _parse(raw)
            fmt = _row_format(row, format_setting)
            result.format_lines[fmt].append(number)
            messages = to_messages(row, fmt)
        except RowProblem as problem:
            result.rejected.append(Rejected(source, number, problem.reason, problem.detail, text))
            continue
        result.ignored_keys.update(ignored_keys(row, fmt))
        result.examples.append(Example(key, source, number, messages, raw=text))
    if format_setting == "auto":
        _refuse_mixed_formats(result)
    return result


def _refuse_mixed_formats(result: InputFile) -> None:
    chat, alpaca = result.format_lines[MESSAGES], result.format_lines[ALPACA]
    if chat and alpaca:

        def sample(lines: list[int]) -> str:
            shown = ", ".join(map(str, lines[:5]))
            return shown + (f" and {len(lines) - 5} more" if len(lines) > 5 else "")

        raise DataError(
            f"{result.path} mixes formats: chat `messages` rows on lines {sample(chat)} "
            f"and alpaca `instruction/output` rows on lines {sample(alpaca)}",
            hint="convert the file to one format (or set data.format to quarantine the rows of the other one)",
        )
