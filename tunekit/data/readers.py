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
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tunekit.config import HubDataset
from tunekit.config.textfiles import file_problem
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


@dataclass(frozen=True, slots=True)
class RawSpan:
    """Where a JSONL line lies in its file. A kept row holds this instead of its text; the text
    is read back only if the row is dropped later and goes to the quarantine."""

    path: Path
    offset: int
    length: int

    def read(self) -> str:
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            return handle.read(self.length).decode("utf-8", errors="replace")


class PackedRaw(bytes):
    """A record's text kept zlib-compressed (for inputs whose records have no span in a file)."""

    __slots__ = ()

    @classmethod
    def pack(cls, text: str) -> "str | PackedRaw":
        return text if len(text) < 256 else cls(zlib.compress(text.encode("utf-8", "surrogatepass"), 1))

    def read(self) -> str:
        return zlib.decompress(self).decode("utf-8", "surrogatepass")


@dataclass
class Record:
    """One record of an input: a parsed row, a problem, or a blank line. `span` locates a JSONL
    line in its file, so a kept row need not hold `raw`."""

    number: int
    raw: str
    row: dict | None = None
    problem: RowProblem | None = None
    blank: bool = False
    span: RawSpan | None = None


@dataclass
class InputSource:
    """An opened input: its kind, a content hash, and its records (a lazy iterator)."""

    input_type: str
    sha256: str
    records: Iterator[Record]

    @property
    def unit(self) -> str:
        return UNIT[self.input_type]


def check_input(key: str, path: Path) -> None:
    """DataError when `data.<key>` cannot be opened at all (missing, unreadable, a directory that is
    not a saved dataset), without reading it: run before the slow steps (the tokenizer) start."""
    if isinstance(path, HubDataset):
        return
    if path.is_dir():
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
        return
    if not path.is_file():
        raise DataError(f"data.{key}: file not found: {path}", hint=_missing_hint(key, path))
    if problem := file_problem(path):
        raise DataError(f"data.{key}: {problem}", hint="check the file's permissions")


def open_input(key: str, path: Path) -> InputSource:
    """Open `data.<key>` by its shape: a saved dataset dir, or a file by extension (JSONL otherwise)."""
    check_input(key, path)
    if isinstance(path, HubDataset):
        return _open_hub_dataset(key, path)
    if path.is_dir():
        return _open_hf_dataset(key, path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return InputSource(PARQUET, _sha256_file(path), _parquet_records(key, path))
    if suffix in (".csv", ".json"):  # whole-file formats (a CSV record may span lines)
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if suffix == ".csv":
            return InputSource(CSV, digest, _csv_records(data))
        if (items := _json_array(key, path, data)) is not None:
            return InputSource(JSON_ARRAY, digest, _array_records(items))
        del data  # JSON Lines saved as .json: streamed like any JSONL file
    return InputSource(JSONL, _sha256_file(path), _jsonl_records(path))


def _missing_hint(key: str, path: Path) -> str:
    hint = f"fix `data.{key}` in the recipe (relative paths start at the recipe's folder)"
    if not path.suffix:
        # Looks like a hub id ("org/name"), written without the hf:// that marks one.
        hint += f"; a Hugging Face hub dataset is written with hf://, e.g. `hf://{path.parent.name}/{path.name}`"
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


_BOM = b"\xef\xbb\xbf"


def _strip_bom(data: bytes) -> bytes:
    return data[len(_BOM) :] if data.startswith(_BOM) else data


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


def _jsonl_records(path: Path) -> Iterator[Record]:
    """Physical lines, streamed, split on \\n only: JSON strings may hold other Unicode line separators."""
    with path.open("rb") as handle:
        offset = 0
        for number, line in enumerate(handle, start=1):
            start, offset = offset, offset + len(line)
            if number == 1 and line.startswith(_BOM):
                line, start = line[len(_BOM) :], start + len(_BOM)
            line = line[:-1] if line.endswith(b"\n") else line
            line = line[:-1] if line.endswith(b"\r") else line
            text = line.decode("utf-8", errors="replace")
            if not line.strip():
                yield Record(number, text, blank=True)
                continue
            try:
                yield Record(number, text, row=_parse_line(line), span=RawSpan(path, start, len(line)))
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
    from datasets import load_from_disk

    try:
        dataset = load_from_disk(str(path))
    except Exception as exc:  # noqa: BLE001 - datasets raises several types for a damaged dir
        raise DataError(f"data.{key}: {path} cannot be loaded as a saved dataset: {exc}") from None
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0" + _sha256_file(file).encode())
    return _dataset_source(dataset, digest.hexdigest())


def _dataset_source(dataset, sha256: str) -> InputSource:
    # Arrow slices give nested columns as lists of dicts, the same rows a Parquet file gives.
    table = dataset.with_format("arrow")
    rows = (table[start : start + _BATCH].to_pylist() for start in range(0, len(dataset), _BATCH))
    return InputSource(HF_DATASET, sha256, _table_records(rows))


# The split a hub dataset gives each recipe key when its id names none.
HUB_DEFAULT_SPLIT = {"train": "train", "eval": "validation", "test": "test", "external_eval": "test"}
_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def _open_hub_dataset(key: str, ref: HubDataset) -> InputSource:
    """Load `hf://OWNER/NAME[/CONFIG][@REVISION][:SPLIT]` with `datasets` (from the hub or its cache)."""
    from datasets import load_dataset

    split = ref.split or HUB_DEFAULT_SPLIT.get(key, "train")
    try:
        dataset = load_dataset(ref.repo, ref.config, split=split, revision=ref.revision)
    except Exception as exc:  # noqa: BLE001 - offline, unknown id, gated, bad config or split: all say the same to do
        raise _hub_error(key, ref, split, exc) from None
    digest = hashlib.sha256(f"{ref.repo}\0{ref.config}\0{split}\0{ref.revision}".encode())
    for cache_file in dataset.cache_files:  # the Arrow files the rows are read from
        digest.update(_sha256_file(Path(cache_file["filename"])).encode())
    return _dataset_source(dataset, digest.hexdigest())


def _hub_error(key: str, ref: HubDataset, split: str, exc: Exception) -> DataError:
    offline = [name for name in _OFFLINE_VARIABLES if os.environ.get(name, "").lower() in ("1", "true", "yes", "on")]
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    why = f"offline mode is on ({', '.join(offline)}) and it is not in the local cache" if offline else reason
    config = f", {ref.config!r}" if ref.config else ""
    return DataError(
        f"data.{key}: the hub dataset {ref} (split {split!r}) cannot be loaded: {why}",
        hint=f"check the id and split at https://huggingface.co/datasets/{ref.repo}; on a machine without the hub, save it "
        f"where the hub is reachable with `datasets.load_dataset({ref.repo!r}{config}, split={split!r}).save_to_disk(DIR)` "
        f"and point data.{key} at DIR",
    )
