"""The registry against a real MLflow tracking server (its own SQLite backend and artifact folder) on loopback.

The server is started once for the module (startup takes seconds, so those tests are marked slow);
each test uses its own model name and its own TUNEKIT_HOME (an empty local copy of the stored files).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests
from typer.testing import CliRunner

from tests.unit.registry_helpers import fake_run
from tunekit import registry
from tunekit.errors import RegistryError

pytest.importorskip("mlflow", reason="the MLflow backend needs the extra tunekit[mlflow]")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MlflowServer:
    def __init__(self, uri: str, artifacts: Path):
        self.uri, self.artifacts = uri, artifacts

    def stored_file(self, model: str, version: int, rel: str) -> Path:
        """The file as the server's artifact store holds it (its --artifacts-destination on disk)."""
        from mlflow import MlflowClient

        run_id = MlflowClient(self.uri).get_model_version(model, str(version)).run_id
        found = [p for p in self.artifacts.rglob(rel) if run_id in p.parts]
        assert len(found) == 1, found
        return found[0]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    log = (root / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,  # its own process group: the workers stop with it
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            assert process.poll() is None, (root / "server.log").read_text()[-3000:]
            try:
                if requests.get(f"{uri}/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "mlflow server did not answer /health in 120 s"
            time.sleep(0.25)
        yield MlflowServer(uri, root / "artifacts")
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


@pytest.fixture
def model() -> str:
    return f"triage-{uuid.uuid4().hex[:8]}"  # the server is shared by the module's tests


def _client(server: MlflowServer):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=server.uri, registry_uri=server.uri)


@pytest.mark.slow
def test_versions_are_mlflow_model_versions_with_tags_and_artifacts(mlflow_server, model, tmp_path):
    uri = mlflow_server.uri
    first_run = fake_run(tmp_path, "a", field_accuracy=0.80)
    first = registry.register(first_run, name=model, note="first", uri=uri)
    second = registry.register(fake_run(tmp_path, "b", field_accuracy=0.70), name=model, parent=first.ref, uri=uri)
    assert (first.version, second.version, second.parent, second.parent_reason) == (1, 2, first.ref, "explicit --parent")

    mv = _client(mlflow_server).get_model_version(model, "1")
    assert mv.tags["tunekit.digest"] == first.digest and mv.tags["tunekit.verdict"] == "PASS" and mv.description == "first"
    assert json.loads(mv.tags["tunekit.metrics"])["task.field_accuracy"] == 0.80
    assert json.loads(mv.tags["tunekit.git"]) == {"commit": "abc123", "dirty": False}
    assert json.loads(mv.tags["tunekit.eval"])["test_set"]["sha256"] == hashlib.sha256((first_run / "data/test.jsonl").read_bytes()).hexdigest()
    assert _client(mlflow_server).get_model_version(model, "2").tags["tunekit.parent"] == first.ref
    stored = mlflow_server.stored_file(model, 1, "adapter_model.safetensors")
    assert stored.read_bytes() == (first_run / "adapter/adapter_model.safetensors").read_bytes()

    shutil.rmtree(first_run)  # the version lives in MLflow now, not in the run folder
    again = registry.resolve(f"{model}@1", uri=uri)  # this test's TUNEKIT_HOME has no local copy: downloaded and checked
    assert (again.artifact_path / "adapter_model.safetensors").read_bytes() == b"a" * 64
    assert again.run.eval_report.is_file() and registry.verify_version(again) == []
    assert registry.lineage(first.ref, uri=uri)["children"][0].ref == second.ref
    assert [r.ref for r in registry.list_versions(model, uri=uri)] == [first.ref, second.ref]
    assert registry.verify(model, uri=uri).ok
    with pytest.raises(RegistryError, match=rf"the MLflow server at {uri} refused: .*"):
        registry.register(fake_run(tmp_path, "c"), name=model, note="x" * 200_000, uri=uri)  # over MLflow's tag limit
    assert [r.version for r in registry.list_versions(model, uri=uri)] == [1, 2]  # a failed register leaves no version


@pytest.mark.slow
def test_promotion_gates_force_rollback_and_history_on_mlflow(mlflow_server, model, tmp_path):
    uri, client = mlflow_server.uri, _client(mlflow_server)
    registry.register(fake_run(tmp_path, "good", field_accuracy=0.80), name=model, uri=uri)
    registry.register(fake_run(tmp_path, "worse", field_accuracy=0.70), name=model, uri=uri)
    first = registry.promote(f"{model}@1", "production", uri=uri)
    assert client.get_model_version_by_alias(model, "production").version == "1"
    with pytest.raises(RegistryError, match=rf"task.field_accuracy >= current - 0.01: {model}@2 0.7, {model}@1 0.8 .*needed 0.79"):
        registry.promote(f"{model}@2", "production", uri=uri)
    assert client.get_model_version_by_alias(model, "production").version == "1"  # a refusal changes nothing
    forced = registry.promote(f"{model}@2", "production", force=True, reason="hotfix 42", uri=uri)
    assert forced.forced and client.get_model_version_by_alias(model, "production").version == "2"
    assert registry.alias_version(model, "production", uri=uri) == (2, forced.history_id)
    back = registry.rollback(model, uri=uri)
    assert (back.from_version, back.to_version) == (2, 1)
    assert client.get_model_version_by_alias(model, "production").version == "1"
    assert registry.alias_version(model, "production", uri=uri) == (1, back.history_id) and back.history_id > forced.history_id > first.history_id

    changes = registry.history(model, uri=uri)
    assert [(c.action, c.from_version, c.to_version, c.forced, c.reason) for c in changes] == [
        ("promote", None, 1, False, None), ("promote", 1, 2, True, "hotfix 42"), ("rollback", 2, 1, False, None)]
    failing = [g for g in changes[1].evidence["gates"] if not g["passed"]]
    assert [(g["gate"], g["left"], g["current"]) for g in failing] == [("task.field_accuracy >= current - 0.01", 0.70, {"task.field_accuracy": 0.80})]
    history_tags = {k: v for k, v in client.get_registered_model(model).tags.items() if k.startswith("tunekit.history.")}
    assert len(history_tags) == 3  # one registered-model tag per change
    with pytest.raises(RegistryError, match="has no previous holder"):
        registry.rollback(model, uri=uri)  # 1 -> 2 -> rollback leaves only 1 on the stack
    held = registry.ever_held(uri=uri)
    assert {f"{model}@1", f"{model}@2"} <= held
    stages = {r.ref: registry.stage_of(r, r.ref in held) for r in registry.list_versions(model, uri=uri)}
    assert stages == {f"{model}@1": "production", f"{model}@2": "archived"}

    registry.protect("production", model=model, uri=uri)
    with pytest.raises(RegistryError, match="is protected"):
        registry.promote(f"{model}@2", "production", gates=[], uri=uri)
    assert registry.promote(f"{model}@2", "production", gates=[], force=True, reason="protected, known", uri=uri).forced
    assert {"model": model, "alias": "production"}.items() <= next(p for p in registry.protected_aliases(uri=uri) if p["model"] == model).items()


@pytest.mark.slow
def test_verify_catches_an_altered_artifact_in_the_mlflow_store(mlflow_server, model, tmp_path, monkeypatch):
    uri = mlflow_server.uri
    registry.register(fake_run(tmp_path, "a"), name=model, uri=uri)
    registry.register(fake_run(tmp_path, "b"), name=model, uri=uri)
    stored = mlflow_server.stored_file(model, 1, "adapter_model.safetensors")
    stored.chmod(stat.S_IRUSR | stat.S_IWUSR)
    stored.write_bytes(b"tampered")
    report = registry.verify(model, uri=uri)
    assert not report.ok and report.problems[f"{model}@2"] == []
    [problem] = report.problems[f"{model}@1"]
    assert problem.startswith("adapter/adapter_model.safetensors: altered (sha256 " + hashlib.sha256(b"tampered").hexdigest()[:12])
    assert registry.verify_version(registry.resolve(f"{model}@1", uri=uri)) == []  # this machine's copy, checked when kept
    monkeypatch.setenv("TUNEKIT_HOME", str(tmp_path / "another-machine"))  # no local copy yet: it must come from MLflow
    with pytest.raises(RegistryError, match=rf"{model}@1 in {uri} does not match its recorded digests"):
        registry.resolve(f"{model}@1", uri=uri)  # what `serve` loads: an altered version is refused, not copied
    assert not registry.resolve(f"{model}@1", uri=uri, fetch=False).store_path.exists()


@pytest.mark.slow
def test_cli_registry_commands_with_registry_uri(mlflow_server, model, tmp_path, monkeypatch):
    from tunekit.cli.main import _register, app

    _register()
    runner, uri = CliRunner(), mlflow_server.uri
    good, worse = fake_run(tmp_path, "good", field_accuracy=0.8), fake_run(tmp_path, "worse", field_accuracy=0.6)
    registered = subprocess.run(  # the real entry point: MLflow must print nothing on stdout besides the JSON
        [sys.executable, "-m", "tunekit", "registry", "register", str(good), "--name", model, "--json", "--registry-uri", uri],
        capture_output=True, text=True, timeout=120)
    assert registered.returncode == 0, registered.stderr
    assert json.loads(registered.stdout)["ref"] == f"{model}@1"
    assert runner.invoke(app, ["registry", "register", str(worse), "--name", model, "--registry-uri", uri]).exit_code == 0
    assert runner.invoke(app, ["registry", "promote", f"{model}@1", "--to", "production", "--registry-uri", uri]).exit_code == 0
    refused = runner.invoke(app, ["registry", "promote", f"{model}@2", "--to", "production", "--registry-uri", uri])
    assert refused.exit_code == 1 and "refused" in str(refused.exception)
    forced = runner.invoke(app, ["registry", "promote", f"{model}@2", "--to", "production", "--force", "--reason", "demo",
                                 "--json", "--registry-uri", uri])
    assert forced.exit_code == 0 and json.loads(forced.stdout)["forced"] is True
    monkeypatch.setenv("TUNEKIT_REGISTRY_URI", uri)  # the same commands without the flag
    assert runner.invoke(app, ["registry", "rollback", model]).exit_code == 0
    changes = json.loads(runner.invoke(app, ["registry", "history", model, "--json"]).stdout)
    assert [(c["action"], c["from_version"], c["to_version"], c["forced"]) for c in changes] == [
        ("promote", None, 1, False), ("promote", 1, 2, True), ("rollback", 2, 1, False)]
    listed = json.loads(runner.invoke(app, ["registry", "list", model, "--json"]).stdout)
    assert [(r["ref"], r["stage"]) for r in listed] == [(f"{model}@1", "production"), (f"{model}@2", "archived")]
    assert json.loads(runner.invoke(app, ["registry", "show", f"{model}@production", "--json"]).stdout)["version"] == 1
    for command in (["list"], ["show", f"{model}@production"], ["lineage", f"{model}@1"], ["history", model], ["verify", model]):
        result = runner.invoke(app, ["registry", *command])
        assert result.exit_code == 0, (command, result.output)


@pytest.mark.slow
def test_serving_reads_an_mlflow_alias_from_another_machine(mlflow_server, model, tmp_path, monkeypatch):
    """What `tunekit serve NAME@production` calls with $TUNEKIT_REGISTRY_URI set (resolve, verify_version,
    alias_version polling), on a machine that registered nothing."""
    uri = mlflow_server.uri
    for name, accuracy in (("a", 0.8), ("b", 0.85)):
        registry.register(fake_run(tmp_path, name, field_accuracy=accuracy), name=model, uri=uri)
    registry.promote(f"{model}@1", "production", uri=uri)
    monkeypatch.setenv("TUNEKIT_REGISTRY_URI", uri)
    monkeypatch.setenv("TUNEKIT_HOME", str(tmp_path / "serving-machine"))
    served = registry.resolve(f"{model}@production")
    assert served.version == 1 and registry.verify_version(served) == []
    assert (served.artifact_path / "adapter_model.safetensors").read_bytes() == b"a" * 64
    before = registry.alias_version(model, "production")
    registry.promote(f"{model}@2", "production")
    after = registry.alias_version(model, "production")
    assert after[0] == 2 and after[1] > before[1]  # what the server's follower polls sees the change
    assert (registry.resolve(f"{model}@production").artifact_path / "adapter_model.safetensors").read_bytes() == b"b" * 64
    registry.rollback(model)
    assert registry.alias_version(model, "production")[0] == 1


def test_unreachable_server_and_unsupported_uri_are_one_clear_error(tmp_path):
    port = _free_port()  # nothing listens there
    with pytest.raises(RegistryError, match=rf"cannot reach the MLflow tracking server at http://127.0.0.1:{port}"):
        registry.list_versions(uri=f"http://127.0.0.1:{port}")
    with pytest.raises(RegistryError, match="registry URI 'ftp://example' is not supported"):
        registry.resolve("triage@1", uri="ftp://example")
    registry.register(fake_run(tmp_path, "a"), name="triage", uri="")  # empty: the local SQLite registry, no server
    assert registry.resolve("triage@1").version == 1


def test_missing_mlflow_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` now raises ImportError, as when it is not installed
    with pytest.raises(RegistryError, match=r"needs MLflow, which is not installed") as caught:
        registry.list_versions(uri="http://127.0.0.1:9")  # checked before any connection
    assert "pip install 'tunekit[mlflow]'" in str(caught.value)
