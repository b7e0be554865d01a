"""The model registry: versions with lineage and artifact digests, aliases, promotion through gates, rollback.

SQLite under `$TUNEKIT_HOME/registry/` (see `store`), artifacts in a content-addressed store
(`artifacts`); or an MLflow tracking server when `uri=` / `$TUNEKIT_REGISTRY_URI` names one
(`backend`, `mlflow_backend`). What a server needs: `resolve("NAME@ALIAS")` for the version record and the path of
its stored files (`record.artifact_path`), `verify_version(record)` before loading it, and
`alias_version(NAME, ALIAS)` to poll an alias cheaply.
"""

from tunekit.registry.aliases import alias_version, ever_held, history, promote, protect, protected_aliases, rollback, stage_of
from tunekit.registry.promotion import DEFAULT_GATES
from tunekit.registry.records import AliasChange, PromotionResult, Ref, VerifyReport, VersionRecord, parse_ref
from tunekit.registry.versions import lineage, list_versions, register, resolve, verify, verify_version

__all__ = [
    "DEFAULT_GATES", "AliasChange", "PromotionResult", "Ref", "VerifyReport", "VersionRecord", "alias_version", "ever_held", "history",
    "lineage", "list_versions", "parse_ref", "promote", "protect", "protected_aliases", "register", "resolve", "rollback",
    "stage_of", "verify", "verify_version",
]
