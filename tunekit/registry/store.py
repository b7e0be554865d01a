"""The registry database: one SQLite file under `$TUNEKIT_HOME/registry/`, its schema and migrations.

Tables (migrations recorded in `_migrations`, the `simonw/llm` pattern; see `MIGRATIONS`):

- `versions`: one immutable row per registered version (`model`, `version` = 1, 2, ...). Triggers
  refuse every UPDATE and DELETE, so a version cannot change once it is visible.
- `aliases`: the current holder of each (model, alias); one row each, so one holder each.
- `alias_history`: every alias change (promote or rollback): from, to, when, OS user, reason,
  forced flag and the gate evidence as JSON. Append-only (triggers again).
- `protected_aliases`: aliases that need `--force` and a reason to change; model `*` means every model.

The database is in WAL mode (readers never wait for a writer) and every change is one
`BEGIN IMMEDIATE` transaction: the write lock is taken before anything is read, so two
processes promoting at once are serialised and each sees the other's result.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tunekit.errors import RegistryError

BUSY_TIMEOUT_MS = 30_000
MIGRATIONS: list[tuple[str, str]] = [
    (
        "001_versions_aliases_history",
        """
        CREATE TABLE versions (
            id INTEGER PRIMARY KEY,
            model TEXT NOT NULL,
            version INTEGER NOT NULL,
            created REAL NOT NULL,
            user TEXT,
            note TEXT,
            run_dir TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('adapter', 'full')),
            digest TEXT NOT NULL,
            artifact_fingerprint TEXT,
            store_path TEXT NOT NULL,
            files TEXT NOT NULL,
            base_model TEXT,
            data_hashes TEXT,
            recipe_sha256 TEXT,
            git TEXT,
            packages TEXT,
            metrics TEXT,
            verdict TEXT,
            eval TEXT,
            exports TEXT,
            quant_report TEXT,
            parent_id INTEGER REFERENCES versions (id),
            parent_reason TEXT,
            UNIQUE (model, version)
        );
        CREATE INDEX versions_digest ON versions (digest);
        CREATE INDEX versions_fingerprint ON versions (artifact_fingerprint);
        CREATE INDEX versions_parent ON versions (parent_id);
        CREATE TRIGGER versions_immutable_update BEFORE UPDATE ON versions
            BEGIN SELECT RAISE(ABORT, 'registry versions are immutable'); END;
        CREATE TRIGGER versions_immutable_delete BEFORE DELETE ON versions
            BEGIN SELECT RAISE(ABORT, 'registry versions are immutable'); END;
        CREATE TABLE aliases (
            model TEXT NOT NULL,
            alias TEXT NOT NULL,
            version_id INTEGER NOT NULL REFERENCES versions (id),
            updated REAL NOT NULL,
            history_id INTEGER NOT NULL,
            PRIMARY KEY (model, alias)
        );
        CREATE TABLE alias_history (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            model TEXT NOT NULL,
            alias TEXT NOT NULL,
            action TEXT NOT NULL CHECK (action IN ('promote', 'rollback')),
            from_version_id INTEGER REFERENCES versions (id),
            to_version_id INTEGER NOT NULL REFERENCES versions (id),
            created REAL NOT NULL,
            user TEXT,
            reason TEXT,
            forced INTEGER NOT NULL DEFAULT 0 CHECK (forced IN (0, 1)),
            evidence TEXT
        );
        CREATE INDEX alias_history_model_alias ON alias_history (model, alias, id);
        CREATE TRIGGER alias_history_append_only_update BEFORE UPDATE ON alias_history
            BEGIN SELECT RAISE(ABORT, 'alias history is append-only'); END;
        CREATE TRIGGER alias_history_append_only_delete BEFORE DELETE ON alias_history
            BEGIN SELECT RAISE(ABORT, 'alias history is append-only'); END;
        CREATE TABLE protected_aliases (
            model TEXT NOT NULL,
            alias TEXT NOT NULL,
            created REAL NOT NULL,
            user TEXT,
            PRIMARY KEY (model, alias)
        );
        """,
    ),
]
SCHEMA_VERSION = len(MIGRATIONS)


def registry_root(home: Path | None = None) -> Path:
    """`<home>/registry`, home defaulting to `$TUNEKIT_HOME` (the database and the artifact store live there)."""
    from tunekit.models.loading import tunekit_home

    return (Path(home) if home is not None else tunekit_home()) / "registry"


def db_path(root: Path) -> Path:
    return root / "registry.db"


def connect(root: Path) -> sqlite3.Connection:
    """An open, migrated connection to the registry under `root` (created on first use)."""
    root.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(db_path(root), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)  # explicit transactions
    connection.row_factory = sqlite3.Row
    connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA foreign_keys = ON")
    migrate(connection)
    return connection


@contextmanager
def transaction(connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction, lock taken up front (BEGIN IMMEDIATE): all of it is written, or none."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield connection
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def migrate(connection: sqlite3.Connection) -> int:
    """Apply the migrations this database lacks, each in its own transaction; the schema version."""
    connection.execute("CREATE TABLE IF NOT EXISTS _migrations (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, applied REAL NOT NULL)")
    done = {row[0] for row in connection.execute("SELECT name FROM _migrations")}
    unknown = done - {name for name, _ in MIGRATIONS}
    if unknown:
        raise RegistryError(
            f"the registry database was written by a newer tunekit (migrations {', '.join(sorted(unknown))})",
            hint="upgrade tunekit, or point TUNEKIT_HOME at another registry",
        )
    for number, (name, sql) in enumerate(MIGRATIONS, start=1):
        if name in done:
            continue
        with transaction(connection):
            # Another process may have applied it between our read and our lock.
            if connection.execute("SELECT 1 FROM _migrations WHERE name = ?", (name,)).fetchone() is None:
                for statement in _statements(sql):  # executescript would COMMIT mid-transaction
                    connection.execute(statement)
                connection.execute("INSERT INTO _migrations (id, name, applied) VALUES (?, ?, ?)", (number, name, time.time()))
    return SCHEMA_VERSION


def _statements(sql: str) -> list[str]:
    """Split a migration into statements; a trigger body's `;` stays inside its BEGIN ... END."""
    statements, current = [], []
    for line in sql.strip().splitlines():
        current.append(line)
        text = "\n".join(current).strip()
        if text.endswith(";") and sqlite3.complete_statement(text):
            statements.append(text)
            current = []
    if "\n".join(current).strip():
        statements.append("\n".join(current).strip())
    return statements


def applied_migrations(connection: sqlite3.Connection) -> list[dict]:
    return [dict(row) for row in connection.execute("SELECT id, name, applied FROM _migrations ORDER BY id")]
