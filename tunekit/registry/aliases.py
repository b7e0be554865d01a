"""Aliases: promote a version to an alias through the gates, roll back, protect, and the history.

An alias has one holder; every change also appends one history row, in the same backend
transaction that read the holder (SQLite: `BEGIN IMMEDIATE`), so racing promotes are applied one
after the other and the history's from/to chain never breaks (for MLflow's weaker guarantee see
`tunekit.registry.mlflow_backend`). The experiment ->
staging -> production -> archived view is read off the aliases (`stage_of`), not kept apart.

Rollback replays the alias's history as a stack (a promote pushes, a rollback pops) and gives the
alias to the holder below the top: rolling back twice after A, B, C leaves A, not C again.
"""

from __future__ import annotations

from pathlib import Path

from tunekit.errors import RegistryError
from tunekit.registry.backend import RegistryBackend, open_backend
from tunekit.registry.promotion import DEFAULT_GATES, check_gates, evaluate_promotion, incomparable, refusal_message
from tunekit.registry.records import AliasChange, PromotionResult, Ref, VersionRecord, check_alias, check_name, parse_ref

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


def ever_held(*, home: Path | None = None, uri: str | None = None) -> set[str]:
    """`NAME@VERSION` of every version that has held an alias at some time (from the history)."""
    backend = open_backend(home, uri)
    try:
        return backend.ever_held()
    finally:
        backend.close()


def _check_override(protected: bool, force: bool, reason: str | None, model: str, alias: str) -> None:
    if force and not (reason or "").strip():
        raise RegistryError("--force needs --reason TEXT: a forced change is recorded with why it was made")
    if protected and not force:
        raise RegistryError(f"alias '{alias}' of '{model}' is protected", hint="change it with --force --reason TEXT (recorded in the history)")


def promote(ref: str, alias: str, *, force: bool = False, reason: str | None = None, gates: list[str] | None = None,
            require_pass: bool = True, evaluate_current: bool = True, home: Path | None = None,
            uri: str | None = None) -> PromotionResult:
    """Give `alias` to the version `ref` names if the promotion gates pass (or `force`, with a reason).

    When the gates compare with the holder but its eval used other data, the holder is evaluated on
    the candidate's test set first (`evaluate_current`; outside the write lock, which is why the
    holder is checked again before the change), else those gates fail with the reason."""
    parsed = parse_ref(ref)
    if parsed.version is None and parsed.alias is None:
        raise RegistryError(f"promote needs a version: '{ref}@VERSION' (or '{ref}@ALIAS' to promote what an alias holds)")
    check_alias(alias)
    check_gates(list(DEFAULT_GATES if gates is None else gates))
    backend = open_backend(home, uri)
    try:
        reevaluated = _reevaluated_holder(backend, parsed, alias, gates) if evaluate_current else None
        with backend.transaction():
            candidate, holder = _candidate_and_holder(backend, parsed, alias)
            if reevaluated is not None:
                if (candidate.id, holder.id if holder else None) != reevaluated[0]:
                    raise RegistryError(f"'{candidate.model}@{alias}' changed while its holder was evaluated", hint="run the promote again")
                holder = reevaluated[1]
            if holder is not None and holder.id == candidate.id:
                raise RegistryError(f"{candidate.ref} already holds '{alias}'")
            protected = backend.is_protected(candidate.model, alias)
            _check_override(protected, force, reason, candidate.model, alias)
            evidence = evaluate_promotion(candidate, holder, gates, require_pass=require_pass)
            if not evidence["passed"] and not force:
                raise RegistryError(refusal_message(evidence, alias), hint="fix the model, or override with --force --reason TEXT (recorded)")
            forced = force and (not evidence["passed"] or protected)
            history_id = backend.write_change(candidate.model, alias, "promote", holder, candidate, reason, forced, evidence)
        return PromotionResult(candidate.model, alias, holder.version if holder else None, candidate.version, "promote",
                               forced, evidence, history_id)
    finally:
        backend.close()


