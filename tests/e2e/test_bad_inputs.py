"""Every command against a user's ordinary mistakes: each ends with exit 1 (2 for a usage error)
and one message that names what and where; none ends in a traceback.

In process, a command's outcome is its exception: a TunekitError (printed by `tunekit` as one
message, exit 1) or click's usage exit (2). Anything else would reach the user as a traceback.
A few cases also run as the real `tunekit` process, whose stderr must hold no "Traceback"; so do
the unreadable files (mode 000), with the process stripped of root's power to read them anyway.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.e2e.cli_helpers import tunekit
from tunekit.errors import TunekitError

CHAT = {"messages": [{"role": "user", "content": "a question"}, {"role": "assistant", "content": "an answer"}]}


@pytest.fixture(scope="module")
def app():
    from tunekit.cli.main import _register, app

    _register()
    return app


@pytest.fixture
def bad(tmp_path: Path) -> dict[str, Path]:
    """One path per kind of bad file."""
    (tmp_path / "a_directory").mkdir()
    (tmp_path / "empty.yaml").write_text("")
    (tmp_path / "binary.yaml").write_bytes(b"\x7fELF\x00\x01\x02\xff\xfe\x00")
    (tmp_path / "latin1.yaml").write_bytes("name: café\n".encode("latin-1"))
    (tmp_path / "list.yaml").write_text("- just\n- a list\n")
    return {
        "missing": tmp_path / "nope.yaml",
        "directory": tmp_path / "a_directory",
        "empty": tmp_path / "empty.yaml",
        "binary": tmp_path / "binary.yaml",
        "not_utf8": tmp_path / "latin1.yaml",
        "not_a_mapping": tmp_path / "list.yaml",
    }


def _outcome(app, args: list[str]) -> tuple[int, BaseException | None, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.exception, result.output


def _assert_clear_failure(app, args, *, names: str | None = None):
    code, exc, output = _outcome(app, args)
    if isinstance(exc, TunekitError):
        assert code == 1
        message = str(exc)
        assert message.strip() and "Traceback" not in message
        if names is not None:
            assert names in message, message
        return message
    # click's own usage errors (an option out of range, a missing argument) exit 2 with a message.
    assert code == 2 and (exc is None or isinstance(exc, SystemExit)), f"{args}: {exc!r}\n{output}"
    assert "Error" in output or "Invalid" in output or "Missing" in output, output
    return output


FILE_COMMANDS = [
    ["validate"], ["data", "prepare"], ["data", "preview"], ["train"], ["estimate"], ["eval"], ["export"], ["run"],
    ["serve"], ["cost"], ["advise"],
]


@pytest.mark.parametrize("command", FILE_COMMANDS, ids=" ".join)
@pytest.mark.parametrize("kind", ["missing", "directory", "empty", "binary", "not_utf8", "not_a_mapping"])
def test_every_command_given_a_bad_file(app, bad, command, kind):
    path = bad[kind]
    if kind == "empty" and command[-1] in ("cost", "advise"):
        pytest.skip("an empty inputs file is valid for cost/advise: every key has a flag or a default")
    message = _assert_clear_failure(app, [*command, path])
    # The message says which file (or, for an empty recipe, which key is missing).
    assert path.name in message or "data: required key is missing" in message or "data.train" in message, message


def _recipe(tmp_path: Path, train: str, base_model: str | None = None) -> Path:
    recipe = tmp_path / "recipe.yaml"
    lines = [f"base_model: {base_model}"] if base_model else []
    recipe.write_text("\n".join([*lines, f"data: {{train: {train}}}", ""]))
    return recipe


@pytest.mark.parametrize("content,names", [
    (b"", "is empty"),
    (b"\x00\x01\x02\xff binary \x00", "quarantine"),
    ("{\"text\": \"caf\u00e9\"}\n".encode("latin-1"), "quarantine"),
])
def test_bad_data_files_name_the_file(app, tmp_path, tiny_model_dir, content, names):
    (tmp_path / "train.jsonl").write_bytes(content)
    recipe = _recipe(tmp_path, "train.jsonl", str(tiny_model_dir))
    for command in (["run"], ["data", "prepare"]):
        message = _assert_clear_failure(app, [*command, recipe])
        assert "train.jsonl" in message and names in message, message


@pytest.mark.slow  # tokenizing 25M words takes ~40 s here
def test_a_50_mb_line_is_quarantined_not_fatal(app, tmp_path, tiny_model_dir):
    with open(tmp_path / "train.jsonl", "w") as handle:
        handle.write(json.dumps({"messages": [{"role": "user", "content": "x " * 25_000_000}, {"role": "assistant", "content": "y"}]}) + "\n")
        for i in range(10):
            handle.write(json.dumps({"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}) + "\n")
    code, exc, _ = _outcome(app, ["data", "prepare", _recipe(tmp_path, "train.jsonl", str(tiny_model_dir))])
    assert code == 0, exc
    quarantined = [json.loads(line) for line in (tmp_path / "runs" / "recipe" / "data" / "quarantine.jsonl").read_text().splitlines()]
    assert [(q["line"], q["reason"]) for q in quarantined] == [(1, "too_long")]


@pytest.mark.parametrize("missing", ["weights", "tokenizer"])
def test_a_model_directory_without_weights_or_tokenizer(app, tmp_path, tiny_model_dir, missing):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    gone = ["model.safetensors"] if missing == "weights" else ["tokenizer.json", "tokenizer_config.json"]
    for name in gone:
        (model / name).unlink()
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(CHAT | {"id": i}) for i in range(12)) + "\n")
    recipe = _recipe(tmp_path, "train.jsonl", str(model))
    if missing == "tokenizer":
        for command in (["data", "prepare"], ["data", "preview"], ["run"]):
            assert "cannot load a tokenizer from" in _assert_clear_failure(app, [*command, recipe])
        # Estimating a model not downloaded yet works from its config alone; tokens are said to be unknown.
        code, exc, output = _outcome(app, ["estimate", recipe])
        assert code == 0, exc
        assert "tokens unknown: cannot load a tokenizer" in " ".join(output.split())
    else:
        message = _assert_clear_failure(app, ["run", recipe])
        assert str(model) in message or "model" in message


@pytest.mark.parametrize("args,names", [
    (["serve", "{run}", "--port", "70000"], "--port"),
    (["serve", "{run}", "--port", "-1"], "--port"),
    (["eval", "{run}", "--max-examples", "0"], "max_examples"),
    (["export", "{run}", "--quant", "Q9_X"], "unknown GGUF type"),
    (["run", "{recipe}", "--stages", "deploy"], "deploy"),
    (["data", "preview", "{recipe}", "--split", "holdout"], "holdout"),
    (["train", "{recipe}", "--set", "train.epochs=-1"], "train.epochs"),
    (["validate", "{recipe}", "--set", "nonsense"], "key.path=value"),
    (["cost", "--requests-per-day", "-5"], "requests_per_day"),
])
def test_out_of_range_options(app, tmp_path, args, names):
    (tmp_path / "train.jsonl").write_text(json.dumps(CHAT) + "\n")
    recipe = _recipe(tmp_path, "train.jsonl")
    run = tmp_path / "runs" / "recipe"
    run.mkdir(parents=True)
    shutil.copy(recipe, run / "recipe.yaml")
    filled = [a.format(run=run, recipe=recipe) for a in args]
    message = _assert_clear_failure(app, filled)
    assert names in message, message


@pytest.mark.slow
def test_the_real_process_prints_no_traceback(tmp_path, bad):
    for args in (["validate", bad["binary"]], ["cost", bad["not_utf8"]], ["data", "prepare", bad["directory"]],
                 ["serve", bad["missing"], "--port", "70000"]):
        result = tunekit(*map(str, args))
        assert result.returncode in (1, 2), result.stderr
        assert "Traceback" not in result.stderr + result.stdout
        assert sum(line.startswith(("error:", "Usage:")) for line in result.stderr.splitlines()) == 1, result.stderr


# --- unreadable files ----------------------------------------------------------------------------

PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2


def _as_an_ordinary_reader() -> None:
    """preexec_fn: root keeps its uid but loses what lets it read any file (CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH, dropped from the bounding set, so the exec'd interpreter never has them);
    a mode-000 file is then as unreadable to the command as to any user. (Switching to an
    unprivileged uid would also lock the command out of an interpreter installed under /root.)"""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) refused")


def _tunekit_unprivileged(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    preexec = _as_an_ordinary_reader if os.geteuid() == 0 else None
    return subprocess.run([sys.executable, "-m", "tunekit", *map(str, args)], capture_output=True, text=True, env=env,
                          preexec_fn=preexec, timeout=300)


@pytest.fixture
def unreadable(tmp_path, tiny_model_dir) -> dict[str, Path]:
    """A recipe and a data file with mode 000 (and a readable recipe pointing at that data file)."""
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(CHAT | {"id": i}) for i in range(12)) + "\n")
    recipe = _recipe(tmp_path, "train.jsonl", str(tiny_model_dir))
    locked = tmp_path / "locked.yaml"
    shutil.copy(recipe, locked)
    for path in (data, locked):
        path.chmod(0)
    try:
        probe = subprocess.run([sys.executable, "-c", f"open({str(locked)!r}).read()"], capture_output=True, text=True,
                               preexec_fn=_as_an_ordinary_reader if os.geteuid() == 0 else None)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot drop the privilege to read any file here ({exc}): a mode-000 file stays readable")
    if probe.returncode == 0:
        pytest.skip("a mode-000 file is still readable after dropping CAP_DAC_OVERRIDE (a filesystem without permissions?)")
    return {"recipe": locked, "data": data, "recipe_of_data": recipe}


def _assert_cannot_read(result: subprocess.CompletedProcess, path: Path) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output, output
    # One message (a recipe's problems are listed under its one "error:" line), naming the file.
    assert sum(line.startswith(("error:", "Usage:")) for line in result.stderr.splitlines()) == 1, output
    assert any(str(path) in line and "cannot read" in line for line in result.stderr.splitlines()), output


@pytest.mark.parametrize("command", FILE_COMMANDS, ids=" ".join)
def test_every_command_given_an_unreadable_file(unreadable, command):
    _assert_cannot_read(_tunekit_unprivileged(*command, unreadable["recipe"]), unreadable["recipe"])


@pytest.mark.parametrize("command", [["validate"], ["data", "prepare"], ["data", "preview"], ["estimate"], ["run"]], ids=" ".join)
def test_an_unreadable_data_file(unreadable, command):
    _assert_cannot_read(_tunekit_unprivileged(*command, unreadable["recipe_of_data"]), unreadable["data"])


def test_an_unreadable_data_file_audited_without_a_recipe(unreadable, tiny_model_dir, tmp_path):
    result = _tunekit_unprivileged("data", "prepare", unreadable["data"], "--model", tiny_model_dir, "--out", tmp_path / "runs")
    _assert_cannot_read(result, unreadable["data"])
