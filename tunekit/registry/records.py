"""Typed records the registry hands out: a version, an alias change, a promotion's result, a verify report."""

from __future__ import annotations

import getpass
import json
import re
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from tunekit.errors import RegistryError
from tunekit.runs import RunPaths

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_JSON_COLUMNS = ("files", "base_model", "data_hashes", "git", "packages", "metrics", "eval", "exports", "quant_report")


@dataclass(frozen=True)
class Ref:
    """`NAME`, `NAME@3` (a version) or `NAME@production` (an alias), parsed."""

    model: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        return self.model + (f"@{self.version}" if self.version is not None else f"@{self.alias}" if self.alias else "")


def os_user() -> str | None:
    """Who made a change (recorded with versions and alias changes)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return None


def check_name(value: str, what: str) -> str:
    if not NAME_PATTERN.match(value or ""):
        raise RegistryError(
            f"'{value}' is not a valid {what}",
            hint=f"a {what} starts with a letter or digit and holds only letters, digits, '_', '.' and '-'",
        )
    return value


def check_alias(value: str) -> str:
    """An alias name, which must not read as a version number (`NAME@3` means version 3)."""
    check_name(value, "alias")
    if re.fullmatch(r"v?\d+", value):
        raise RegistryError(f"'{value}' cannot be an alias: NAME@{value} means version {value.lstrip('v')}",
                            hint="use a name such as production, staging or canary")
    return value


def parse_ref(text: str) -> Ref:
    """`NAME[@VERSION|@ALIAS]`; a version is all digits (optionally `v3`), anything else after @ an alias."""
    model, _, tail = text.partition("@")
    check_name(model, "model name")
    if not tail:
        return Ref(model)
    if re.fullmatch(r"v?\d+", tail):
        return Ref(model, version=int(tail.lstrip("v")))
    return Ref(model, alias=check_name(tail, "alias"))


@dataclass(frozen=True)
class VersionRecord:
    """One registered, immutable version and where its stored files are."""

    id: int
    model: str
    version: int
    created: float
    user: str | None
    note: str | None
    run_dir: str  # where it was registered from (may be gone: the store holds the files)
    kind: Literal["adapter", "full"]
    digest: str  # sha256 of the trained artifact (adapter/ or model/ tree)
    store_path: Path  # the content-addressed folder, laid out like a run directory
    files: list[dict]
    base_model: dict | None
    data_hashes: dict | None
    recipe_sha256: str | None
    git: dict | None
    packages: dict | None
    metrics: dict | None
    verdict: str | None  # PASS / FAIL of the run's eval gates; None when never evaluated
    eval: dict | None  # test_set and forgetting_suite fingerprints, the eval gate table
    exports: list | None
    quant_report: dict | None
    parent: str | None = None  # `NAME@VERSION` of the parent, when known
    parent_reason: str | None = None
    aliases: tuple[str, ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.model}@{self.version}"

    @property
    def artifact_path(self) -> Path:
        """The stored adapter folder, or the full model's folder: what an engine loads."""
        return self.store_path / ("adapter" if self.kind == "adapter" else "model")

    @property
    def run(self) -> RunPaths:
        """The stored copy read like a run directory (recipe, manifest, eval report, export/)."""
        return RunPaths(self.store_path)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["store_path"] = str(self.store_path)
        data["artifact_path"] = str(self.artifact_path)
        data["ref"] = self.ref
        data["aliases"] = list(self.aliases)
        return data


def version_from_row(row: sqlite3.Row, root: Path, parent: str | None, aliases: tuple[str, ...] = ()) -> VersionRecord:
    data = dict(row)
    for column in _JSON_COLUMNS:
        data[column] = json.loads(data[column]) if data[column] is not None else None
    data.pop("parent_id")
    data.pop("artifact_fingerprint", None)
    data["store_path"] = root / data["store_path"]
    return VersionRecord(**data, parent=parent, aliases=aliases)


@dataclass(frozen=True)
class AliasChange:
    """One row of an alias's history."""

    id: int
    model: str
    alias: str
    action: Literal["promote", "rollback"]
    from_version: int | None
    to_version: int
    created: float
    user: str | None
    reason: str | None
    forced: bool
    evidence: dict | None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PromotionResult:
    """What a promote or rollback did: the alias, who held it before, who holds it now, and why."""

    model: str
    alias: str
    from_version: int | None
    to_version: int
    action: Literal["promote", "rollback"]
    forced: bool
    evidence: dict = field(default_factory=dict)
    history_id: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class VerifyReport:
    """Every checked version and its problems (empty: the stored files are exactly as registered)."""

    problems: dict[str, list[str]]  # ref -> problems

    @property
    def ok(self) -> bool:
        return not any(self.problems.values())

    def to_dict(self) -> dict:
        return {"ok": self.ok, "versions": self.problems}
