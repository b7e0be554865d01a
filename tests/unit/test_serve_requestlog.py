"""The request log on real SQLite: rows round-trip, content stays NULL unless asked for and is
PII-scrubbed when it is, writes from many threads all land, the schema is migrated once."""

from __future__ import annotations

import json
import sqlite3
import threading

import pytest

from tunekit.errors import TunekitError
from tunekit.serve.requestlog import (
    COLUMNS,
    MIGRATIONS,
    SCHEMA_VERSION,
    RequestLog,
    RequestLogSettings,
    RequestRecord,
    read_rows,
)

EMAIL = "jane.doe@example.com"


def record(**overrides) -> RequestRecord:
    values = dict(
        id="chatcmpl-1",
        created=1_700_000_000.5,
        model="support",
        adapter="triage",
        version="3",
        key_id="team-a",
        prompt_tokens=21,
        completion_tokens=8,
        latency_s=0.75,
        ttft_s=0.125,
        finish_reason="stop",
        status=200,
        stream=True,
        prompt=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"I am {EMAIL}, my order?"}],
        output=f"We wrote to {EMAIL}.",
    )
    return RequestRecord(**{**values, **overrides})


def test_rows_round_trip_without_content_by_default(tmp_path):
    with RequestLog(tmp_path / "log" / "requests.db") as log:
        log.write(record())
        log.write(record(id="chatcmpl-2", created=1_700_000_001.0, adapter=None, version=None, key_id=None, ttft_s=None,
                         finish_reason=None, status=429, stream=False, prompt_tokens=0, completion_tokens=0, latency_s=None))  # fmt: skip
        rows = log.rows()
    assert rows == [
        {"id": "chatcmpl-1", "created": 1_700_000_000.5, "model": "support", "adapter": "triage", "version": "3",
         "key_id": "team-a", "prompt_tokens": 21, "completion_tokens": 8, "latency_s": 0.75, "ttft_s": 0.125,
         "finish_reason": "stop", "status": 200, "stream": True, "prompt": None, "output": None},
        {"id": "chatcmpl-2", "created": 1_700_000_001.0, "model": "support", "adapter": None, "version": None,
         "key_id": None, "prompt_tokens": 0, "completion_tokens": 0, "latency_s": None, "ttft_s": None,
         "finish_reason": None, "status": 429, "stream": False, "prompt": None, "output": None},
    ]  # fmt: skip
    raw = b"".join(p.read_bytes() for p in (tmp_path / "log").iterdir())
    assert EMAIL.encode() not in raw and b"my order" not in raw  # contents never reached the disk


def test_content_logging_scrubs_pii(tmp_path):
    path = tmp_path / "requests.db"
    with RequestLog(path, log_content=True) as log:
        log.write(record())
        log.write(record(id="cmpl-raw", prompt="Call +1 415 555 0134 or mail bob@example.org", output="ok"))
        (chat, raw_prompt) = log.rows()
    assert json.loads(chat["prompt"]) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "I am [EMAIL], my order?"},
    ]
    assert chat["output"] == "We wrote to [EMAIL]."
    assert json.loads(raw_prompt["prompt"]) == "Call [PHONE] or mail [EMAIL]"
    assert raw_prompt["output"] == "ok"
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert EMAIL.encode() not in raw and b"bob@example.org" not in raw and b"I am [EMAIL]" in raw


def test_filters_by_model_and_time(tmp_path):
    with RequestLog(tmp_path / "requests.db") as log:
        for number, (model, created) in enumerate([("a", 100.0), ("b", 200.0), ("a", 300.0), ("a", 400.0)]):
            log.write(record(id=f"r{number}", model=model, created=created))
        assert [r["id"] for r in log.rows(model="a")] == ["r0", "r2", "r3"]
        assert [r["id"] for r in log.rows(since=200.0)] == ["r1", "r2", "r3"]
        assert [r["id"] for r in log.rows(model="a", since=200.0, until=400.0)] == ["r2"]
        assert [r["id"] for r in log.rows(limit=2)] == ["r0", "r1"]
    # another reader (a later stage, another process) reads the same file read-only
    assert [r["id"] for r in read_rows(tmp_path / "requests.db", model="b")] == ["r1"]


def test_concurrent_writes_from_threads_all_land(tmp_path):
    log = RequestLog(tmp_path / "requests.db")
    threads_n, per_thread = 8, 250
    start = threading.Barrier(threads_n)

    def client(thread: int) -> None:
        start.wait()
        for index in range(per_thread):
            log.write(record(id=f"t{thread}-{index}", key_id=f"key-{thread}", completion_tokens=index))

    threads = [threading.Thread(target=client, args=(t,)) for t in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    rows = log.rows()
    log.close()
    assert len(rows) == threads_n * per_thread
    assert {r["id"] for r in rows} == {f"t{t}-{i}" for t in range(threads_n) for i in range(per_thread)}
    assert sum(r["completion_tokens"] for r in rows) == threads_n * sum(range(per_thread))
    assert log.failed_rows == 0


def test_duplicate_id_is_counted_and_the_rest_of_the_batch_lands(tmp_path, caplog):
    with RequestLog(tmp_path / "requests.db") as log:
        log.write(record(id="same"))
        log.write(record(id="same", model="other"))
        log.write(record(id="after"))
        rows = log.rows()
    assert [(r["id"], r["model"]) for r in rows] == [("same", "support"), ("after", "support")]
    assert log.failed_rows == 1
    assert "request same not logged" in caplog.text


def test_schema_is_versioned_wal_and_migrated_once(tmp_path):
    path = tmp_path / "requests.db"
    RequestLog(path).close()
    RequestLog(path).close()
    connection = sqlite3.connect(path)
    assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert [r[0:2] for r in connection.execute("SELECT id, name FROM _migrations")] == [(1, "001_requests")]
    assert SCHEMA_VERSION == len(MIGRATIONS) == 1
    assert tuple(r[1] for r in connection.execute("PRAGMA table_info(requests)")) == COLUMNS
    connection.execute("INSERT INTO _migrations VALUES (2, '002_from_the_future', 0)")
    connection.commit()
    connection.close()
    with pytest.raises(TunekitError, match="written by a newer tunekit"):
        RequestLog(path)


def test_bad_paths_are_clear_errors(tmp_path):
    not_db = tmp_path / "notes.db"
    not_db.write_text("these are not the rows you are looking for\n" * 10, encoding="utf-8")
    with pytest.raises(TunekitError, match="not a request log database"):
        RequestLog(not_db)
    with pytest.raises(TunekitError, match="request log not found"):
        read_rows(tmp_path / "missing.db")
    with pytest.raises(TunekitError, match="not a tunekit request log"):
        read_rows(not_db)
    assert RequestLog.from_settings(RequestLogSettings()) is None
    log = RequestLog.from_settings(RequestLogSettings(path=tmp_path / "r.db", log_content=True))
    assert log is not None and log.log_content
    log.close()
    with pytest.raises(RuntimeError, match="closed"):
        log.write(record())
