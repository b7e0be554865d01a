"""`tunekit eval --endpoint`: an OpenAI-compatible server is scored by the same code as a local model.

tunekit's own server on loopback serves a tiny model; the endpoint's answers (and token counts)
must equal what eval produces when it loads the same weights itself as a full model (`model/`).
"""

from __future__ import annotations

import shutil

import yaml
from typer.testing import CliRunner

from tests.e2e.serve_helpers import running_server
from tunekit.runs import RunPaths, read_jsonl, write_jsonl
from tunekit.serve import Engine

TICKETS = ["My card was charged twice.", "Parcel lost since Monday.", "The app crashes on start."]


def test_endpoint_answers_equal_local_answers(model_dir, tmp_path):
    from tunekit.cli.main import _register, app

    train = tmp_path / "train.jsonl"
    train.write_text("")
    recipe = {"name": "ep", "base_model": str(model_dir), "output_dir": str(tmp_path / "runs"), "data": {"train": str(train)},
              "eval": {"max_new_tokens": 8, "batch_size": 2, "compare_base": False, "gates": ["task.output_tokens_mean > 0"]}}
    run = RunPaths(tmp_path / "runs" / "ep")
    run.root.mkdir(parents=True)
    run.recipe.write_text(yaml.safe_dump(recipe))
    write_jsonl(run.split("test"), [{"messages": [{"role": "user", "content": t}, {"role": "assistant", "content": "x"}]} for t in TICKETS])
    shutil.copytree(model_dir, run.root / "model")
    _register()

    result = CliRunner().invoke(app, ["eval", str(run.root)])
    assert result.exit_code == 0, result.output
    local = read_jsonl(run.eval_dir / "predictions.jsonl")
    assert yaml.safe_load((run.eval_dir / "eval_report.json").read_text())["settings"]["target"] == "model"

    with running_server(Engine.from_path(model_dir)) as url:
        result = CliRunner().invoke(app, ["eval", str(run.root), "--endpoint", url, "--endpoint-model", model_dir.name])
        assert result.exit_code == 0, result.output
        remote = read_jsonl(run.eval_dir / "predictions.jsonl")
        report = yaml.safe_load((run.eval_dir / "eval_report.json").read_text())
        assert report["settings"]["target"] == "endpoint" and url in report["settings"]["tuned_source"]
        assert [p["tuned_output"] for p in remote] == [p["tuned_output"] for p in local]
        assert [p["tuned_tokens"] for p in remote] == [p["tuned_tokens"] for p in local]
        assert all(p["tuned_latency_s"] > 0 for p in remote)

        # A model name the server does not serve: one clear error, exit 1.
        result = CliRunner().invoke(app, ["eval", str(run.root), "--endpoint", url, "--endpoint-model", "nope"])
        assert result.exit_code == 1 and "eval.endpoint: the request to" in str(result.exception)
        # Without --endpoint-model the run's name is asked for (what `tunekit serve RUN` serves it as).
        result = CliRunner().invoke(app, ["eval", str(run.root), "--endpoint", url])
        assert result.exit_code == 1 and "for model 'ep' failed" in str(result.exception)
