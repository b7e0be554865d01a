"""The registry on an MLflow tracking server (`--registry-uri http://...` or `$TUNEKIT_REGISTRY_URI`; extra tunekit[mlflow]).

How tunekit's registry maps onto MLflow's:

- A model is an MLflow registered model of the same name; version N is MLflow model version N
  (MLflow numbers them). Every field of tunekit's version record is a model-version tag
  `tunekit.<field>` (JSON for structured values), written in the same request that creates the
  version, so a version is never visible without its record.
- A version's files (the trained adapter/ or model/, export/, eval/, recipe, manifest, test set)
  are logged as the artifacts of one MLflow run in the experiment `tunekit-registry`, uploaded
  before the version is created; the version's `source` is that run's artifact URI. A register
  killed after the upload leaves an orphan run and no version.
- Aliases are MLflow aliases (`set_registered_model_alias`).
- MLflow keeps no alias history, so each change is one registered-model tag
  `tunekit.history.<time_ns>.<random>` holding the change as JSON (from, to, who, reason, forced,
  gate evidence). One tag per change, never a shared list rewritten, so two writers cannot erase
  each other's entry; the history is ordered by that key (the writers' clocks). Rollback replays it.
- Protection: tag `tunekit.protected.<alias>` on the registered model, or on the experiment for
  every model (`protect ALIAS`).
- Files are read from a local copy under `$TUNEKIT_HOME/registry/mlflow/<server>/artifacts/<sha256>/`,
  downloaded once per digest and checked before it is kept; `verify` downloads again and re-hashes.

Limits, honestly: MLflow has no transactions or compare-and-set. A promote re-reads the alias
just before writing and refuses if it moved, which narrows the race but does not close it: two
promotes of one alias in the same instant can both be recorded with the same `from`, and the
alias ends with whichever write reached the server last. Tags and artifacts can be edited by
anyone with write access to the server; `verify` catches altered files, not an edited tag.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tunekit.errors import RegistryError
from tunekit.registry import artifacts
from tunekit.registry.records import AliasChange, Ref, VersionRecord, os_user

EXPERIMENT = "tunekit-registry"
TAG = "tunekit."
HISTORY = "tunekit.history."
PROTECTED = "tunekit.protected."
_JSON_FIELDS = ("files", "base_model", "data_hashes", "git", "packages", "metrics", "eval", "exports", "quant_report")
_TEXT_FIELDS = ("user", "note", "run_dir", "kind", "digest", "artifact_fingerprint", "recipe_sha256", "verdict", "parent",
                "parent_reason", "store_digest")
_checked: set[str] = set()  # servers found reachable in this process (a poller checks once)


def _client_class():
    # MLflow prints run URLs to stdout and draws download bars: neither belongs in `--json` output.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        from mlflow import MlflowClient
    except ImportError:
        raise RegistryError("a registry URI (--registry-uri / $TUNEKIT_REGISTRY_URI) needs MLflow, which is not installed",
                            hint="pip install 'tunekit[mlflow]', or unset the registry URI to use the local SQLite registry") from None
    return MlflowClient


def _check_reachable(uri: str) -> None:
    if uri in _checked:
        return
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=10).raise_for_status()
    except requests.RequestException as exc:
        raise RegistryError(f"cannot reach the MLflow tracking server at {uri}: {exc.__class__.__name__}",
                            hint="start it (`mlflow server ...`) or fix --registry-uri / $TUNEKIT_REGISTRY_URI") from None
    _checked.add(uri)


def _error_code(exc: Exception) -> str | None:
    return getattr(exc, "error_code", None)


def _as_registry_errors(cls):
    """Wrap the public methods: an MLflow error nobody handled becomes one RegistryError naming the server, not a traceback."""
    def wrap(method):
        @functools.wraps(method)
        def call(self, *args, **kwargs):
            from mlflow.exceptions import MlflowException

            try:
                return method(self, *args, **kwargs)
            except MlflowException as exc:
                raise RegistryError(f"the MLflow server at {self.uri} refused: {exc.message}",
                                    hint="check the server's log; `tunekit registry verify` re-checks the stored versions") from None
        return call

    for name, value in list(vars(cls).items()):
        if callable(value) and not name.startswith("_"):
            setattr(cls, name, wrap(value))
    return cls


@_as_registry_errors
class MlflowBackend:
    def __init__(self, uri: str, home_root: Path):
        import hashlib

        self.uri = uri.rstrip("/")
        self.root = home_root / "mlflow" / hashlib.sha256(self.uri.encode()).hexdigest()[:16]
        client_class = _client_class()  # a missing extra is said before any network error
        _check_reachable(self.uri)
        self.client = client_class(tracking_uri=self.uri, registry_uri=self.uri)

    def close(self) -> None:
        pass

    @contextmanager
    def transaction(self) -> Iterator[None]:
        yield  # MLflow has none: see the module's note on races

    # reading records

    def _registered(self, model: str):
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_registered_model(model)
        except MlflowException as exc:
            if _error_code(exc) == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise

    def _to_record(self, mv, aliases: dict[str, str]) -> VersionRecord | None:
        tags = mv.tags or {}
        if TAG + "digest" not in tags:
            return None  # a version not registered by tunekit
        data = {f: json.loads(tags[TAG + f]) if TAG + f in tags else None for f in _JSON_FIELDS}
        data.update({f: tags.get(TAG + f) for f in _TEXT_FIELDS})
        created = float(tags.get(TAG + "created") or mv.creation_timestamp / 1000)
        store_digest = data.pop("store_digest")
        data.pop("artifact_fingerprint")
        parent, parent_reason = data.pop("parent"), data.pop("parent_reason")
        held = tuple(sorted(a for a, v in aliases.items() if str(v) == str(mv.version)))
        return VersionRecord(id=int(mv.version), model=mv.name, version=int(mv.version), created=created,
                             store_path=self.root / "artifacts" / store_digest, parent=parent, parent_reason=parent_reason,
                             aliases=held, **data)

    def _versions(self, model: str | None = None) -> list:
        """Every MLflow model version (of `model`), with tags; paged."""
        found, token = [], None
        while True:
            page = self.client.search_model_versions(f"name = '{model}'" if model else None, page_token=token)
            found.extend(page)
            token = page.token
            if not token:
                return found

    def _aliases(self, names) -> dict[str, dict[str, str]]:
        registered = {name: self._registered(name) for name in set(names)}
        return {name: dict(found.aliases or {}) if found is not None else {} for name, found in registered.items()}

    def records(self, model: str | None = None) -> list[VersionRecord]:
        versions = self._versions(model)
        aliases = self._aliases(mv.name for mv in versions)
        records = [self._to_record(mv, aliases[mv.name]) for mv in versions]
        return sorted((r for r in records if r is not None), key=lambda r: (r.model, r.version))

    def record(self, ref: Ref) -> VersionRecord:
        from mlflow.exceptions import MlflowException

        registered = self._registered(ref.model)
        aliases = dict(registered.aliases or {}) if registered else {}
        mv = None
        if registered is not None:
            if ref.alias is not None:
                number = aliases.get(ref.alias)
            elif ref.version is not None:
                number = ref.version
            else:
                numbers = [r.version for r in self.records(ref.model)]
                number = max(numbers) if numbers else None
            if number is not None:
                try:
                    mv = self.client.get_model_version(ref.model, str(number))
                except MlflowException as exc:
                    if _error_code(exc) != "RESOURCE_DOES_NOT_EXIST":
                        raise
        record = self._to_record(mv, aliases) if mv is not None else None
        if record is None:
            raise RegistryError(self._missing(ref, registered), hint=f"`tunekit registry list --registry-uri {self.uri}` shows the registered models")
        return record

    def _missing(self, ref: Ref, registered) -> str:
        if registered is None or not self.records(ref.model):
            return f"no model named '{ref.model}' in the registry at {self.uri}"
        if ref.alias is not None:
            return f"alias '{ref.alias}' of model '{ref.model}' is not set"
        return f"model '{ref.model}' has no version {ref.version} registered by tunekit"

    def children(self, record: VersionRecord) -> list[VersionRecord]:
        return sorted((r for r in self.records() if r.parent == record.ref), key=lambda r: r.created)

    def find_parent(self, fingerprint: str | None, run_dirs: list[str]) -> VersionRecord | None:
        versions = [mv for mv in self._versions() if TAG + "digest" in (mv.tags or {})]
        versions.sort(key=lambda mv: float(mv.tags.get(TAG + "created") or 0))
        match = next((mv for mv in versions if fingerprint and mv.tags.get(TAG + "artifact_fingerprint") == fingerprint), None)
        if match is None:
            match = next((mv for mv in reversed(versions) if mv.tags.get(TAG + "run_dir") in run_dirs), None)
        return self.record(Ref(match.name, version=int(match.version))) if match is not None else None

    # registering

    def store_files(self, sources: dict[str, Path]) -> artifacts.StoredTree:
        return artifacts.store(self.root, sources)  # the local copy, hashed as written; uploaded by add_version

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(EXPERIMENT)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(EXPERIMENT)
        except MlflowException as exc:  # created by another process meanwhile
            if _error_code(exc) != "RESOURCE_ALREADY_EXISTS":
                raise
            return self.client.get_experiment_by_name(EXPERIMENT).experiment_id

    def _ensure_model(self, model: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(model, description="registered by tunekit")
        except MlflowException as exc:
            if _error_code(exc) != "RESOURCE_ALREADY_EXISTS":
                raise

    def add_version(self, model: str, fields: dict, tree: artifacts.StoredTree, parent: VersionRecord | None,
                    parent_reason: str | None) -> int:
        run = self.client.create_run(self._experiment_id(), tags={TAG + "model": model, TAG + "store_digest": tree.digest},
                                     run_name=f"{model}-{tree.digest[:12]}")
        self.client.log_artifacts(run.info.run_id, str(tree.path))
        self.client.set_terminated(run.info.run_id)
        self._ensure_model(model)
        values = {**fields, "parent": parent.ref if parent else None, "parent_reason": parent_reason, "store_digest": tree.digest}
        tags = {TAG + "created": repr(fields["created"])}
        for key, value in values.items():
            if value is not None:
                tags[TAG + key] = json.dumps(value, sort_keys=True, default=str) if key in _JSON_FIELDS else str(value)
        mv = self.client.create_model_version(model, source=run.info.artifact_uri, run_id=run.info.run_id, tags=tags,
                                              description=fields.get("note") or None, await_creation_for=0)
        return int(mv.version)

    # aliases and history

    def holder(self, model: str, alias: str) -> VersionRecord | None:
        registered = self._registered(model)
        if registered is None or alias not in (registered.aliases or {}):
            return None
        return self.record(Ref(model, alias=alias))

    @staticmethod
    def _history(model: str, tags: dict[str, str]) -> list[AliasChange]:
        keys = sorted(k for k in tags if k.startswith(HISTORY))
        changes = []
        for number, key in enumerate(keys, start=1):
            try:
                entry = json.loads(tags[key])
                entry["alias"], entry["action"], entry["to_version"], entry["created"]  # noqa: B018  (the fields a change needs)
            except (ValueError, KeyError, TypeError):
                raise RegistryError(f"alias history tag '{key}' of registered model '{model}' is not a tunekit change record",
                                    hint="it was edited outside tunekit: restore it, or delete that tag in MLflow") from None
            changes.append(AliasChange(number, model, entry["alias"], entry["action"], entry.get("from_version"), entry["to_version"],
                                       entry["created"], entry.get("user"), entry.get("reason"), bool(entry.get("forced")),
                                       entry.get("evidence")))
        return changes

    def changes(self, model: str, alias: str | None = None) -> list[AliasChange]:
        registered = self._registered(model)
        changes = self._history(model, dict(registered.tags or {})) if registered else []
        return [c for c in changes if alias is None or c.alias == alias]

    def write_change(self, model: str, alias: str, action: str, from_record: VersionRecord | None, to_record: VersionRecord,
                     reason: str | None, forced: bool, evidence: dict) -> int:
        now = self._registered(model)
        current = (now.aliases or {}).get(alias) if now else None
        expected = from_record.version if from_record else None
        if (int(current) if current is not None else None) != expected:
            raise RegistryError(f"'{model}@{alias}' changed while this {action} was checked (now version {current})",
                                hint=f"run the {action} again")
        created = time.time()
        entry = {"alias": alias, "action": action, "from_version": expected, "to_version": to_record.version, "created": created,
                 "user": os_user(), "reason": reason, "forced": forced, "evidence": evidence}
        key = f"{HISTORY}{time.time_ns():020d}.{uuid.uuid4().hex[:8]}"
        self.client.set_registered_model_tag(model, key, json.dumps(entry, default=str))
        self.client.set_registered_model_alias(model, alias, str(to_record.version))
        keys = sorted(k for k in (self._registered(model).tags or {}) if k.startswith(HISTORY))
        return keys.index(key) + 1

    def alias_version(self, model: str, alias: str) -> tuple[int, int] | None:
        registered = self._registered(model)
        version = (registered.aliases or {}).get(alias) if registered else None
        if version is None:
            return None
        changes = [c for c in self._history(model, dict(registered.tags or {})) if c.alias == alias]
        return int(version), (changes[-1].id if changes else 0)

    def _registered_models(self) -> list:
        found, token = [], None
        while True:
            page = self.client.search_registered_models(page_token=token)
            found.extend(page)
            token = page.token
            if not token:
                return found

    def ever_held(self) -> set[str]:
        return {f"{m.name}@{c.to_version}" for m in self._registered_models() for c in self._history(m.name, dict(m.tags or {}))}

    # protection

    def _experiment_tags(self) -> dict[str, str]:
        found = self.client.get_experiment_by_name(EXPERIMENT)
        return dict(found.tags or {}) if found is not None else {}

    def is_protected(self, model: str, alias: str) -> bool:
        registered = self._registered(model)
        return PROTECTED + alias in (registered.tags or {} if registered else {}) or PROTECTED + alias in self._experiment_tags()

    def set_protected(self, model: str, alias: str, protected: bool) -> None:
        from mlflow.exceptions import MlflowException

        key, value = PROTECTED + alias, json.dumps({"created": time.time(), "user": os_user()})
        if model == "*":
            experiment = self._experiment_id()
            setter = lambda: self.client.set_experiment_tag(experiment, key, value)  # noqa: E731
            deleter = lambda: self.client.delete_experiment_tag(experiment, key)  # noqa: E731
        else:
            self._ensure_model(model)
            setter = lambda: self.client.set_registered_model_tag(model, key, value)  # noqa: E731
            deleter = lambda: self.client.delete_registered_model_tag(model, key)  # noqa: E731
        if protected:
            setter()
            return
        try:
            deleter()
        except MlflowException as exc:  # was not protected
            if _error_code(exc) != "RESOURCE_DOES_NOT_EXIST":
                raise

    def protected_list(self) -> list[dict]:
        rows = [("*", k, v) for k, v in self._experiment_tags().items() if k.startswith(PROTECTED)]
        rows += [(m.name, k, v) for m in self._registered_models() for k, v in (m.tags or {}).items() if k.startswith(PROTECTED)]
        return sorted(({"model": model, "alias": key.removeprefix(PROTECTED), **json.loads(value)} for model, key, value in rows),
                      key=lambda r: (r["model"], r["alias"]))

    # stored files

    def _source_run(self, record: VersionRecord) -> str:
        return self.client.get_model_version(record.model, str(record.version)).run_id

    def _download(self, record: VersionRecord, target: Path) -> list[str]:
        """Download the version's artifacts into `target`; their problems against the recorded digests."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.download_artifacts(self._source_run(record), "", str(target))
        except (MlflowException, OSError) as exc:
            return [f"artifacts of {record.ref} could not be downloaded from {self.uri}: {exc}"]
        return artifacts.verify_tree(target, record.files)

    def fetch(self, record: VersionRecord) -> VersionRecord:
        if record.store_path.is_dir():
            return record  # content-addressed: a folder under this digest was checked when it was kept
        artifacts.remove_stale_copies(self.root)
        tmp = artifacts.scratch_folder(self.root)
        try:
            problems = self._download(record, tmp)
            if problems:
                raise RegistryError(f"{record.ref} in {self.uri} does not match its recorded digests: " + "; ".join(problems),
                                    hint="run `tunekit registry verify`; register the run again if its artifacts were changed")
            artifacts.place(tmp, record.store_path)
        finally:
            artifacts.remove_tree(tmp)
        return record

    def missing_files(self, record: VersionRecord) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            listed = self.client.list_artifacts(self._source_run(record))
        except MlflowException as exc:
            return f"its artifacts cannot be listed in {self.uri}: {exc}"
        return None if listed else f"its stored files are gone from the artifact store of {self.uri}"

    def verify(self, record: VersionRecord) -> list[str]:
        with tempfile.TemporaryDirectory(prefix="tunekit-verify-") as tmp:
            return self._download(record, Path(tmp))
