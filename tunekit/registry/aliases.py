"""Aliases: promote a version to an alias through the gates, roll back, protect, and the history.

An alias has one holder (one row in `aliases`); every change also appends one `alias_history`
row, in the same `BEGIN IMMEDIATE` transaction that read the holder, so racing promotes are
applied one after the other and the history's from/to chain never breaks. The experiment ->
staging -> production -> archived view is read off the aliases (`stage_of`), not kept apart.

Rollback replays the alias's history as a stack (a promote pushes, a rollback pops) and gives the
alias to the holder below the top: rolling back twice after A, B, C leaves A, not C again.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from tunekit.errors import RegistryError
from tunekit.registry.promotion import DEFAULT_GATES, check_gates, evaluate_promotion, incomparable, refusal_message
from tunekit.registry.records import AliasChange, PromotionResult, Ref, VersionRecord, check_alias, check_name, parse_ref
from tunekit.registry.store import connect, db_path, registry_root, transaction
from tunekit.registry.versions import os_user, to_record, version_row

STAGE_ORDER = ("production", "staging")  # the aliases that name a stage; any other alias is free


def stage_of(record: VersionRecord, ever_held: bool) -> str:
    """The derived stage: production / staging (or the free alias) it holds; else archived when it held one
    before, experiment when it never did."""
    for alias in STAGE_ORDER:
        if alias in record.aliases:
            return alias
    if record.aliases:
        return record.aliases[0]
    return "archived" if ever_held else "experiment"


def ever_held(*, home: Path | None = None) -> set[str]:
    """`NAME@VERSION` of every version that has held an alias at some time (from the history)."""
    connection = connect(registry_root(home))
    try:
        rows = connection.execute("SELECT DISTINCT v.model, v.version FROM alias_history h JOIN versions v ON v.id = h.to_version_id")
        return {f"{r['model']}@{r['version']}" for r in rows}
    finally:
        connection.close()


def _holder(connection: sqlite3.Connection, model: str, alias: str) -> sqlite3.Row | None:
    return connection.execute(
        "SELECT v.* FROM aliases a JOIN versions v ON v.id = a.version_id WHERE a.model = ? AND a.alias = ?", (model, alias)
    ).fetchone()


def _is_protected(connection: sqlite3.Connection, model: str, alias: str) -> bool:
    return connection.execute(
        "SELECT 1 FROM protected_aliases WHERE alias = ? AND model IN (?, '*')", (alias, model)
    ).fetchone() is not None


def _check_override(protected: bool, force: bool, reason: str | None, model: str, alias: str) -> None:
    if force and not (reason or "").strip():
        raise RegistryError("--force needs --reason TEXT: a forced change is recorded with why it was made")
    if protected and not force:
        raise RegistryError(f"alias '{alias}' of '{model}' is protected", hint="change it with --force --reason TEXT (recorded in the history)")


def _write_change(connection: sqlite3.Connection, model: str, alias: str, action: str, from_id: int | None, to_id: int,
                  reason: str | None, forced: bool, evidence: dict) -> int:
    now = time.time()
    cursor = connection.execute(
        """INSERT INTO alias_history (model, alias, action, from_version_id, to_version_id, created, user, reason, forced, evidence)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        (model, alias, action, from_id, to_id, now, os_user(), reason, int(forced), json.dumps(evidence, default=str)),
    )
    connection.execute(
        """INSERT INTO aliases (model, alias, version_id, updated, history_id) VALUES (?, ?, ?, ?, ?)
           ON CONFLICT (model, alias) DO UPDATE SET version_id = excluded.version_id, updated = excluded.updated,
           history_id = excluded.history_id""",
        (model, alias, to_id, now, cursor.lastrowid),
    )
    return cursor.lastrowid


def promote(ref: str, alias: str, *, force: bool = False, reason: str | None = None, gates: list[str] | None = None,
            require_pass: bool = True, evaluate_current: bool = True, home: Path | None = None) -> PromotionResult:
    """Give `alias` to the version `ref` names if the promotion gates pass (or `force`, with a reason).

    When the gates compare with the holder but its eval used other data, the holder is evaluated on
    the candidate's test set first (`evaluate_current`; outside the write lock, which is why the
    holder is checked again before the change), else those gates fail with the reason."""
    parsed = parse_ref(ref)
    if parsed.version is None and parsed.alias is None:
        raise RegistryError(f"promote needs a version: '{ref}@VERSION' (or '{ref}@ALIAS' to promote what an alias holds)")
    check_alias(alias)
    check_gates(list(DEFAULT_GATES if gates is None else gates))
    root = registry_root(home)
    connection = connect(root)
    try:
        reevaluated = _reevaluated_holder(connection, root, parsed, alias, gates) if evaluate_current else None
        with transaction(connection):
            candidate, holder = _candidate_and_holder(connection, root, parsed, alias)
            if reevaluated is not None:
                if (candidate.id, holder.id if holder else None) != reevaluated[0]:
                    raise RegistryError(f"'{candidate.model}@{alias}' changed while its holder was evaluated", hint="run the promote again")
                holder = reevaluated[1]
            if holder is not None and holder.id == candidate.id:
                raise RegistryError(f"{candidate.ref} already holds '{alias}'")
            protected = _is_protected(connection, candidate.model, alias)
            _check_override(protected, force, reason, candidate.model, alias)
            evidence = evaluate_promotion(candidate, holder, gates, require_pass=require_pass)
            if not evidence["passed"] and not force:
                raise RegistryError(refusal_message(evidence, alias), hint="fix the model, or override with --force --reason TEXT (recorded)")
            forced = force and (not evidence["passed"] or protected)
            history_id = _write_change(connection, candidate.model, alias, "promote", holder.id if holder else None, candidate.id,
                                       reason, forced, evidence)
        return PromotionResult(candidate.model, alias, holder.version if holder else None, candidate.version, "promote",
                               forced, evidence, history_id)
    finally:
        connection.close()


