"""Append one benchmark record to a JSONL file under bench/results/ and print it."""

from __future__ import annotations

import json
from pathlib import Path


def append_record(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
    print(json.dumps(record, indent=2))
