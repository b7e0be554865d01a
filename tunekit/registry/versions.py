"""Versions: register a run, resolve `NAME[@VERSION|@ALIAS]`, list, lineage, verify.

`register` copies the run's files into the store first and makes the version visible last, in one
transaction that also picks its number (see the backend: `tunekit.registry.backend`), so a
register that dies half-way leaves no version and two registers at once get different numbers.
Every function takes `uri` (default `$TUNEKIT_REGISTRY_URI`; none: the local SQLite registry).
"""

from __future__ import annotations

import time
from pathlib import Path

from tunekit.errors import RegistryError
from tunekit.registry import artifacts
from tunekit.registry.backend import RegistryBackend, open_backend
from tunekit.registry.collect import RunFacts, collect
from tunekit.registry.records import Ref, VerifyReport, VersionRecord, check_name, os_user, parse_ref
from tunekit.runs import RunPaths

__all__ = ["lineage", "list_versions", "os_user", "register", "resolve", "verify", "verify_version"]


def register(run_dir: Path, *, name: str | None = None, note: str | None = None, parent: str | None = None,
             home: Path | None = None, uri: str | None = None) -> VersionRecord:
    """Register the run in `run_dir` as the next version of model `name` (default: the run's folder name)."""
    run = RunPaths(Path(run_dir).resolve())
    model = check_name(name or run.root.name, "model name")
    facts = collect(run)
    backend = open_backend(home, uri)
    try:
        explicit_parent = backend.record(parse_ref(parent)) if parent else None
        tree = backend.store_files(artifacts.run_sources(run, facts.artifact_dir))
        prefix = facts.artifact_dir.relative_to(run.root).as_posix()
        fields = {
            "created": time.time(), "user": os_user(), "note": note, "run_dir": str(run.root), "kind": facts.kind,
            "digest": artifacts.subtree_digest(tree.files, prefix), "artifact_fingerprint": facts.artifact_fingerprint,
            "files": [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in tree.files],
            "base_model": facts.base_model, "data_hashes": facts.data_hashes, "recipe_sha256": facts.recipe_sha256,
            "git": facts.git, "packages": facts.packages, "metrics": facts.metrics, "verdict": facts.verdict, "eval": facts.eval,
            "exports": [f.path for f in tree.files if f.path.startswith("export/")], "quant_report": facts.quant_report,
        }
        with backend.transaction():
            parent_record, parent_reason = _parent(backend, facts, explicit_parent)
            number = backend.add_version(model, fields, tree, parent_record, parent_reason)
        return backend.record(Ref(model, version=number))
    finally:
        backend.close()


def _parent(backend: RegistryBackend, facts: RunFacts, explicit: VersionRecord | None) -> tuple[VersionRecord | None, str | None]:
    """The parent version: the one named with --parent, else the registered version the run started from (init_from)."""
    if explicit is not None:
        return explicit, "explicit --parent"
    if not facts.init_from:
        return None, None
    init = facts.init_from
    path = Path(init["path"])
    candidates = [str(path), str(path.parent)] if path.name in ("adapter", "model") else [str(path)]
    found = backend.find_parent(init.get("sha256"), candidates)
    return (found, f"init_from {init['path']}") if found else (None, None)


def resolve(ref: str | Ref, *, home: Path | None = None, uri: str | None = None, fetch: bool = True) -> VersionRecord:
    """The version `NAME@ALIAS`, `NAME@VERSION` or `NAME` (its latest version) names, with its stored path.

    From an MLflow registry the stored files are downloaded into a local copy first (once per digest,
    checked against the recorded digests); `fetch=False` only reads the record."""
    ref = parse_ref(ref) if isinstance(ref, str) else ref
    backend = open_backend(home, uri)
    try:
        record = backend.record(ref)
        return backend.fetch(record) if fetch else record
    finally:
        backend.close()


def list_versions(model: str | None = None, *, home: Path | None = None, uri: str | None = None) -> list[VersionRecord]:
    """Every version (of `model`, when given), oldest first, with the aliases each holds."""
    backend = open_backend(home, uri)
    try:
        return backend.records(model)
    finally:
        backend.close()


def lineage(ref: str, *, home: Path | None = None, uri: str | None = None) -> dict:
    """{"version": ..., "ancestors": [parent, grandparent, ...], "children": [...]} (records), across models."""
    backend = open_backend(home, uri)
    try:
        record = backend.record(parse_ref(ref))
        ancestors, seen, current = [], {record.ref}, record
        while current.parent is not None and current.parent not in seen:
            seen.add(current.parent)
            current = backend.record(parse_ref(current.parent))
            ancestors.append(current)
        return {"version": record, "ancestors": ancestors, "children": backend.children(record)}
    finally:
        backend.close()


def verify(ref: str | None = None, *, home: Path | None = None, uri: str | None = None) -> VerifyReport:
    """Re-hash the stored files of one version, of every version of a model, or of the whole registry
    (from MLflow: downloaded again from its artifact store, not the local copy)."""
    backend = open_backend(home, uri)
    try:
        if ref is None:
            records = backend.records()
        else:
            parsed = parse_ref(ref)
            records = [backend.record(parsed)] if parsed.version is not None or parsed.alias else backend.records(parsed.model)
            if not records:
                raise RegistryError(f"no model named '{parsed.model}' in the registry")
        return VerifyReport({r.ref: backend.verify(r) for r in records})
    finally:
        backend.close()


def verify_version(record: VersionRecord) -> list[str]:
    """Problems of one version's local stored files (empty when intact): what a server checks before loading it."""
    return artifacts.verify_tree(record.store_path, record.files)
