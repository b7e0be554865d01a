"""The request log: one SQLite row per completion the server answered (or refused), for the
traffic, monitoring, feedback and cost stages that read it.

Schema (table `requests`; migrations recorded in `_migrations`, see `MIGRATIONS`):

| column            | type    | meaning                                                              |
|-------------------|---------|----------------------------------------------------------------------|
| id                | TEXT PK | the response id (`chatcmpl-...`), what feedback refers to             |
| created           | REAL    | unix time the request arrived                                        |
| model             | TEXT    | the model name the client asked for                                  |
| adapter           | TEXT    | the adapter that answered; NULL for the bare base                    |
| version           | TEXT    | registry version of that adapter/model; NULL when unknown             |
| key_id            | TEXT    | the API key's id (never the key); NULL on an open server              |
| prompt_tokens     | INTEGER | tokens of the prompt                                                 |
| completion_tokens | INTEGER | tokens generated (all choices)                                       |
| latency_s         | REAL    | request to last byte, seconds                                        |
| ttft_s            | REAL    | request to first generated token, seconds; NULL when none was made   |
| finish_reason     | TEXT    | stop, length, ... (of the first choice); NULL for a refused request   |
| status            | INTEGER | HTTP status answered                                                 |
| stream            | INTEGER | 1 for a streamed answer, else 0                                      |
| prompt            | TEXT    | JSON: the messages (chat) or the prompt string (completions); NULL   |
|                   |         | unless content logging is on, and then PII-scrubbed                  |
| output            | TEXT    | the generated text; NULL unless content logging is on, then scrubbed |

Content is off by default. When on, every message content and the output go through the data
stage's scrubber (`tunekit.data.pii.redact`: emails, phones, cards, IBANs, IPs, SSNs, secrets become
`[EMAIL]`-style placeholders) before they reach the disk; the raw text is never written.

Writes are queued and written by one background thread in batches (one transaction per batch),
so a request never waits on the disk; `flush()` waits until everything queued is written. The
database is in WAL mode: other processes read it while the server writes.
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tunekit.errors import TunekitError

logger = logging.getLogger("tunekit.serve.requestlog")

COLUMNS = (
    "id", "created", "model", "adapter", "version", "key_id", "prompt_tokens", "completion_tokens",
    "latency_s", "ttft_s", "finish_reason", "status", "stream", "prompt", "output",
)  # fmt: skip
MIGRATIONS: list[tuple[str, str]] = [
    (
        "001_requests",
        """
        CREATE TABLE requests (
            id TEXT PRIMARY KEY,
            created REAL NOT NULL,
            model TEXT NOT NULL,
            adapter TEXT,
            version TEXT,
            key_id TEXT,
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            latency_s REAL,
            ttft_s REAL,
            finish_reason TEXT,
            status INTEGER NOT NULL,
            stream INTEGER NOT NULL DEFAULT 0 CHECK (stream IN (0, 1)),
            prompt TEXT,
            output TEXT
        );
        CREATE INDEX requests_created ON requests (created);
        CREATE INDEX requests_model_created ON requests (model, created);
        """,
    ),
]
SCHEMA_VERSION = len(MIGRATIONS)
_BATCH = 256
_STOP = object()


class RequestLogSettings(BaseModel):
    """Where the request log goes and whether it keeps contents."""

    model_config = ConfigDict(extra="forbid")

    path: Path | None = Field(None, description="SQLite file of the request log; unset: no log.")
    log_content: bool = Field(False, description="Also keep prompts and outputs (PII-scrubbed). Off by default.")


@dataclass
class RequestRecord:
    """One completion, as the server hands it to `RequestLog.write`."""

    model: str
    status: int = 200
    adapter: str | None = None
    version: str | None = None
    key_id: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float | None = None
    ttft_s: float | None = None
    finish_reason: str | None = None
    stream: bool = False
    prompt: list[dict] | str | None = None  # chat messages, or the raw prompt of /v1/completions
    output: str | None = None
    id: str = field(default_factory=lambda: f"req-{uuid.uuid4().hex}")
    created: float = field(default_factory=time.time)


def _connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, timeout=10.0, isolation_level=None)  # transactions are explicit
    connection.execute("PRAGMA busy_timeout = 10000")
    return connection


def migrate(connection: sqlite3.Connection) -> int:
    """Apply the migrations this database lacks, each in its own transaction; the schema version."""
    connection.execute("CREATE TABLE IF NOT EXISTS _migrations (id INTEGER PRIMARY KEY, name TEXT NOT NULL, applied REAL NOT NULL)")
    done = {row[0] for row in connection.execute("SELECT name FROM _migrations")}
    unknown = done - {name for name, _ in MIGRATIONS}
    if unknown:
        raise TunekitError(
            f"the request log was written by a newer tunekit (migrations {', '.join(sorted(unknown))})",
            hint="upgrade tunekit, or point the server at another request log",
        )
    for number, (name, sql) in enumerate(MIGRATIONS, start=1):
        if name in done:
            continue
        connection.execute("BEGIN IMMEDIATE")
        try:
            if connection.execute("SELECT 1 FROM _migrations WHERE name = ?", (name,)).fetchone() is None:
                for statement in filter(str.strip, sql.split(";")):
                    connection.execute(statement)
                connection.execute("INSERT INTO _migrations (id, name, applied) VALUES (?, ?, ?)", (number, name, time.time()))
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
    return SCHEMA_VERSION


def _scrub(text: str) -> str:
    from tunekit.data.pii import redact  # the data stage's scrubber, loaded only when content is logged

    return redact(text)[0]


def _scrubbed_prompt(prompt: list[dict] | str | None) -> str | None:
    if prompt is None:
        return None
    if isinstance(prompt, str):
        return json.dumps(_scrub(prompt), ensure_ascii=False)
    messages = [{**m, "content": _scrub(m["content"])} if isinstance(m.get("content"), str) else dict(m) for m in prompt]
    return json.dumps(messages, ensure_ascii=False)


def read_rows(
    path: Path, model: str | None = None, since: float | None = None, until: float | None = None, limit: int | None = None
) -> list[dict]:
    """Rows of the request log at `path` as dicts (columns as in the module docstring, `stream` a
    bool), oldest first; `model` filters by model name, `since`/`until` by `created` (since <= created < until)."""
    path = Path(path)
    if not path.is_file():
        raise TunekitError(f"{path}: request log not found", hint="start `tunekit serve` with a request log path first")
    clauses, args = [], []
    for clause, value in (("model = ?", model), ("created >= ?", since), ("created < ?", until)):
        if value is not None:
            clauses.append(clause)
            args.append(value)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    tail = f"LIMIT {int(limit)}" if limit is not None else ""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0)
    try:
        connection.row_factory = sqlite3.Row
        cursor = connection.execute(f"SELECT {', '.join(COLUMNS)} FROM requests {where} ORDER BY created, rowid {tail}", args)
        return [{**dict(row), "stream": bool(row["stream"])} for row in cursor]
    except sqlite3.DatabaseError as exc:
        raise TunekitError(f"{path}: not a tunekit request log ({exc})", hint="point at the file `tunekit serve` writes") from None
    finally:
        connection.close()


class RequestLog:
    """The request log of one server: `write()` from any thread, `rows()` to read it back.

    ```python
    log = RequestLog(path, log_content=False)
    log.write(RequestRecord(model="base", adapter="triage", key_id=principal.key_id, status=200, ...))
    log.rows(model="base", since=time.time() - 3600)
    log.close()   # at shutdown: writes what is queued
    ```
    """

    def __init__(self, path: Path, *, log_content: bool = False):
        self.path = Path(path)
        self.log_content = log_content
        self.failed_rows = 0  # rows the writer could not write (logged with the reason)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = _connect(self.path)
        except (OSError, sqlite3.Error) as exc:
            raise TunekitError(f"{self.path}: cannot open the request log: {exc}", hint="pass a writable path") from None
        try:
            connection.execute("PRAGMA journal_mode = WAL")
            migrate(connection)
        except sqlite3.DatabaseError as exc:
            raise TunekitError(f"{self.path}: not a request log database ({exc})", hint="pass a new path or a tunekit request log") from None
        finally:
            connection.close()
        self._queue: queue.Queue = queue.Queue()
        self._closed = False
        self._writer = threading.Thread(target=self._write_loop, name="tunekit-request-log", daemon=True)
        self._writer.start()

    @classmethod
    def from_settings(cls, settings: RequestLogSettings) -> "RequestLog | None":
        """The log the settings ask for, or None when no path is configured."""
        return cls(settings.path, log_content=settings.log_content) if settings.path is not None else None

    def write(self, record: RequestRecord) -> None:
        """Queue one row; the contents are kept (and scrubbed by the writer) only with log_content."""
        if self._closed:
            raise RuntimeError("the request log is closed")
        content = (record.prompt, record.output) if self.log_content else (None, None)
        row = (
            record.id, record.created, record.model, record.adapter, record.version, record.key_id,
            int(record.prompt_tokens), int(record.completion_tokens), record.latency_s, record.ttft_s,
            record.finish_reason, int(record.status), int(bool(record.stream)),
        )  # fmt: skip
        self._queue.put((row, content))

    def flush(self) -> None:
        """Wait until every queued row is written."""
        self._queue.join()

    def rows(self, model: str | None = None, since: float | None = None, until: float | None = None, limit: int | None = None) -> list[dict]:
        """Every row written so far (queued rows first flushed); see `read_rows`."""
        if not self._closed:
            self.flush()
        return read_rows(self.path, model=model, since=since, until=until, limit=limit)

    def close(self) -> None:
        """Write what is queued and stop the writer."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._writer.join()

    def __enter__(self) -> "RequestLog":
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    # ------------------------------------------------------------ writer thread

    def _write_loop(self) -> None:
        connection = _connect(self.path)
        connection.execute("PRAGMA synchronous = NORMAL")  # durable across process crashes in WAL mode
        try:
            while True:
                batch = [self._queue.get()]
                while len(batch) < _BATCH:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                stop = any(item is _STOP for item in batch)
                rows = [item for item in batch if item is not _STOP]
                try:
                    if rows:
                        self._insert(connection, rows)
                finally:
                    for _ in batch:
                        self._queue.task_done()
                if stop:
                    return
        finally:
            connection.close()

    def _insert(self, connection: sqlite3.Connection, items: Iterable[tuple]) -> None:
        values = []
        for row, (prompt, output) in items:
            try:
                values.append((*row, _scrubbed_prompt(prompt), _scrub(output) if output is not None else None))
            except Exception:  # a malformed prompt must not lose the row's figures
                logger.exception("request %s: content could not be scrubbed; logged without content", row[0])
                values.append((*row, None, None))
        insert = f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
        try:
            connection.execute("BEGIN")
            for value in values:
                try:
                    connection.execute(insert, value)
                except sqlite3.IntegrityError as exc:  # only this statement is undone; the batch goes on
                    self.failed_rows += 1
                    logger.error("request %s not logged: %s", value[0], exc)
            connection.execute("COMMIT")
        except sqlite3.Error:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            self.failed_rows += len(values)
            logger.exception("%d request log row(s) could not be written to %s", len(values), self.path)
