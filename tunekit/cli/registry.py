"""`tunekit registry ...`: register runs as versions, aliases, promotion through gates, rollback, verify.

Thin wrappers over tunekit.registry; `--json` prints the same records as JSON on stdout. Every command takes
`--registry-uri` (default `$TUNEKIT_REGISTRY_URI`) to work on an MLflow tracking server instead of the local SQLite registry.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from tunekit.console import console
from tunekit.errors import RegistryError

app = typer.Typer(
    help="Versions with lineage and artifact digests, aliases (production, staging, ...), promotion through gates, rollback.",
    no_args_is_help=True,
)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Override failing gates or a protected alias (needs --reason; recorded).")]
ReasonOpt = Annotated[Optional[str], typer.Option("--reason", help="Why the change is made (recorded in the history).")]
UriOpt = Annotated[Optional[str], typer.Option(
    "--registry-uri", help="An MLflow tracking server (http://host:port) to use as the registry "
    "(default: $TUNEKIT_REGISTRY_URI, else the local SQLite registry; extra tunekit[mlflow]).", show_default=False)]


def _echo_json(data) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def _when(timestamp: float | None) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S") if timestamp else "-"


def _metric(metrics: dict | None, name: str) -> str:
    value = (metrics or {}).get(name)
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


@app.command("register", help="Register a run directory as the next version of a model (files copied into the registry's store).")
def register(
    run: Annotated[Path, typer.Argument(help="The run directory (holding adapter/ or model/).", show_default=False)],
    name: Annotated[Optional[str], typer.Option("--name", help="Model name (default: the run folder's name).")] = None,
    note: Annotated[Optional[str], typer.Option("--note", help="A note stored with the version.")] = None,
    parent: Annotated[Optional[str], typer.Option("--parent", help="Parent version NAME@VERSION (default: from the recipe's init_from).")] = None,
    registry_uri: UriOpt = None,
    as_json: JsonOpt = False,
) -> None:
    from tunekit.registry import register as register_version

    record = register_version(run, name=name, note=note, parent=parent, uri=registry_uri)
    if as_json:
        _echo_json(record.to_dict())
        return
    console.print(f"registered [bold]{record.ref}[/] ({record.kind}, sha256 {record.digest[:12]}, verdict {record.verdict or 'not evaluated'}"
                  + (f", parent {record.parent}" if record.parent else "") + ")", soft_wrap=True)
    console.print(f"stored in {record.store_path}", soft_wrap=True)


@app.command("list", help="Registered versions with their aliases, derived stage and eval verdict.")
def list_(
    model: Annotated[Optional[str], typer.Argument(help="Only this model.", show_default=False)] = None,
    registry_uri: UriOpt = None,
    as_json: JsonOpt = False,
) -> None:
    from tunekit.registry import ever_held, list_versions, stage_of

    records = list_versions(model, uri=registry_uri)
    held = ever_held(uri=registry_uri)
    if as_json:
        _echo_json([{**r.to_dict(), "stage": stage_of(r, r.ref in held)} for r in records])
        return
    table = Table(title="registry")
    for column in ("version", "stage", "aliases", "kind", "verdict", "field_accuracy", "created", "user", "note"):
        table.add_column(column)
    for r in records:
        table.add_row(r.ref, stage_of(r, r.ref in held), ", ".join(r.aliases), r.kind, r.verdict or "-",
                      _metric(r.metrics, "task.field_accuracy"), _when(r.created), r.user or "-", escape(r.note or ""))
    console.print(table)


@app.command("show", help="One version: NAME (latest), NAME@VERSION or NAME@ALIAS.")
def show(
    ref: Annotated[str, typer.Argument(help="NAME[@VERSION|@ALIAS]", show_default=False)], registry_uri: UriOpt = None, as_json: JsonOpt = False
) -> None:
    from tunekit.registry import resolve

    record = resolve(ref, uri=registry_uri, fetch=False)
    if as_json:
        _echo_json(record.to_dict())
        return
    table = Table(title=record.ref, show_header=False)
    table.add_column("key")
    table.add_column("value", overflow="fold")
    base = record.base_model or {}
    test_set = (record.eval or {}).get("test_set") or {}
    for key, value in (
        ("aliases", ", ".join(record.aliases) or "-"), ("kind", record.kind), ("sha256", record.digest),
        ("stored at", str(record.store_path)), ("registered from", record.run_dir), ("created", _when(record.created)),
        ("user", record.user or "-"), ("note", record.note or "-"), ("parent", record.parent or "-"),
        ("base model", f"{base.get('name') or base.get('id') or '-'} {base.get('sha256', '')[:12]}"),
        ("recipe sha256", record.recipe_sha256 or "-"), ("git", json.dumps(record.git) if record.git else "-"),
        ("verdict", record.verdict or "not evaluated"), ("test set", f"sha256 {test_set.get('sha256', '-')[:12]}, n={test_set.get('n_examples')}"),
        ("exports", ", ".join(record.exports or []) or "-"),
    ):
        table.add_row(key, escape(str(value)))
    for name, value in sorted((record.metrics or {}).items()):
        table.add_row(f"  {name}", _metric(record.metrics, name))
    console.print(table)


@app.command("lineage", help="Ancestors and children of a version.")
def lineage(
    ref: Annotated[str, typer.Argument(help="NAME@VERSION", show_default=False)], registry_uri: UriOpt = None, as_json: JsonOpt = False
) -> None:
    from tunekit.registry import lineage as lineage_of

    tree = lineage_of(ref, uri=registry_uri)
    if as_json:
        _echo_json({"version": tree["version"].to_dict(), "ancestors": [r.to_dict() for r in tree["ancestors"]],
                    "children": [r.to_dict() for r in tree["children"]]})
        return
    for record in reversed(tree["ancestors"]):
        console.print(f"  {record.ref}  [dim]({record.parent_reason or 'root'})[/]" if record.parent else f"  {record.ref}  [dim](root)[/]")
        console.print("   │")
    console.print(f"[bold]▶ {tree['version'].ref}[/]  [dim]{tree['version'].parent_reason or ''}[/]")
    for child in tree["children"]:
        console.print(f"   └─ {child.ref}  [dim]({child.parent_reason})[/]")


@app.command("history", help="Every alias change of a model: from, to, when, who, why, gate evidence.")
def history(
    model: Annotated[str, typer.Argument(help="NAME", show_default=False)],
    alias: Annotated[Optional[str], typer.Option("--alias", help="Only this alias.")] = None,
    registry_uri: UriOpt = None,
    as_json: JsonOpt = False,
) -> None:
    from tunekit.registry import history as history_of

    changes = history_of(model, alias, uri=registry_uri)
    if as_json:
        _echo_json([c.to_dict() for c in changes])
        return
    table = Table(title=f"alias history of {model}")
    for column in ("#", "when", "alias", "action", "from", "to", "user", "forced", "reason", "gates"):
        table.add_column(column)
    for c in changes:
        gates = (c.evidence or {}).get("gates") or []
        summary = ", ".join(f"{g['gate']} {'skipped' if g.get('skipped') else 'ok' if g['passed'] else 'FAIL'}" for g in gates) or "-"
        table.add_row(str(c.id), _when(c.created), c.alias, c.action, str(c.from_version or "-"), str(c.to_version), c.user or "-",
                      "[red]yes[/]" if c.forced else "no", escape(c.reason or ""), escape(summary))
    console.print(table)


@app.command("promote", help="Give an alias to a version if the promotion gates pass (against the alias's current holder).")
def promote(
    ref: Annotated[str, typer.Argument(help="NAME@VERSION (or NAME@ALIAS)", show_default=False)],
    to: Annotated[str, typer.Option("--to", help="The alias to give it, e.g. production.")],
    force: ForceOpt = False,
    reason: ReasonOpt = None,
    gate: Annotated[Optional[list[str]], typer.Option("--gate", help="A promotion gate (repeatable), e.g. 'task.accuracy >= current'; replaces the defaults.")] = None,
    evaluate_current: Annotated[bool, typer.Option(
        "--evaluate-current/--no-evaluate-current",
        help="When the holder's eval used another test set, evaluate it on the candidate's first (else such gates fail).")] = True,
    registry_uri: UriOpt = None,
    as_json: JsonOpt = False,
) -> None:
    from tunekit.registry import promote as promote_version

    result = promote_version(ref, to, force=force, reason=reason, gates=gate or None, evaluate_current=evaluate_current,
                             uri=registry_uri)
    if as_json:
        _echo_json(result.to_dict())
        return
    _print_gates(result.evidence)
    before = f"{result.model}@{result.from_version}" if result.from_version else "nobody"
    console.print(f"[bold]{result.model}@{result.alias}[/] -> {result.model}@{result.to_version} (was {before})"
                  + (" [red]forced[/]" if result.forced else ""))


def _print_gates(evidence: dict) -> None:
    table = Table(title=f"promotion gates: {evidence['candidate']} vs {evidence['current'] or 'no current holder'}")
    for column in ("gate", "candidate", "current", "needed", "verdict"):
        table.add_column(column)
    for row in evidence["gates"]:
        current = ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in (row.get("current") or {}).values()) or "-"
        verdict = "[dim]skipped[/]" if row.get("skipped") else "[green]PASS[/]" if row["passed"] else "[red]FAIL[/]"
        table.add_row(escape(row["gate"]), _fmt(row.get("left")), current, _fmt(row.get("right")), verdict + (f" {escape(row['reason'])}" if row.get("reason") else ""))
    console.print(table)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


@app.command("rollback", help="Give an alias back to its previous holder (from the history), in one command.")
def rollback(
    model: Annotated[str, typer.Argument(help="NAME", show_default=False)],
    alias: Annotated[str, typer.Option("--alias", help="The alias to roll back.")] = "production",
    force: ForceOpt = False,
    reason: ReasonOpt = None,
    registry_uri: UriOpt = None,
    as_json: JsonOpt = False,
) -> None:
    from tunekit.registry import rollback as rollback_alias

    result = rollback_alias(model, alias, force=force, reason=reason, uri=registry_uri)
    if as_json:
        _echo_json(result.to_dict())
        return
    console.print(f"[bold]{model}@{alias}[/] -> {model}@{result.to_version} (rolled back from {model}@{result.from_version})")


def _protect_target(target: str) -> tuple[str, str]:
    model, _, alias = target.rpartition("@")
    return (model or "*"), alias


@app.command("protect", help="Protect an alias (ALIAS for every model, or NAME@ALIAS): changing it needs --force and --reason.")
def protect(target: Annotated[str, typer.Argument(help="ALIAS or NAME@ALIAS", show_default=False)], registry_uri: UriOpt = None) -> None:
    from tunekit.registry import protect as protect_alias

    model, alias = _protect_target(target)
    protect_alias(alias, model=model, uri=registry_uri)
    console.print(f"alias '{alias}' protected for {'every model' if model == '*' else model}")


@app.command("unprotect", help="Remove an alias's protection (ALIAS or NAME@ALIAS, as it was protected).")
def unprotect(target: Annotated[str, typer.Argument(help="ALIAS or NAME@ALIAS", show_default=False)], registry_uri: UriOpt = None) -> None:
    from tunekit.registry import protect as protect_alias

    model, alias = _protect_target(target)
    protect_alias(alias, model=model, protected=False, uri=registry_uri)
    console.print(f"alias '{alias}' no longer protected for {'every model' if model == '*' else model}")


@app.command("verify", help="Re-hash stored artifacts against the digests recorded at register time; exit 1 on any problem.")
def verify(
    ref: Annotated[Optional[str], typer.Argument(help="NAME or NAME@VERSION (default: every version).", show_default=False)] = None,
    registry_uri: UriOpt = None,
    as_json: JsonOpt = False,
) -> None:
    from tunekit.registry import verify as verify_store

    report = verify_store(ref, uri=registry_uri)
    if as_json:
        _echo_json(report.to_dict())
    else:
        for version, problems in report.problems.items():
            console.print(f"{version}: " + ("[green]ok[/]" if not problems else f"[red]{len(problems)} problem(s)[/]"))
            for problem in problems:
                console.print(f"  - {escape(problem)}", soft_wrap=True)
    if not report.ok:
        bad = [v for v, p in report.problems.items() if p]
        raise RegistryError(f"{len(bad)} version(s) do not match their recorded digests: {', '.join(bad)}",
                            hint="register the run again, or restore the files from a backup")
