"""Input readers: JSONL, JSON array, CSV, Parquet and saved Hugging Face datasets, record by record.

Each reader yields `Record`s numbered the way a user finds them again: the physical line of a
JSONL file or of a CSV record (the header is line 1), the 1-based item of a JSON array, the
1-based row of a Parquet file or a saved dataset. A record that cannot be parsed carries a
`RowProblem` instead of a row, so the caller quarantines it and carries on; only a file that
cannot be read at all (a broken JSON array, an unreadable Parquet file) is a DataError.

`raw` is what the quarantine keeps: the original line for JSONL, and for the other inputs a
JSON dump of the original record, so `json.loads(raw)` always gives the record's fields back.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tunekit.data.formats import RowProblem
from tunekit.errors import DataError

JSONL, JSON_ARRAY, CSV, PARQUET, HF_DATASET = "jsonl", "json", "csv", "parquet", "hf_dataset"
# What a record number counts in each input, for messages ("line 4", "item 4", "row 4").
UNIT = {JSONL: "line", JSON_ARRAY: "item", CSV: "line", PARQUET: "row", HF_DATASET: "row"}
# Columns of tabular inputs that always hold structured values, so a CSV cell there is JSON.
_JSON_COLUMNS = ("messages", "conversations")
# Columns that hold either a string or a message list (preference and conversational prompt/completion).
_MAYBE_JSON_COLUMNS = ("prompt", "completion", "chosen", "rejected")
_BATCH = 1024


@dataclass
class Record:
    """One record of an input: a parsed row, a problem, or a blank line."""

    number: int
    raw: str
    row: dict | None = None
    problem: RowProblem | None = None
    blank: bool = False


@dataclass
class InputSource:
    """An opened input: its kind, a content hash, and its records (a lazy iterator)."""

    input_type: str
    sha256: str
    records: Iterator[Record]

    @property
    def unit(self) -> str:
        return UNIT[self.input_type]


def open_input(key: str, path: Path) -> InputSource:
    """Open `data.<key>` by its shape: a saved dataset dir, or a file by extension (JSONL otherwise)."""
    if path.is_dir():
        return _open_hf_dataset(key, path)
    if not path.is_file():
        raise DataError(f"data.{key}: file not found: {path}", hint=_missing_hint(key, path))
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return InputSource(PARQUET, _sha256_file(path), _parquet_records(key, path))
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if suffix == ".csv":
        return InputSource(CSV, digest, _csv_records(data))
    if suffix == ".json" and (items := _json_array(key, path, data)) is not None:
        return InputSource(JSON_ARRAY, digest, _array_records(items))
    return InputSource(JSONL, digest, _jsonl_records(data))


def _missing_hint(key: str, path: Path) -> str:
    hint = f"fix `data.{key}` in the recipe (relative paths start at the recipe's folder)"
    if not path.suffix:
        # Looks like a hub id ("org/name"): those are not downloaded while preparing data.
        hint += (
            "; Hugging Face hub datasets are not downloaded here: save one with "
            "`datasets.load_dataset(...)['train'].save_to_disk(DIR)` and point the recipe at DIR"
        )
    return hint


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _dump(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False, default=str)


# --- JSONL -------------------------------------------------------------------------------------


def _strip_bom(data: bytes) -> bytes:
    return data[3:] if data.startswith(b"\xef\xbb\xbf") else data


def _split_lines(data: bytes) -> list[bytes]:
    """Physical lines, split on \\n only: JSON strings may hold other Unicode line separators."""
    lines = _strip_bom(data).split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the newline that ends the last line does not start another one
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def _parse_line(raw: bytes) -> dict:
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


def _jsonl_records(data: bytes) -> Iterator[Record]:
    for number, raw in enumerate(_split_lines(data), start=1):
        text = raw.decode("utf-8", errors="replace")
        if not raw.strip():
            yield Record(number, text, blank=True)
            continue
        try:
            yield Record(number, text, row=_parse_line(raw))
        except RowProblem as problem:
            yield Record(number, text, problem=problem)


# --- JSON array --------------------------------------------------------------------------------


def _json_array(key: str, path: Path, data: bytes) -> list | None:
    """The items of a `.json` file holding one array; None when the file is really JSONL."""
    try:
        text = _strip_bom(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"data.{key}: {path} is not valid UTF-8 (byte {exc.start})", hint="save the file as UTF-8") from None
    if not text.lstrip().startswith("["):
        return None  # JSON Lines saved as .json: read line by line so each line keeps its number
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"data.{key}: {path} is not a valid JSON array: {exc.msg} at line {exc.lineno} column {exc.colno}",
            hint="fix the JSON there, or write one JSON object per line (JSONL) so a bad line only quarantines itself",
        ) from None
    return value if isinstance(value, list) else None


def _array_records(items: list) -> Iterator[Record]:
    for number, item in enumerate(items, start=1):
        raw = json.dumps(item, ensure_ascii=False)
        if isinstance(item, dict):
            yield Record(number, raw, row=item)
        else:
            yield Record(number, raw, problem=RowProblem("not_an_object", f"item {number} is a JSON {type(item).__name__}, not an object"))


# --- CSV ---------------------------------------------------------------------------------------


def _csv_cell(column: str, value: str):
    """Decode JSON held in a CSV cell: always for `messages`/`conversations`, for others only a message list."""
    if column in _JSON_COLUMNS:
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise RowProblem("invalid_json", f"the `{column}` column is not valid JSON: {exc.msg} at column {exc.colno}") from None
    if column in _MAYBE_JSON_COLUMNS and value.lstrip().startswith("[{"):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return value  # a plain string that happens to start like JSON
        if isinstance(parsed, list) and all(isinstance(m, dict) for m in parsed):
            return parsed
    return value


def _csv_row(header: list[str], cells: list[str], number: int) -> dict:
    if len(cells) != len(header):
        raise RowProblem("invalid_csv", f"line {number} has {len(cells)} fields; the header has {len(header)}")
    if any("\udc80" <= ch <= "\udcff" for cell in cells for ch in cell):
        raise RowProblem("invalid_csv", f"line {number} is not valid UTF-8")
    return {column: _csv_cell(column, value) for column, value in zip(header, cells)}


def _csv_raw(header: list[str], cells: list[str]) -> str:
    """The record as a JSON object keyed by the header (or its bare fields when they do not match)."""
    cells = [cell.encode("utf-8", "surrogateescape").decode("utf-8", "replace") for cell in cells]
    return _dump(dict(zip(header, cells)) if len(cells) == len(header) else {"fields": cells})


def _csv_records(data: bytes) -> Iterator[Record]:
    # surrogateescape keeps invalid bytes so only the records holding them are quarantined.
    text = _strip_bom(data).decode("utf-8", errors="surrogateescape")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise DataError(f"the CSV header cannot be read: {exc}") from None
    if header is None:
        return
    header = [h.strip() for h in header]
    previous_end = reader.line_num
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DataError(f"CSV is malformed at line {reader.line_num}: {exc}", hint="check the quoting there") from None
        number = previous_end + 1  # the physical line the record starts on
        previous_end = reader.line_num
        raw = _csv_raw(header, cells)
        if not any(cell.strip() for cell in cells):
            yield Record(number, raw, blank=True)
            continue
        try:
            yield Record(number, raw, row=_csv_row(header, cells, number))
        except RowProblem as problem:
            yield Record(number, raw, problem=problem)


# --- Parquet and saved datasets ----------------------------------------------------------------


def _drop_nulls(value):
    """Columnar files give every row every column (None where a row had none); drop those Nones."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _table_records(batches: Iterator[list[dict]]) -> Iterator[Record]:
    number = 0
    for batch in batches:
        for record in batch:
            number += 1
            row = _drop_nulls(record)
            yield Record(number, _dump(record), row=row, blank=not row)


