"""Where the registry keeps its facts: the small interface both stores implement, and how one is chosen.

`versions` and `aliases` hold the registry's rules (numbering, lineage, gates, overrides, the
rollback stack); a backend only stores and reads records. Two implement it:

- `SqliteBackend` (the default, no server): one SQLite file and a content-addressed artifact store
  under `$TUNEKIT_HOME/registry/`.
- `MlflowBackend` (a shared registry for a team): an MLflow tracking server, chosen by
  `--registry-uri http://...` or `$TUNEKIT_REGISTRY_URI`; versions are MLflow model versions with
  tags, aliases are MLflow aliases, files live in its artifact store (extra tunekit[mlflow]).
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

from tunekit.errors import RegistryError
from tunekit.registry.artifacts import StoredTree
from tunekit.registry.records import AliasChange, Ref, VersionRecord

URI_ENV = "TUNEKIT_REGISTRY_URI"


class RegistryBackend(Protocol):
    """What the registry's rules need from a store. Records are read fresh on every call (no caching of holders)."""

    root: Path  # a local folder: SQLite's registry, or MLflow's local copy of stored files

    def close(self) -> None: ...

    def transaction(self) -> AbstractContextManager[None]:
        """Reads and writes inside it are applied together and serialised against other writers, where the store can."""

    def record(self, ref: Ref) -> VersionRecord:
        """The version `ref` names (a version, an alias's holder, the latest); RegistryError naming what is missing."""

    def records(self, model: str | None = None) -> list[VersionRecord]:
        """Every version (of `model`), oldest first."""

    def children(self, record: VersionRecord) -> list[VersionRecord]: ...

    def find_parent(self, fingerprint: str | None, run_dirs: list[str]) -> VersionRecord | None:
        """The version whose trained artifact has `fingerprint` (first registered), else the latest registered from one of `run_dirs`."""

    def store_files(self, sources: dict[str, Path]) -> StoredTree:
        """Copy a version's files (relative path -> source) into the store's local content-addressed folder."""

    def add_version(self, model: str, fields: dict, tree: StoredTree, parent: VersionRecord | None, parent_reason: str | None) -> int:
        """Make the next version of `model` visible (last step of register); its number."""

    def holder(self, model: str, alias: str) -> VersionRecord | None: ...

    def changes(self, model: str, alias: str | None = None) -> list[AliasChange]:
        """The alias history, oldest first."""

    def write_change(self, model: str, alias: str, action: str, from_record: VersionRecord | None, to_record: VersionRecord,
                     reason: str | None, forced: bool, evidence: dict) -> int:
        """Give the alias to `to_record` and append the history row; the change id."""

    def alias_version(self, model: str, alias: str) -> tuple[int, int] | None:
        """(version, change id) of the alias's holder, or None: cheap, read-only, for polling."""

    def ever_held(self) -> set[str]: ...

    def is_protected(self, model: str, alias: str) -> bool: ...

    def set_protected(self, model: str, alias: str, protected: bool) -> None: ...

    def protected_list(self) -> list[dict]: ...

    def fetch(self, record: VersionRecord) -> VersionRecord:
        """Make the version's files readable at `record.store_path` (a no-op where they are local)."""

    def missing_files(self, record: VersionRecord) -> str | None:
        """A cheap check that the stored files exist: None, or why they are gone."""

    def verify(self, record: VersionRecord) -> list[str]:
        """Re-hash the stored files against the digests recorded at register time (what the store holds, not a cache)."""


def registry_uri(uri: str | None = None) -> str | None:
    """The registry URI in force: the one given, else `$TUNEKIT_REGISTRY_URI`; None means the local SQLite registry."""
    value = (uri if uri is not None else os.environ.get(URI_ENV, "")).strip()
    return value or None


def open_backend(home: Path | None = None, uri: str | None = None) -> RegistryBackend:
    """The backend for `uri` (see `registry_uri`): SQLite under `home`, or an MLflow tracking server."""
    from tunekit.registry.store import registry_root

    chosen = registry_uri(uri)
    if chosen is None:
        from tunekit.registry.sqlite_backend import SqliteBackend

        return SqliteBackend(registry_root(home))
    if chosen.startswith(("http://", "https://")):
        from tunekit.registry.mlflow_backend import MlflowBackend

        return MlflowBackend(chosen, registry_root(home))
    raise RegistryError(f"registry URI '{chosen}' is not supported",
                        hint=f"use an MLflow tracking server (http://host:port), or unset --registry-uri / ${URI_ENV} for the local SQLite registry")
