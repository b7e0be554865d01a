"""The default registry backend: the SQLite database of `store` and the local content-addressed artifact store.

Every change runs inside `transaction()` (BEGIN IMMEDIATE: the write lock is taken before anything
is read), so what the rules in `versions` and `aliases` read and write there is one atomic step.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tunekit.errors import RegistryError
from tunekit.registry import artifacts
from tunekit.registry.records import AliasChange, Ref, VersionRecord, os_user, version_from_row
from tunekit.registry.store import connect, db_path, transaction


def _dumps(value) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, default=str)


class SqliteBackend:
    def __init__(self, root: Path):
        self.root = root
        self._connection: sqlite3.Connection | None = None

    @property
    def connection(self) -> sqlite3.Connection:
        if self._connection is None:  # opened (created, migrated) on first use: alias_version never creates one
            self._connection = connect(self.root)
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with transaction(self.connection):
            yield

    # versions

    def _row(self, ref: Ref) -> sqlite3.Row:
        if ref.alias is not None:
            row = self.connection.execute(
                "SELECT v.* FROM aliases a JOIN versions v ON v.id = a.version_id WHERE a.model = ? AND a.alias = ?", (ref.model, ref.alias)
            ).fetchone()
        elif ref.version is not None:
            row = self.connection.execute("SELECT * FROM versions WHERE model = ? AND version = ?", (ref.model, ref.version)).fetchone()
        else:
            row = self.connection.execute("SELECT * FROM versions WHERE model = ? ORDER BY version DESC LIMIT 1", (ref.model,)).fetchone()
        if row is None:
            raise RegistryError(self._missing(ref), hint="`tunekit registry list` shows the registered models and aliases")
        return row

    def _missing(self, ref: Ref) -> str:
        if self.connection.execute("SELECT 1 FROM versions WHERE model = ?", (ref.model,)).fetchone() is None:
            return f"no model named '{ref.model}' in the registry"
        if ref.alias is not None:
            return f"alias '{ref.alias}' of model '{ref.model}' is not set"
        return f"model '{ref.model}' has no version {ref.version}"

    def _record(self, row: sqlite3.Row) -> VersionRecord:
        parent = None
        if row["parent_id"] is not None:
            p = self.connection.execute("SELECT model, version FROM versions WHERE id = ?", (row["parent_id"],)).fetchone()
            parent = f"{p['model']}@{p['version']}"
        aliases = tuple(r[0] for r in self.connection.execute("SELECT alias FROM aliases WHERE version_id = ? ORDER BY alias", (row["id"],)))
        return version_from_row(row, self.root, parent, aliases)

    def record(self, ref: Ref) -> VersionRecord:
        return self._record(self._row(ref))

    def records(self, model: str | None = None) -> list[VersionRecord]:
        sql, args = ("SELECT * FROM versions WHERE model = ? ORDER BY version", (model,)) if model else (
            "SELECT * FROM versions ORDER BY model, version", ())
        return [self._record(row) for row in self.connection.execute(sql, args).fetchall()]

    def children(self, record: VersionRecord) -> list[VersionRecord]:
        rows = self.connection.execute("SELECT * FROM versions WHERE parent_id = ? ORDER BY id", (record.id,)).fetchall()
        return [self._record(r) for r in rows]

    def find_parent(self, fingerprint: str | None, run_dirs: list[str]) -> VersionRecord | None:
        row = None
        if fingerprint:
            row = self.connection.execute("SELECT * FROM versions WHERE artifact_fingerprint = ? ORDER BY id LIMIT 1", (fingerprint,)).fetchone()
        if row is None and run_dirs:
            marks = ",".join("?" * len(run_dirs))
            row = self.connection.execute(f"SELECT * FROM versions WHERE run_dir IN ({marks}) ORDER BY id DESC LIMIT 1", run_dirs).fetchone()
        return self._record(row) if row is not None else None

    def store_files(self, sources: dict[str, Path]) -> artifacts.StoredTree:
        return artifacts.store(self.root, sources)

    def add_version(self, model: str, fields: dict, tree: artifacts.StoredTree, parent: VersionRecord | None,
                    parent_reason: str | None) -> int:
        number = self.connection.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE model = ?", (model,)).fetchone()[0]
        self.connection.execute(
            """INSERT INTO versions (model, version, created, user, note, run_dir, kind, digest, artifact_fingerprint,
               store_path, files, base_model, data_hashes, recipe_sha256, git, packages, metrics, verdict, eval, exports,
               quant_report, parent_id, parent_reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (model, number, fields["created"], fields["user"], fields["note"], fields["run_dir"], fields["kind"], fields["digest"],
             fields["artifact_fingerprint"], tree.path.relative_to(self.root).as_posix(), _dumps(fields["files"]),
             _dumps(fields["base_model"]), _dumps(fields["data_hashes"]), fields["recipe_sha256"], _dumps(fields["git"]),
             _dumps(fields["packages"]), _dumps(fields["metrics"]), fields["verdict"], _dumps(fields["eval"]),
             _dumps(fields["exports"]), _dumps(fields["quant_report"]), parent.id if parent else None, parent_reason),
        )
        return number

    # aliases

    def holder(self, model: str, alias: str) -> VersionRecord | None:
        row = self.connection.execute(
            "SELECT v.* FROM aliases a JOIN versions v ON v.id = a.version_id WHERE a.model = ? AND a.alias = ?", (model, alias)
        ).fetchone()
        return self._record(row) if row is not None else None

    def changes(self, model: str, alias: str | None = None) -> list[AliasChange]:
        rows = self.connection.execute(
            """SELECT h.*, f.version AS from_version, t.version AS to_version FROM alias_history h
               LEFT JOIN versions f ON f.id = h.from_version_id JOIN versions t ON t.id = h.to_version_id
               WHERE h.model = ? AND (? IS NULL OR h.alias = ?) ORDER BY h.id""", (model, alias, alias),
        ).fetchall()
        return [AliasChange(r["id"], r["model"], r["alias"], r["action"], r["from_version"], r["to_version"], r["created"],
                            r["user"], r["reason"], bool(r["forced"]), json.loads(r["evidence"]) if r["evidence"] else None)
                for r in rows]

    def write_change(self, model: str, alias: str, action: str, from_record: VersionRecord | None, to_record: VersionRecord,
                     reason: str | None, forced: bool, evidence: dict) -> int:
        now = time.time()
        cursor = self.connection.execute(
            """INSERT INTO alias_history (model, alias, action, from_version_id, to_version_id, created, user, reason, forced, evidence)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (model, alias, action, from_record.id if from_record else None, to_record.id, now, os_user(), reason, int(forced),
             json.dumps(evidence, default=str)),
        )
        self.connection.execute(
            """INSERT INTO aliases (model, alias, version_id, updated, history_id) VALUES (?, ?, ?, ?, ?)
               ON CONFLICT (model, alias) DO UPDATE SET version_id = excluded.version_id, updated = excluded.updated,
               history_id = excluded.history_id""",
            (model, alias, to_record.id, now, cursor.lastrowid),
        )
        return cursor.lastrowid

    def alias_version(self, model: str, alias: str) -> tuple[int, int] | None:
        path = db_path(self.root)
        if not path.is_file():
            return None
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)  # read-only: a poller never migrates or locks
        try:
            row = connection.execute(
                "SELECT v.version, a.history_id FROM aliases a JOIN versions v ON v.id = a.version_id WHERE a.model = ? AND a.alias = ?",
                (model, alias),
            ).fetchone()
            return (row[0], row[1]) if row else None
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):  # created, not migrated yet
                return None
            raise
        finally:
            connection.close()

    def ever_held(self) -> set[str]:
        rows = self.connection.execute("SELECT DISTINCT v.model, v.version FROM alias_history h JOIN versions v ON v.id = h.to_version_id")
        return {f"{r['model']}@{r['version']}" for r in rows}

    def is_protected(self, model: str, alias: str) -> bool:
        return self.connection.execute(
            "SELECT 1 FROM protected_aliases WHERE alias = ? AND model IN (?, '*')", (alias, model)
        ).fetchone() is not None

    def set_protected(self, model: str, alias: str, protected: bool) -> None:
        with self.transaction():
            if protected:
                self.connection.execute("INSERT OR IGNORE INTO protected_aliases (model, alias, created, user) VALUES (?, ?, ?, ?)",
                                        (model, alias, time.time(), os_user()))
            else:
                self.connection.execute("DELETE FROM protected_aliases WHERE model = ? AND alias = ?", (model, alias))

    def protected_list(self) -> list[dict]:
        return [dict(r) for r in self.connection.execute("SELECT model, alias, created, user FROM protected_aliases ORDER BY model, alias")]

    # stored files

    def fetch(self, record: VersionRecord) -> VersionRecord:
        return record

    def missing_files(self, record: VersionRecord) -> str | None:
        return None if record.store_path.is_dir() else f"its stored files are gone ({record.store_path})"  # cheap; `verify` re-hashes

    def verify(self, record: VersionRecord) -> list[str]:
        return artifacts.verify_tree(record.store_path, record.files)