def _parquet_records(key: str, path: Path) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        raise DataError(f"data.{key}: {path} cannot be read as Parquet: {exc}") from None
    return _table_records(batch.to_pylist() for batch in parquet.iter_batches(batch_size=_BATCH))


def _open_hf_dataset(key: str, path: Path) -> InputSource:
    if (path / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in path.iterdir() if p.is_dir())
        raise DataError(
            f"data.{key}: {path} is a saved DatasetDict with splits {', '.join(splits)}; name one split",
            hint=f"point data.{key} at {path / (splits[0] if splits else 'train')}",
        )
    if not (path / "state.json").is_file():
        raise DataError(
            f"data.{key}: is a directory, not a file: {path}",
            hint=f"point data.{key} at a data file, or at a directory written by `datasets`' save_to_disk",
        )
    from datasets import load_from_disk

    try:
        dataset = load_from_disk(str(path))
    except Exception as exc:  # noqa: BLE001 - datasets raises several types for a damaged dir
        raise DataError(f"data.{key}: {path} cannot be loaded as a saved dataset: {exc}") from None
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0" + _sha256_file(file).encode())
    # Arrow slices give nested columns as lists of dicts, the same rows a Parquet file gives.
    table = dataset.with_format("arrow")
    rows = (table[start : start + _BATCH].to_pylist() for start in range(0, len(dataset), _BATCH))
    return InputSource(HF_DATASET, digest.hexdigest(), _table_records(rows))
