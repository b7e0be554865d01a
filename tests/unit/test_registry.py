"""The model registry on real SQLite under a temp TUNEKIT_HOME, with small fake run directories."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.unit.registry_helpers import fake_run
from tunekit import registry
from tunekit.errors import RegistryError
from tunekit.registry import artifacts
from tunekit.registry.store import applied_migrations, connect, db_path, registry_root


def _digest_of_dir(folder: Path) -> str:
    """The adapter digest computed here independently: sha256 over sorted `path\\0sha256\\n` lines."""
    lines = sorted(f"{p.relative_to(folder).as_posix()}\0{hashlib.sha256(p.read_bytes()).hexdigest()}\n"
                   for p in folder.rglob("*") if p.is_file())
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def test_register_records_digests_metadata_and_is_immutable(tmp_path):
    run = fake_run(tmp_path, "triage", field_accuracy=0.8)
    first = registry.register(run, note="first")
    assert (first.model, first.version, first.kind, first.note) == ("triage", 1, "adapter", "first")
    assert first.digest == _digest_of_dir(run / "adapter")
    weights = next(f for f in first.files if f["path"] == "adapter/adapter_model.safetensors")
    assert weights["sha256"] == hashlib.sha256((run / "adapter/adapter_model.safetensors").read_bytes()).hexdigest()
    assert first.metrics["task.field_accuracy"] == 0.8 and first.verdict == "PASS"
    assert first.eval["test_set"]["sha256"] == hashlib.sha256((run / "data/test.jsonl").read_bytes()).hexdigest()
    assert first.eval["test_set"]["n_examples"] == 10
    assert first.git == {"commit": "abc123", "dirty": False} and first.packages == {"tunekit": "0.1.0"}
    assert first.recipe_sha256 == hashlib.sha256((run / "recipe.yaml").read_bytes()).hexdigest()
    assert first.exports == ["export/model-f16.gguf", "export/quant_report.json"]
    assert first.quant_report == {"types": {"F16": {"ppl_ratio": 1.0}}}
    assert first.store_path.name == artifacts.tree_digest([artifacts.StoredFile(f["path"], f["sha256"], f["size"]) for f in first.files])
    assert (first.artifact_path / "adapter_config.json").is_file()

    second = registry.register(run)
    assert second.version == 2 and second.digest == first.digest and second.store_path == first.store_path
    connection = connect(registry_root())
    with pytest.raises(sqlite3.DatabaseError, match="immutable"):
        connection.execute("UPDATE versions SET digest = 'x' WHERE version = 1")
    with pytest.raises(sqlite3.DatabaseError, match="immutable"):
        connection.execute("DELETE FROM versions")
    connection.close()
    assert registry.resolve("triage@1").digest == first.digest


def test_run_dir_deleted_after_register_still_resolves_and_verifies(tmp_path):
    run = fake_run(tmp_path, "triage")
    record = registry.register(run)
    shutil.rmtree(run)
    again = registry.resolve("triage@1")
    assert again.artifact_path.is_dir() and (again.artifact_path / "adapter_model.safetensors").read_bytes() == b"triage" * 64
    assert (again.run.eval_report).is_file() and again.run.split("test").is_file()
    assert registry.verify().ok and registry.verify_version(again) == []
    assert again.digest == record.digest


def test_verify_catches_altered_missing_and_extra_files(tmp_path):
    record = registry.register(fake_run(tmp_path, "triage"))
    weights = record.artifact_path / "adapter_model.safetensors"
    weights.chmod(stat.S_IRUSR | stat.S_IWUSR)  # stored read-only; an editor would have to do this too
    weights.write_bytes(b"tampered")
    (record.store_path / "export" / "model-f16.gguf").unlink()
    (record.artifact_path / "extra.bin").write_bytes(b"x")
    report = registry.verify("triage@1")
    assert not report.ok
    problems = report.problems["triage@1"]
    assert any(p.startswith("adapter/adapter_model.safetensors: altered") for p in problems)
    assert "export/model-f16.gguf: missing" in problems
    assert "adapter/extra.bin: not part of the registered version" in problems
    result = _tunekit("registry", "verify", "triage")
    assert result.returncode == 1 and "altered" in result.stderr and "1 version(s) do not match" in result.stderr


def _tunekit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunekit", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"})


def _cli():
    from tunekit.cli.main import _register, app

    _register()
    return app


def test_promotion_refused_names_gate_and_both_numbers(tmp_path):
    registry.register(fake_run(tmp_path, "good", field_accuracy=0.80), name="triage")
    registry.register(fake_run(tmp_path, "worse", field_accuracy=0.70), name="triage")
    first = registry.promote("triage@1", "production")
    assert (first.from_version, first.to_version, first.forced) == (None, 1, False)
    skipped = next(g for g in first.evidence["gates"] if g["gate"].startswith("task.field_accuracy"))
    assert skipped["skipped"] and "no current holder" in skipped["reason"]
    with pytest.raises(RegistryError) as refused:
        registry.promote("triage@2", "production")
    message = str(refused.value)
    assert "task.field_accuracy >= current - 0.01" in message
    assert "triage@2 0.7" in message and "triage@1 0.8" in message and "needed 0.79" in message
    assert "forgetting.overall_drop" not in message  # that gate passed
    assert registry.alias_version("triage", "production")[0] == 1 and registry.history("triage") [-1].to_version == 1


def test_forced_promotion_needs_reason_and_is_recorded(tmp_path):
    registry.register(fake_run(tmp_path, "good", field_accuracy=0.80), name="triage")
    registry.register(fake_run(tmp_path, "worse", field_accuracy=0.70, passed=False), name="triage")
    registry.promote("triage@1", "production")
    with pytest.raises(RegistryError, match="--force needs --reason"):
        registry.promote("triage@2", "production", force=True)
    result = registry.promote("triage@2", "production", force=True, reason="hotfix for ticket 42")
    assert result.forced and (result.from_version, result.to_version) == (1, 2)
    change = registry.history("triage", "production")[-1]
    assert change.forced and change.reason == "hotfix for ticket 42" and change.action == "promote"
    assert (change.from_version, change.to_version) == (1, 2) and change.user
    failed = {g["gate"] for g in change.evidence["gates"] if not g["passed"]}
    assert failed == {"verdict == PASS", "task.field_accuracy >= current - 0.01"}
    assert registry.resolve("triage@production").version == 2


def test_rollback_gives_alias_to_previous_holders_in_turn(tmp_path):
    for accuracy in (0.80, 0.81, 0.82):
        registry.register(fake_run(tmp_path, f"r{accuracy}", field_accuracy=accuracy), name="triage")
    for version in (1, 2, 3):
        registry.promote(f"triage@{version}", "production")
    before = registry.alias_version("triage", "production")
    back = registry.rollback("triage")
    assert (back.from_version, back.to_version, back.action) == (3, 2, "rollback")
    after = registry.alias_version("triage", "production")
    assert after[0] == 2 and after[1] > before[1]
    assert registry.rollback("triage").to_version == 1
    with pytest.raises(RegistryError, match="no previous holder"):
        registry.rollback("triage")
    chain = [(c.action, c.from_version, c.to_version) for c in registry.history("triage")]
    assert chain == [("promote", None, 1), ("promote", 1, 2), ("promote", 2, 3), ("rollback", 3, 2), ("rollback", 2, 1)]
    with pytest.raises(RegistryError, match="alias 'staging' of model 'triage' is not set"):
        registry.rollback("triage", "staging")


def test_protected_alias_needs_force_and_reason(tmp_path):
    registry.register(fake_run(tmp_path, "a", field_accuracy=0.80), name="triage")
    registry.register(fake_run(tmp_path, "b", field_accuracy=0.85), name="triage")
    registry.protect("production")
    with pytest.raises(RegistryError, match="protected"):
        registry.promote("triage@1", "production")
    registry.promote("triage@1", "production", force=True, reason="first release")
    with pytest.raises(RegistryError, match="protected"):
        registry.promote("triage@2", "production")  # gates pass, still protected
    with pytest.raises(RegistryError, match="--force needs --reason"):
        registry.promote("triage@2", "production", force=True)
    result = registry.promote("triage@2", "production", force=True, reason="release 2")
    assert result.forced and result.evidence["passed"]
    with pytest.raises(RegistryError, match="protected"):
        registry.rollback("triage")
    assert registry.rollback("triage", force=True, reason="incident 7").to_version == 1
    registry.promote("triage@2", "staging")  # other aliases are free
    registry.protect("production", protected=False)
    assert registry.promote("triage@2", "production").forced is False


def test_different_test_sets_are_not_compared(tmp_path):
    registry.register(fake_run(tmp_path, "a", field_accuracy=0.80, test_rows=10), name="triage")
    registry.register(fake_run(tmp_path, "b", field_accuracy=0.95, test_rows=12), name="triage")
    registry.promote("triage@1", "production")
    with pytest.raises(RegistryError) as refused:
        registry.promote("triage@2", "production", evaluate_current=False)
    message = str(refused.value)
    assert "cannot compare: different test set" in message and "(n=12)" in message and "(n=10)" in message
    # A gate that does not name `current` compares nothing across versions: it is allowed.
    result = registry.promote("triage@2", "production", gates=["task.field_accuracy >= 0.9"])
    assert result.to_version == 2


def test_migrations_recorded_wal_and_idempotent(tmp_path):
    registry.list_versions()
    connection = connect(registry_root())
    assert [m["name"] for m in applied_migrations(connection)] == ["001_versions_aliases_history"]
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    connection.close()
    connect(registry_root()).close()  # a second open applies nothing twice
    connection = sqlite3.connect(db_path(registry_root()))
    assert connection.execute("SELECT COUNT(*) FROM _migrations").fetchone()[0] == 1
    connection.execute("INSERT INTO _migrations (id, name, applied) VALUES (99, '099_from_the_future', 0)")
    connection.commit()
    connection.close()
    with pytest.raises(RegistryError, match="newer tunekit"):
        registry.list_versions()


def test_register_that_fails_mid_copy_leaves_no_version(tmp_path, monkeypatch):
    run = fake_run(tmp_path, "triage")
    copied = []
    real_copy = artifacts._copy_file

    def copy_then_fail(source, target):
        if len(copied) == 3:
            raise OSError("disk full")
        copied.append(source)
        return real_copy(source, target)

    monkeypatch.setattr(artifacts, "_copy_file", copy_then_fail)
    with pytest.raises(OSError, match="disk full"):
        registry.register(run)
    root = registry_root()
    assert registry.list_versions() == []
    assert not (root / "artifacts").exists() or not any((root / "artifacts").iterdir())
    assert not any((root / "tmp").iterdir())


def _register_and_die(run: str, home: str) -> None:
    os.environ["TUNEKIT_HOME"] = home
    copied = []
    real_copy = artifacts._copy_file

    def copy_then_die(source, target):
        if len(copied) == 3:
            os.kill(os.getpid(), signal.SIGKILL)  # a real kill: no finally, no cleanup runs
        copied.append(source)
        return real_copy(source, target)

    artifacts._copy_file = copy_then_die
    registry.register(Path(run))


def test_register_killed_mid_copy_leaves_no_version(tmp_path):
    run = fake_run(tmp_path, "triage")
    process = multiprocessing.get_context("fork").Process(target=_register_and_die, args=(str(run), os.environ["TUNEKIT_HOME"]))
    process.start()
    process.join(60)
    assert process.exitcode == -signal.SIGKILL
    root = registry_root()
    assert registry.list_versions() == [] and registry.verify().ok
    assert not (root / "artifacts").exists() or not any((root / "artifacts").iterdir())
    assert len(list((root / "tmp").iterdir())) == 1  # the half copy stays out of sight under tmp/
    assert registry.register(run).version == 1  # the next register works, and removes the dead process's half copy
    assert list((root / "tmp").iterdir()) == [] and registry.verify().ok


def test_lineage_from_init_from_and_explicit_parent(tmp_path):
    sft = fake_run(tmp_path, "sft")
    registry.register(sft, name="triage")
    dpo = fake_run(tmp_path, "dpo", init_from=str(sft / "adapter"))
    child = registry.register(dpo, name="triage")
    assert child.parent == "triage@1" and "init_from" in child.parent_reason
    grandchild = registry.register(fake_run(tmp_path, "feedback"), name="triage", parent="triage@2")
    assert grandchild.parent == "triage@2" and grandchild.parent_reason == "explicit --parent"
    tree = registry.lineage("triage@2")
    assert [r.ref for r in tree["ancestors"]] == ["triage@1"] and [r.ref for r in tree["children"]] == ["triage@3"]
    assert [r.ref for r in registry.lineage("triage@3")["ancestors"]] == ["triage@2", "triage@1"]
    # The parent run moved away: the child manifest's fingerprint of its init adapter still finds the version.
    from tunekit.train.manifest import model_fingerprint

    fingerprint = model_fingerprint(str(sft / "adapter"))["sha256"]
    shutil.rmtree(sft)
    moved = str(tmp_path / "moved" / "sft" / "adapter")  # the path says nothing: only the fingerprint can match
    orphan = registry.register(fake_run(tmp_path, "dpo2", init_from=moved, init_sha256=fingerprint), name="other")
    assert orphan.parent == "triage@1"
    with pytest.raises(RegistryError, match="has no version 9"):
        registry.register(fake_run(tmp_path, "x"), name="triage", parent="triage@9")


def test_resolve_errors_and_refs(tmp_path):
    registry.register(fake_run(tmp_path, "triage"))
    registry.register(fake_run(tmp_path, "triage2"), name="triage")
    assert registry.resolve("triage").version == 2 and registry.resolve("triage@v1").version == 1
    with pytest.raises(RegistryError, match="no model named 'nope'"):
        registry.resolve("nope@1")
    with pytest.raises(RegistryError, match="alias 'production' of model 'triage' is not set"):
        registry.resolve("triage@production")
    with pytest.raises(RegistryError, match="not a valid model name"):
        registry.resolve("bad name")
    with pytest.raises(RegistryError, match="'v2' cannot be an alias: NAME@v2 means version 2"):
        registry.promote("triage@1", "v2")
    assert registry.alias_version("triage", "production") is None
    with pytest.raises(RegistryError, match="run directory .* not found"):
        registry.register(tmp_path / "missing")


def test_cli_register_promote_history_json(tmp_path):
    import json

    runner, app = CliRunner(), _cli()
    good, worse = fake_run(tmp_path, "good", field_accuracy=0.8), fake_run(tmp_path, "worse", field_accuracy=0.6)
    out = runner.invoke(app, ["registry", "register", str(good), "--name", "triage", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["ref"] == "triage@1"
    assert runner.invoke(app, ["registry", "register", str(worse), "--name", "triage", "--note", "worse"]).exit_code == 0
    assert runner.invoke(app, ["registry", "promote", "triage@1", "--to", "production"]).exit_code == 0
    refused = _tunekit("registry", "promote", "triage@2", "--to", "production")  # the real entry point: message + exit 1
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "error: promotion of triage@2 to 'production' refused" in refused.stderr
    assert "task.field_accuracy >= current - 0.01: triage@2 0.6, triage@1 0.8" in refused.stderr
    forced = runner.invoke(app, ["registry", "promote", "triage@2", "--to", "production", "--force", "--reason", "demo", "--json"])
    assert forced.exit_code == 0 and json.loads(forced.stdout)["forced"] is True
    assert runner.invoke(app, ["registry", "rollback", "triage"]).exit_code == 0
    changes = json.loads(runner.invoke(app, ["registry", "history", "triage", "--json"]).stdout)
    assert [(c["action"], c["from_version"], c["to_version"], c["forced"]) for c in changes] == [
        ("promote", None, 1, False), ("promote", 1, 2, True), ("rollback", 2, 1, False)]
    listed = json.loads(runner.invoke(app, ["registry", "list", "--json"]).stdout)
    assert [(r["ref"], r["stage"]) for r in listed] == [("triage@1", "production"), ("triage@2", "archived")]
    assert runner.invoke(app, ["registry", "register", str(worse), "--name", "triage"]).exit_code == 0
    assert json.loads(runner.invoke(app, ["registry", "list", "--json"]).stdout)[-1]["stage"] == "experiment"
    for command in (["list"], ["show", "triage@production"], ["lineage", "triage@1"], ["history", "triage"], ["verify"]):
        result = runner.invoke(app, ["registry", *command])
        assert result.exit_code == 0, (command, result.output)
    assert json.loads(runner.invoke(app, ["registry", "show", "triage@production", "--json"]).stdout)["version"] == 1


def test_concurrent_register_promote_rollback_stays_consistent(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    try:
        import registry_concurrency
    finally:
        sys.path.pop(0)
    summary = registry_concurrency.run_workload(tmp_path / "work", processes=4, operations=200)
    assert summary["operations"] == 200 and summary["errors"] == []
    assert all(summary["checks"].values()), summary["checks"]
    assert summary["history_rows"] == summary["alias_changes_done"] > 0
    assert summary["versions"] == summary["registers_done"] > 0


def test_register_a_real_evaluated_run(run_dir, tmp_path):
    """A run as the eval stage leaves it (real PEFT adapter, real eval_report.json) registers with its real numbers."""
    import json

    from tunekit.config import load_recipe
    from tunekit.eval import evaluate
    from tunekit.runs import RunPaths

    recipe = load_recipe(run_dir, ["eval.compare_base=false", "eval.metrics=[json_valid,field_accuracy]"])
    result = evaluate(recipe, RunPaths(run_dir))
    record = registry.register(run_dir, name="tickets")
    assert record.kind == "adapter" and record.verdict == "PASS"
    assert record.metrics == json.loads(RunPaths(run_dir).eval_report.read_text())["metrics"] == result.metrics
    assert record.eval["test_set"]["sha256"] == hashlib.sha256(RunPaths(run_dir).split("test").read_bytes()).hexdigest()
    assert record.digest == _digest_of_dir(run_dir / "adapter")
    shutil.rmtree(run_dir)
    from tunekit.models.trained import check_adapter_dir, trained_artifact

    stored = registry.resolve("tickets@1")
    assert trained_artifact(stored.run).path == stored.artifact_path and check_adapter_dir(stored.artifact_path)["r"] == 8
    assert registry.promote("tickets@1", "production").to_version == 1


def _copy_run(source: Path, target: Path, test_rows: int | None = None) -> Path:
    import yaml

    from tunekit.runs import read_jsonl, write_jsonl

    shutil.copytree(source, target)
    recipe = yaml.safe_load((target / "recipe.yaml").read_text())
    recipe.update(name=target.name, output_dir=str(target.parent))
    (target / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    if test_rows is not None:
        write_jsonl(target / "data" / "test.jsonl", read_jsonl(target / "data" / "test.jsonl")[:test_rows])
    shutil.rmtree(target / "eval", ignore_errors=True)
    return target


def test_holder_evaluated_on_candidates_test_set_when_they_differ(run_dir, tmp_path):
    """The holder was scored on 5 tickets, the candidate on 3: the holder is scored again on those 3 before comparing."""
    from tunekit.config import load_recipe
    from tunekit.eval import evaluate
    from tunekit.runs import RunPaths

    overrides = ["eval.compare_base=false", "eval.metrics=[json_valid,field_accuracy,perplexity]"]
    holder_run = _copy_run(run_dir, tmp_path / "runs" / "holder")
    candidate_run = _copy_run(run_dir, tmp_path / "runs" / "candidate", test_rows=3)  # same adapter, fewer tickets
    results = {}
    for run in (holder_run, candidate_run):
        results[run.name] = evaluate(load_recipe(run, overrides), RunPaths(run))
        registry.register(run, name="tickets")
    holder, candidate = registry.resolve("tickets@1"), registry.resolve("tickets@2")
    assert holder.eval["test_set"]["n_examples"] == 5 and candidate.eval["test_set"]["n_examples"] == 3
    assert holder.metrics["task.perplexity"] != candidate.metrics["task.perplexity"]  # so the check below means something
    registry.promote("tickets@1", "production")
    shutil.rmtree(holder_run)  # the holder is evaluated from the registry's own copy

    result = registry.promote("tickets@2", "production")
    evidence = result.evidence
    assert evidence["current_evaluated_on"] == "tickets@2" and result.to_version == 2
    # Same adapter, same three tickets, greedy decoding: the holder now scores exactly what the candidate scored,
    # not what it scored on its own five.
    assert evidence["current_metrics"]["task.perplexity"] == results["candidate"].metrics["task.perplexity"]
    assert evidence["current_metrics"]["task.json_valid"] == results["candidate"].metrics["task.json_valid"]
    gate = next(g for g in evidence["gates"] if g["gate"].startswith("task.field_accuracy"))
    assert gate["passed"] and gate["current"]["task.field_accuracy"] == results["candidate"].metrics["task.field_accuracy"]
    assert registry.history("tickets")[-1].evidence["current_evaluated_on"] == "tickets@2"


def test_rollback_refuses_a_target_whose_files_are_gone(tmp_path):
    first = registry.register(fake_run(tmp_path, "a", field_accuracy=0.80), name="triage")
    registry.register(fake_run(tmp_path, "b", field_accuracy=0.85), name="triage")
    registry.promote("triage@1", "production")
    registry.promote("triage@2", "production")
    shutil.rmtree(first.store_path, onerror=lambda f, p, _: (os.chmod(p, 0o700), f(p)))
    with pytest.raises(RegistryError, match="cannot roll back to triage@1: its stored files are gone"):
        registry.rollback("triage")
    assert registry.alias_version("triage", "production")[0] == 2
    assert registry.verify("triage@1").problems["triage@1"] == [f"artifact folder {first.store_path} is missing"]


@pytest.mark.parametrize("command", ["", "register", "list", "show", "lineage", "history", "promote", "rollback", "protect",
                                     "unprotect", "verify"])
def test_help_works_for_every_registry_command(command):
    result = CliRunner().invoke(_cli(), ["registry", *([command] if command else []), "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output, result.output


def test_custom_gates_explicit_current_typos_and_unmeasured(tmp_path):
    registry.register(fake_run(tmp_path, "a", field_accuracy=0.80), name="triage")
    registry.register(fake_run(tmp_path, "b", field_accuracy=0.78), name="triage")
    registry.promote("triage@1", "production")
    with pytest.raises(RegistryError, match="promotion gate 'task.field_accuracy >>= 1'"):
        registry.promote("triage@2", "production", gates=["task.field_accuracy >>= 1"])
    with pytest.raises(RegistryError, match=r"task.field_accuracy >= current.task.field_accuracy: triage@2 0.78, triage@1 0.8"):
        registry.promote("triage@2", "production", gates=["task.field_accuracy >= current.task.field_accuracy"])
    with pytest.raises(RegistryError, match="task.rouge_l >= 0.1: not measured: task.rouge_l"):
        registry.promote("triage@2", "production", gates=["task.rouge_l >= 0.1"])  # a gate the user wrote must be measured
    result = registry.promote("triage@2", "production", gates=["task.field_accuracy >= current - 0.05"])
    row = result.evidence["gates"][1]
    assert row["passed"] and row["left"] == 0.78 and row["right"] == pytest.approx(0.75) and row["current"] == {"task.field_accuracy": 0.8}