def _reevaluated_holder(backend: RegistryBackend, ref: Ref, alias: str, gates: list[str] | None):
    """((candidate id, holder id), holder scored on the candidate's data) when the recorded numbers are not comparable."""
    candidate, holder = _candidate_and_holder(backend, ref, alias)
    if holder is None or holder.id == candidate.id or not incomparable(candidate, holder, gates):
        return None
    from tunekit.registry.reeval import evaluate_holder_on_candidate_data

    return (candidate.id, holder.id), evaluate_holder_on_candidate_data(backend.fetch(holder), backend.fetch(candidate))


def _candidate_and_holder(backend: RegistryBackend, ref: Ref, alias: str) -> tuple[VersionRecord, VersionRecord | None]:
    candidate = backend.record(ref)
    return candidate, backend.holder(candidate.model, alias)


def holder_stack(changes: list[AliasChange]) -> list[int]:
    """The alias's holders as a stack, replayed from its history: a promote pushes, a rollback pops."""
    stack: list[int] = []
    for change in changes:
        if change.action == "promote":
            stack.append(change.to_version)
        else:
            stack.pop()
    return stack


def rollback(model: str, alias: str = "production", *, force: bool = False, reason: str | None = None,
             home: Path | None = None, uri: str | None = None) -> PromotionResult:
    """Give `alias` back to the version that held it before the current holder (no gates: it held it before)."""
    check_name(model, "model name")
    backend = open_backend(home, uri)
    try:
        with backend.transaction():
            holder = backend.holder(model, alias)
            if holder is None:
                backend.record(Ref(model, alias=alias))  # says which of model / alias is unknown
            stack = holder_stack(backend.changes(model, alias))
            if len(stack) < 2:
                raise RegistryError(f"'{model}@{alias}' has no previous holder to roll back to (held only by {model}@{holder.version})")
            _check_override(backend.is_protected(model, alias), force, reason, model, alias)
            target = backend.record(Ref(model, version=stack[-2]))
            gone = backend.missing_files(target)
            if gone and not force:
                raise RegistryError(f"cannot roll back to {target.ref}: {gone}",
                                    hint="run `tunekit registry verify`; --force --reason rolls back anyway")
            evidence = {"rolled_back": holder.ref, "restored": target.ref}
            history_id = backend.write_change(model, alias, "rollback", holder, target, reason, force, evidence)
        return PromotionResult(model, alias, holder.version, target.version, "rollback", force, evidence, history_id)
    finally:
        backend.close()


def protect(alias: str, *, model: str = "*", protected: bool = True, home: Path | None = None, uri: str | None = None) -> None:
    """Protect (or unprotect) `alias` of `model` (`*`: of every model): changing it then needs --force and a reason."""
    check_alias(alias)
    if model != "*":
        check_name(model, "model name")
    backend = open_backend(home, uri)
    try:
        backend.set_protected(model, alias, protected)
    finally:
        backend.close()


def protected_aliases(*, home: Path | None = None, uri: str | None = None) -> list[dict]:
    backend = open_backend(home, uri)
    try:
        return backend.protected_list()
    finally:
        backend.close()


def history(model: str, alias: str | None = None, *, home: Path | None = None, uri: str | None = None) -> list[AliasChange]:
    """Every alias change of `model` (of one alias, when given), oldest first."""
    check_name(model, "model name")
    backend = open_backend(home, uri)
    try:
        return backend.changes(model, alias)
    finally:
        backend.close()


def alias_version(model: str, alias: str, *, home: Path | None = None, uri: str | None = None) -> tuple[int, int] | None:
    """(version, change id) of the alias's holder, or None: one read-only query, cheap enough for a server to poll.

    The change id grows with every promote or rollback, so a poller can tell a change even when
    the alias comes back to the version it had."""
    backend = open_backend(home, uri)
    try:
        return backend.alias_version(model, alias)
    finally:
        backend.close()
