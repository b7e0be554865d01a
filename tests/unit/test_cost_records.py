"""Cost inputs read from tunekit's own records: a real (tiny) training run, its estimate, a serving
benchmark and a request log; every figure of the report names the file and key it came from."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3

import pytest

from tests.row_helpers import chat_examples
from tests.unit.cost_helpers import cost_json
from tests.unit.train_helpers import tiny_train_run
from tunekit.cost import cost_report, load_inputs, load_prices
from tunekit.errors import TunekitError
from tests.conftest import write_jsonl

START = dt.datetime(2026, 5, 1, tzinfo=dt.timezone.utc)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_model_dir):
    """A finished two-step LoRA run on the tiny model: manifest.json and metrics.jsonl as train() writes them."""
    from tunekit.train import train

    root = tmp_path_factory.mktemp("cost-run")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TUNEKIT_HOME", str(root / "home"))
        recipe, run = tiny_train_run(root, tiny_model_dir, max_steps=2)
        rows = [{**row, "meta": {"source": "train.jsonl", "line": i + 1}} for i, row in enumerate(chat_examples(10))]
        write_jsonl(root / "train.jsonl", chat_examples(10))
        write_jsonl(run.split("train"), rows[:8])
        write_jsonl(run.split("val"), rows[8:])
        train(recipe, run, show_progress=False)
    return recipe, run


def benchmark_file(path, rates=(3.5, 6.25)):
    """Serving measurements in the shape of bench/results/*.jsonl: one object per measurement."""
    rows = [{"workload": f"tiny lora, concurrency {2**i}", "requests_per_s": r, "hardware": {"gpus": ["NVIDIA L4"]}} for i, r in enumerate(rates)]
    write_jsonl(path, rows)
    return path


def request_log(path, hours=24, prompt=(200, 400), output=(50, 150)):
    """JSONL rows in the shape of the serve request log: one request an hour for `hours` hours,
    alternating between two prompt and output sizes."""
    rows = [
        {"created": (START + dt.timedelta(hours=h)).isoformat(), "model": "triage", "prompt_tokens": prompt[h % 2],
         "completion_tokens": output[h % 2], "status": 200}
        for h in range(hours + 1)
    ]  # fmt: skip
    write_jsonl(path, rows)
    return path


def test_a_run_gives_training_hours_hardware_tokens_and_rows(trained_run):
    _, run = trained_run
    manifest = json.loads(run.manifest.read_text())
    metrics = [json.loads(line) for line in run.metrics.read_text().splitlines()]
    last_tokens = [(n, m) for n, m in enumerate(metrics, 1) if "tokens_seen" in m][-1]

    inputs = load_inputs(run=run.root, flags={"prompted.cost_per_request": (0.01, "--prompted-cost-per-request"),
                                              "finetuned.cost_per_request": (0.001, "--finetuned-cost-per-request")})  # fmt: skip
    assert inputs.training.hours == pytest.approx(manifest["result"]["runtime_s"] / 3600)
    assert inputs.training.gpu == ("cpu" if not manifest["hardware"].get("gpus") else manifest["hardware"]["gpus"][0])
    assert inputs.training.tokens == last_tokens[1]["tokens_seen"] > 0
    assert inputs.data.examples == manifest["training"]["train_rows"] == 8

    report = cost_report(inputs, load_prices())
    hours = report.figure("training.hours")
    assert hours.source == f"{run.manifest}: result.runtime_s ({manifest['result']['runtime_s']:,.1f} s)"
    assert report.figure("training.tokens").source == f"{run.metrics}: line {last_tokens[0]}: tokens_seen (step {last_tokens[1]['step']})"
    hourly = report.figure("training.gpu_per_hour")
    assert "gpus.cpu.per_hour.specialist" in hourly.source and f"GPU from {run.manifest}: hardware" in hourly.source
    assert report.training_cost == pytest.approx(inputs.training.hours * (0.05 + 0.15) / 2)
    # No data cost was given: counted as $0, and the report says so with the run's row count.
    assert any(f"8 examples, {run.manifest}: training.train_rows" in note for note in report.notes)


def test_an_estimate_gives_training_hours_and_tokens(trained_run, tmp_path):
    from tunekit.train.estimate import estimate

    recipe, _ = trained_run
    result = estimate(recipe, tokens_per_s=500.0)
    (tmp_path / "estimate.json").write_text(result.to_json())
    inputs = load_inputs(estimate=tmp_path / "estimate.json")
    assert inputs.training.hours == pytest.approx(result.seconds / 3600)
    assert inputs.training.tokens == result.total_tokens > 0
    assert inputs.sources["training.hours"].startswith(f"{tmp_path / 'estimate.json'}: seconds")
    # A recipe is estimated on the spot, at the speed given for the target GPU.
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(recipe.to_yaml())
    now = load_inputs(estimate=recipe_file, tokens_per_s=500.0)
    assert (now.training.hours, now.training.tokens) == (pytest.approx(inputs.training.hours), inputs.training.tokens)
    assert now.sources["training.hours"].startswith(f"tunekit estimate {recipe_file}: seconds")


def test_benchmark_and_request_log_give_throughput_volume_and_tokens(tmp_path):
    bench = benchmark_file(tmp_path / "serve_bench.jsonl")
    log = request_log(tmp_path / "requests.jsonl")
    inputs = load_inputs(benchmark=bench, request_log=log, flags={
        "training.cost": (50.0, "--training-cost"), "traffic.overhead_tokens": (2300, "--overhead-tokens")})  # fmt: skip
    assert inputs.finetuned.requests_per_s == 6.25  # the best measurement
    assert inputs.finetuned.gpu == "NVIDIA L4"
    assert inputs.traffic.requests_per_day == pytest.approx(24.0)  # 25 requests, one an hour, over 24 hours
    assert (inputs.traffic.input_tokens, inputs.traffic.output_tokens) == (pytest.approx(296), pytest.approx(98))
    report = cost_report(inputs, load_prices())
    assert report.figure("finetuned.requests_per_s").source == f"{bench}: line 2: requests_per_s (tiny lora, concurrency 2), best of 2"
    volume = report.figure("traffic.requests_per_day").source
    assert volume.startswith(f"{log}: 25 rows, 2026-05-01T00:00:00+00:00 to 2026-05-02T00:00:00+00:00")
    assert report.figure("traffic.input_tokens").source.endswith("mean prompt_tokens")
    # gpt-4o at the table's $2.50 / $10 per million tokens; one L4 at the specialist mid-point.
    assert report.prompted_per_request == pytest.approx((2300 + 296) * 2.5 / 1e6 + 98 * 10 / 1e6)
    assert report.finetuned_per_request == pytest.approx(0.565 / (6.25 * 3600))


def test_the_serving_benchmarks_own_records_nested_by_backend_and_client_count(tmp_path):
    """bench/serve_throughput.py --backend both writes one record with a rate per backend and client count."""
    record = {
        "hf": {"backend": "hf", "one_client": {"requests_per_s": 0.9, "workload": "1 concurrent clients"},
               "eight_clients": {"requests_per_s": 3.1, "workload": "8 concurrent clients"}},
        "llamacpp": {"backend": "llamacpp", "one_client": {"requests_per_s": 2.2}, "eight_clients": {"requests_per_s": 4.4}},
        "settings": {"cpus": 2},
    }  # fmt: skip
    bench = tmp_path / "serve_throughput.jsonl"
    write_jsonl(bench, [{"hf": {"eight_clients": {"requests_per_s": 9.0}}, "settings": {"cpus": 8}}, record])
    bench.write_text(bench.read_text().replace('"requests_per_s": 9.0', '"requests_per_s": 0'))  # a failed run: no rate
    inputs = load_inputs(benchmark=bench, flags={"training.cost": (1.0, "--training-cost")})
    assert inputs.finetuned.requests_per_s == 4.4
    assert inputs.finetuned.gpu == "cpu"
    report = cost_report(inputs, load_prices())
    assert report.figure("finetuned.requests_per_s").source == f"{bench}: line 2: llamacpp.eight_clients.requests_per_s, best of 4"
    priced = report.figure("finetuned.gpu_per_hour")
    assert priced.source.endswith(f"gpus.cpu.per_hour.specialist; GPU from {bench}: line 2: settings.cpus (2 CPU cores, no GPU)")


def test_a_short_log_gives_its_tokens_when_the_volume_is_a_flag(tmp_path):
    """A replay of a few minutes cannot measure a daily volume; with --requests-per-day its token means still count."""
    log = tmp_path / "replay.jsonl"
    write_jsonl(log, [{"created": "2026-05-01T00:00:00Z", "model": "triage", "prompt_tokens": 120, "completion_tokens": 30},
                      {"created": "2026-05-01T00:02:00Z", "model": "triage", "prompt_tokens": 80, "completion_tokens": 10}])  # fmt: skip
    with pytest.raises(TunekitError, match="span 2 minutes, too short"):
        load_inputs(request_log=log)
    inputs = load_inputs(request_log=log, flags={"traffic.requests_per_day": (1000, "--requests-per-day"),
                                                 "training.cost": (1.0, "--training-cost")})  # fmt: skip
    assert (inputs.traffic.requests_per_day, inputs.traffic.input_tokens, inputs.traffic.output_tokens) == (1000, 100, 20)
    assert inputs.source("traffic.requests_per_day") == "--requests-per-day"
    assert inputs.source("traffic.input_tokens") == f"{log}: 2 rows, 2026-05-01T00:00:00+00:00 to 2026-05-01T00:02:00+00:00: mean prompt_tokens"


def test_the_request_log_of_tunekit_serve(tmp_path):
    from tunekit.serve.requestlog import RequestLog, RequestRecord

    db = tmp_path / "requests.db"
    start = START.timestamp()
    with RequestLog(db) as log:
        for h in range(25):  # one answered triage request an hour for a day, with refusals and another model between
            log.write(RequestRecord(model="triage", created=start + 3600 * h, prompt_tokens=120, completion_tokens=30, status=200))
            log.write(RequestRecord(model="triage", created=start + 3600 * h + 60, status=429))
            log.write(RequestRecord(model="other", created=start + 3600 * h + 120, prompt_tokens=9999, completion_tokens=9999))
    inputs = load_inputs(request_log=db, log_model="triage")
    assert inputs.traffic.requests_per_day == pytest.approx(24.0)  # 25 answered rows an hour apart over 24 hours
    assert (inputs.traffic.input_tokens, inputs.traffic.output_tokens) == (120, 30)
    source = inputs.sources["traffic.requests_per_day"]
    assert source.startswith(f"{db}: table requests: 25 rows where model = triage (25 refused, not counted), 2026-05-01T00:00:00+00:00")
    everything = load_inputs(request_log=db)
    assert everything.traffic.requests_per_day == pytest.approx(49 * 86400 / (24 * 3600 + 120))


def test_the_cli_reads_the_run_the_benchmark_and_the_log(trained_run, tmp_path):
    _, run = trained_run
    bench, log = benchmark_file(tmp_path / "bench.jsonl"), request_log(tmp_path / "log.jsonl")
    report = cost_json("--run", str(run.root), "--benchmark", str(bench), "--request-log", str(log), "--overhead-tokens", "2300")
    sources = {f["key"]: f["source"] for f in report["figures"]}
    assert sources["training.hours"].startswith(f"{run.manifest}: result.runtime_s")
    assert sources["finetuned.requests_per_s"].startswith(f"{bench}: line 2")
    assert sources["traffic.requests_per_day"].startswith(f"{log}: 25 rows")
    assert report["break_even_requests"] == 1  # a CPU run costs a fraction of a cent: the first request repays it


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([{"created": "2026-05-01T00:00:00Z", "prompt_tokens": 1}], "line 1: missing completion_tokens"),
        ([{"created": "2026-05-01T00:00:00Z", "prompt_tokens": 1, "completion_tokens": 1}] * 2, "span 0 minutes, too short"),
        (['{"created": 1777593600, "prompt_tokens": 1, "completion_tokens": 1}', "{oops"], "line 2: invalid JSON"),
        ([{"created": "yesterday", "prompt_tokens": 1, "completion_tokens": 1}] * 2, "line 1: created: 'yesterday' is not a unix time"),
        ([{"created": 1777593600 + 7200 * i, "prompt_tokens": 1, "completion_tokens": 1, "status": 503} for i in range(3)],
         "0 answered request row"),
    ],
    ids=["missing-column", "too-short", "bad-json", "bad-time", "all-refused"],
)
def test_a_bad_request_log_is_named_by_line(tmp_path, rows, expected):
    write_jsonl(tmp_path / "log.jsonl", rows)
    with pytest.raises(TunekitError, match=expected):
        load_inputs(request_log=tmp_path / "log.jsonl")


def test_an_unfinished_run_says_so(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"run": "t", "result": {}}))
    with pytest.raises(TunekitError, match="result.runtime_s is missing"):
        load_inputs(run=tmp_path)
    with pytest.raises(TunekitError, match="run manifest not found"):
        load_inputs(run=tmp_path / "nope")
