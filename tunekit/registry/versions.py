"""Versions: register a run, resolve `NAME[@VERSION|@ALIAS]`, list, lineage, verify.

`register` copies the run's files into the content-addressed store first and makes the version
visible last, in one transaction that also picks its number, so a register that dies half-way
leaves no version and two registers at once get different numbers.
"""

from __future__ import annotations

import getpass
import json
import sqlite3
import time
from pathlib import Path

from tunekit.errors import RegistryError
from tunekit.registry import artifacts
from tunekit.registry.collect import RunFacts, collect
from tunekit.registry.records import Ref, VerifyReport, VersionRecord, check_name, parse_ref, version_from_row
from tunekit.registry.store import connect, registry_root, transaction
from tunekit.runs import RunPaths


def os_user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return None


def _dumps(value) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, default=str)


def register(run_dir: Path, *, name: str | None = None, note: str | None = None, parent: str | None = None,
             home: Path | None = None) -> VersionRecord:
    """Register the run in `run_dir` as the next version of model `name` (default: the run's folder name)."""
    run = RunPaths(Path(run_dir).resolve())
    model = check_name(name or run.root.name, "model name")
    facts = collect(run)
    root = registry_root(home)
    connection = connect(root)
    try:
        explicit_parent = version_row(connection, parse_ref(parent)) if parent else None
        tree = artifacts.store(root, artifacts.run_sources(run, facts.artifact_dir))
        prefix = facts.artifact_dir.relative_to(run.root).as_posix()
        with transaction(connection):
            parent_id, parent_reason = _parent(connection, facts, explicit_parent)
            number = connection.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE model = ?", (model,)).fetchone()[0]
            connection.execute(
                """INSERT INTO versions (model, version, created, user, note, run_dir, kind, digest, artifact_fingerprint,
                   store_path, files, base_model, data_hashes, recipe_sha256, git, packages, metrics, verdict, eval, exports,
                   quant_report, parent_id, parent_reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (model, number, time.time(), os_user(), note, str(run.root), facts.kind, artifacts.subtree_digest(tree.files, prefix),
                 facts.artifact_fingerprint, tree.path.relative_to(root).as_posix(),
                 _dumps([{"path": f.path, "sha256": f.sha256, "size": f.size} for f in tree.files]),
                 _dumps(facts.base_model), _dumps(facts.data_hashes), facts.recipe_sha256, _dumps(facts.git),
                 _dumps(facts.packages), _dumps(facts.metrics), facts.verdict, _dumps(facts.eval),
                 _dumps([f.path for f in tree.files if f.path.startswith("export/")]), _dumps(facts.quant_report),
                 parent_id, parent_reason),
            )
        return to_record(connection, root, version_row(connection, Ref(model, version=number)))
    finally:
        connection.close()


def _parent(connection: sqlite3.Connection, facts: RunFacts, explicit: sqlite3.Row | None) -> tuple[int | None, str | None]:
    """The parent version: the one named with --parent, else the registered version the run started from (init_from)."""
    if explicit is not None:
        return explicit["id"], "explicit --parent"
    if not facts.init_from:
        return None, None
    init = facts.init_from
    path = Path(init["path"])
    candidates = [str(path), str(path.parent)] if path.name in ("adapter", "model") else [str(path)]
    row = None
    if init.get("sha256"):
        row = connection.execute("SELECT id FROM versions WHERE artifact_fingerprint = ? ORDER BY id LIMIT 1", (init["sha256"],)).fetchone()
    if row is None:
        marks = ",".join("?" * len(candidates))
        row = connection.execute(f"SELECT id FROM versions WHERE run_dir IN ({marks}) ORDER BY id DESC LIMIT 1", candidates).fetchone()
    return (row["id"], f"init_from {init['path']}") if row else (None, None)


def version_row(connection: sqlite3.Connection, ref: Ref) -> sqlite3.Row:
    """The row `ref` names: a version, an alias's holder, or (bare name) the latest version."""
    if ref.alias is not None:
        row = connection.execute(
            "SELECT v.* FROM aliases a JOIN versions v ON v.id = a.version_id WHERE a.model = ? AND a.alias = ?", (ref.model, ref.alias)
        ).fetchone()
    elif ref.version is not None:
        row = connection.execute("SELECT * FROM versions WHERE model = ? AND version = ?", (ref.model, ref.version)).fetchone()
    else:
        row = connection.execute("SELECT * FROM versions WHERE model = ? ORDER BY version DESC LIMIT 1", (ref.model,)).fetchone()
    if row is None:
        raise RegistryError(_missing(connection, ref), hint="`tunekit registry list` shows the registered models and aliases")
    return row


def _missing(connection: sqlite3.Connection, ref: Ref) -> str:
    if connection.execute("SELECT 1 FROM versions WHERE model = ?", (ref.model,)).fetchone() is None:
        return f"no model named '{ref.model}' in the registry"
    if ref.alias is not None:
        return f"alias '{ref.alias}' of model '{ref.model}' is not set"
    return f"model '{ref.model}' has no version {ref.version}"


def to_record(connection: sqlite3.Connection, root: Path, row: sqlite3.Row) -> VersionRecord:
    parent = None
    if row["parent_id"] is not None:
        p = connection.execute("SELECT model, version FROM versions WHERE id = ?", (row["parent_id"],)).fetchone()
        parent = f"{p['model']}@{p['version']}"
    aliases = tuple(r[0] for r in connection.execute("SELECT alias FROM aliases WHERE version_id = ? ORDER BY alias", (row["id"],)))
    return version_from_row(row, root, parent, aliases)


def resolve(ref: str | Ref, *, home: Path | None = None) -> VersionRecord:
    """The version `NAME@ALIAS`, `NAME@VERSION` or `NAME` (its latest version) names, with its stored path."""
    ref = parse_ref(ref) if isinstance(ref, str) else ref
    root = registry_root(home)
    connection = connect(root)
    try:
        return to_record(connection, root, version_row(connection, ref))
    finally:
        connection.close()


def list_versions(model: str | None = None, *, home: Path | None = None) -> list[VersionRecord]:
    """Every version (of `model`, when given), oldest first, with the aliases each holds."""
    root = registry_root(home)
    connection = connect(root)
    try:
        sql, args = ("SELECT * FROM versions WHERE model = ? ORDER BY version", (model,)) if model else (
            "SELECT * FROM versions ORDER BY model, version", ())
        return [to_record(connection, root, row) for row in connection.execute(sql, args).fetchall()]
    finally:
        connection.close()


def lineage(ref: str, *, home: Path | None = None) -> dict:
    """{"version": ..., "ancestors": [parent, grandparent, ...], "children": [...]} (records), across models."""
    root = registry_root(home)
    connection = connect(root)
    try:
        row = version_row(connection, parse_ref(ref))
        ancestors, seen, current = [], {row["id"]}, row
        while current["parent_id"] is not None and current["parent_id"] not in seen:
            seen.add(current["parent_id"])
            current = connection.execute("SELECT * FROM versions WHERE id = ?", (current["parent_id"],)).fetchone()
            ancestors.append(to_record(connection, root, current))
        children = [to_record(connection, root, r) for r in
                    connection.execute("SELECT * FROM versions WHERE parent_id = ? ORDER BY id", (row["id"],)).fetchall()]
        return {"version": to_record(connection, root, row), "ancestors": ancestors, "children": children}
    finally:
        connection.close()


def verify(ref: str | None = None, *, home: Path | None = None) -> VerifyReport:
    """Re-hash the stored files of one version, of every version of a model, or of the whole registry."""
    if ref is None:
        records = list_versions(home=home)
    else:
        parsed = parse_ref(ref)
        records = [resolve(parsed, home=home)] if parsed.version is not None or parsed.alias else list_versions(parsed.model, home=home)
        if not records:
            raise RegistryError(f"no model named '{parsed.model}' in the registry")
    return VerifyReport({r.ref: artifacts.verify_tree(r.store_path, r.files) for r in records})


def verify_version(record: VersionRecord) -> list[str]:
    """Problems of one version's stored files (empty when intact): what a server checks before loading it."""
    return artifacts.verify_tree(record.store_path, record.files)