def _reevaluated_holder(connection: sqlite3.Connection, root: Path, ref: Ref, alias: str, gates: list[str] | None):
    """((candidate id, holder id), holder scored on the candidate's data) when the recorded numbers are not comparable."""
    candidate, holder = _candidate_and_holder(connection, root, ref, alias)
    if holder is None or holder.id == candidate.id or not incomparable(candidate, holder, gates):
        return None
    from tunekit.registry.reeval import evaluate_holder_on_candidate_data

    return (candidate.id, holder.id), evaluate_holder_on_candidate_data(holder, candidate)


def _candidate_and_holder(connection: sqlite3.Connection, root: Path, ref: Ref, alias: str) -> tuple[VersionRecord, VersionRecord | None]:
    candidate = to_record(connection, root, version_row(connection, ref))
    holder_row = _holder(connection, candidate.model, alias)
    return candidate, (to_record(connection, root, holder_row) if holder_row is not None else None)


def _holder_stack(connection: sqlite3.Connection, model: str, alias: str) -> list[int]:
    stack: list[int] = []
    for row in connection.execute("SELECT action, to_version_id FROM alias_history WHERE model = ? AND alias = ? ORDER BY id", (model, alias)):
        if row["action"] == "promote":
            stack.append(row["to_version_id"])
        else:
            stack.pop()
    return stack


def rollback(model: str, alias: str = "production", *, force: bool = False, reason: str | None = None,
             home: Path | None = None) -> PromotionResult:
    """Give `alias` back to the version that held it before the current holder (no gates: it held it before)."""
    check_name(model, "model name")
    root = registry_root(home)
    connection = connect(root)
    try:
        with transaction(connection):
            holder = _holder(connection, model, alias)
            if holder is None:
                version_row(connection, Ref(model, alias=alias))  # says which of model / alias is unknown
            stack = _holder_stack(connection, model, alias)
            if len(stack) < 2:
                raise RegistryError(f"'{model}@{alias}' has no previous holder to roll back to (held only by {model}@{holder['version']})")
            _check_override(_is_protected(connection, model, alias), force, reason, model, alias)
            target = connection.execute("SELECT * FROM versions WHERE id = ?", (stack[-2],)).fetchone()
            if not (root / target["store_path"]).is_dir() and not force:  # a cheap check; `verify` re-hashes
                raise RegistryError(f"cannot roll back to {model}@{target['version']}: its stored files are gone ({root / target['store_path']})",
                                    hint="run `tunekit registry verify`; --force --reason rolls back anyway")
            evidence = {"rolled_back": f"{model}@{holder['version']}", "restored": f"{model}@{target['version']}"}
            history_id = _write_change(connection, model, alias, "rollback", holder["id"], target["id"], reason, force, evidence)
        return PromotionResult(model, alias, holder["version"], target["version"], "rollback", force, evidence, history_id)
    finally:
        connection.close()


def protect(alias: str, *, model: str = "*", protected: bool = True, home: Path | None = None) -> None:
    """Protect (or unprotect) `alias` of `model` (`*`: of every model): changing it then needs --force and a reason."""
    check_alias(alias)
    if model != "*":
        check_name(model, "model name")
    connection = connect(registry_root(home))
    try:
        with transaction(connection):
            if protected:
                connection.execute("INSERT OR IGNORE INTO protected_aliases (model, alias, created, user) VALUES (?, ?, ?, ?)",
                                   (model, alias, time.time(), os_user()))
            else:
                connection.execute("DELETE FROM protected_aliases WHERE model = ? AND alias = ?", (model, alias))
    finally:
        connection.close()


def protected_aliases(*, home: Path | None = None) -> list[dict]:
    connection = connect(registry_root(home))
    try:
        return [dict(r) for r in connection.execute("SELECT model, alias, created, user FROM protected_aliases ORDER BY model, alias")]
    finally:
        connection.close()


def history(model: str, alias: str | None = None, *, home: Path | None = None) -> list[AliasChange]:
    """Every alias change of `model` (of one alias, when given), oldest first."""
    check_name(model, "model name")
    connection = connect(registry_root(home))
    try:
        rows = connection.execute(
            """SELECT h.*, f.version AS from_version, t.version AS to_version FROM alias_history h
               LEFT JOIN versions f ON f.id = h.from_version_id JOIN versions t ON t.id = h.to_version_id
               WHERE h.model = ? AND (? IS NULL OR h.alias = ?) ORDER BY h.id""", (model, alias, alias),
        ).fetchall()
        return [AliasChange(r["id"], r["model"], r["alias"], r["action"], r["from_version"], r["to_version"], r["created"],
                            r["user"], r["reason"], bool(r["forced"]), json.loads(r["evidence"]) if r["evidence"] else None)
                for r in rows]
    finally:
        connection.close()


def alias_version(model: str, alias: str, *, home: Path | None = None) -> tuple[int, int] | None:
    """(version, change id) of the alias's holder, or None: one read-only query, cheap enough for a server to poll.

    The change id grows with every promote or rollback, so a poller can tell a change even when
    the alias comes back to the version it had."""
    path = db_path(registry_root(home))
    if not path.is_file():
        return None
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
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
