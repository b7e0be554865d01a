"""`tunekit cost`: the worked examples of break-even, the never case, totals, sensitivity, the plot,
and bad inputs, through the Python function and the command."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.cost_helpers import cost_json, tunekit
from tunekit.cost import build_inputs, cost_report, load_inputs, load_prices, plot_cost_curves
from tunekit.errors import TunekitError

# GPT-4o at its launch price of $5 per million input tokens, with 2,300 tokens of instructions and
# examples that a fine-tuned model no longer needs; the tuned model costs $0.00015 a request.
GPT4O_WORKED_EXAMPLE = {
    "traffic.overhead_tokens": 2300,
    "traffic.requests_per_day": 1000,
    "prompted.input_per_m": 5.0,
    "prompted.output_per_m": 15.0,
    "finetuned.cost_per_request": 0.00015,
    "training.cost": 50.0,
}


def report_of(values: dict, prices=None):
    layer = {key: (value, "test") for key, value in values.items()}
    return cost_report(build_inputs([layer]), prices or load_prices())


def test_gpt4o_overhead_pays_back_50_dollars_after_4400_requests():
    report = report_of(GPT4O_WORKED_EXAMPLE)
    assert report.prompted_per_request == pytest.approx(2300 * 5 / 1e6)  # $0.0115
    assert report.saving_per_request == pytest.approx(0.01135)
    # 50 / 0.01135 = 4,405.3: the 4,406th request is the first one past break-even.
    assert report.break_even_requests == 4406
    assert report.break_even_days == pytest.approx(4.406)
    assert f"{report.break_even_days:.1f}" == "4.4"
    assert "4,406 requests (4.4 days at 1,000 requests/day)" in report.verdict
    assert not report.never


def test_two_thousand_dollars_of_data_move_break_even_to_180000_requests():
    report = report_of({**GPT4O_WORKED_EXAMPLE, "data.cost": 2000.0})
    assert report.setup_cost == 2050.0
    assert report.break_even_requests == 180_617  # ceil(2,050 / 0.01135)
    assert report.break_even_requests == pytest.approx(180_000, rel=0.005)
    assert report.break_even_days == pytest.approx(180.617)


def test_500_dollars_of_training_at_2_cents_against_half_a_cent_is_33334_requests():
    report = report_of({"prompted.cost_per_request": 0.02, "finetuned.cost_per_request": 0.005, "training.cost": 500.0})
    # 500 / 0.015 = 33,333.3: not yet paid back after 33,333 requests.
    assert report.break_even_requests == 33_334
    assert report.break_even_days is None  # no volume given
    assert any("requests per day not given" in note for note in report.notes)


def test_the_cli_reproduces_the_worked_examples():
    gpt4o = (
        "--overhead-tokens", "2300", "--prompted-input-per-m", "5", "--prompted-output-per-m", "15",
        "--finetuned-cost-per-request", "0.00015", "--training-cost", "50", "--requests-per-day", "1000",
    )  # fmt: skip
    first = cost_json(*gpt4o)
    assert (first["break_even_requests"], first["break_even_days"]) == (4406, pytest.approx(4.406))
    assert cost_json(*gpt4o, "--data-cost", "2000")["break_even_requests"] == 180_617
    third = cost_json("--prompted-cost-per-request", "0.02", "--finetuned-cost-per-request", "0.005", "--training-cost", "500")
    assert third["break_even_requests"] == 33_334


def test_the_text_report_names_the_source_of_each_figure(tmp_path):
    inputs = tmp_path / "inputs.yaml"
    inputs.write_text(
        "traffic: {overhead_tokens: 2300, requests_per_day: 1000}\nprompted: {input_per_m: 5, output_per_m: 15}\n"
        "finetuned: {cost_per_request: 0.00015}\ndata: {cost: 2000}\n",
        encoding="utf-8",
    )
    result = tunekit("cost", str(inputs), "--training-cost", "50")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stderr  # the report is for people: on the console (stderr); --json goes to stdout
    assert f"2,300 tokens/request  ({inputs}: traffic.overhead_tokens)" in out
    assert "50 $  (--training-cost)" in out
    assert "after 180,617 requests (180.6 days at 1,000 requests/day)" in out


def test_twelve_month_totals():
    report = report_of(GPT4O_WORKED_EXAMPLE)
    assert report.horizon_requests == pytest.approx(365_000)
    assert report.prompted_total == pytest.approx(0.0115 * 365_000)  # $4,197.50
    assert report.finetuned_total == pytest.approx(50 + 0.00015 * 365_000)  # $104.75
    assert report.savings_total == pytest.approx(4197.5 - 104.75)


def test_sensitivity_over_volume_and_prompt_overhead():
    report = report_of(GPT4O_WORKED_EXAMPLE)
    cells = {(c.requests_per_day, c.overhead_tokens): c for c in report.sensitivity}
    assert sorted({v for v, _ in cells}) == [100, 500, 1000, 2000, 10_000]
    assert sorted({o for _, o in cells}) == [575, 1150, 2300, 4600]
    centre = cells[(1000, 2300)]
    assert (centre.break_even_requests, centre.break_even_days) == (report.break_even_requests, report.break_even_days)
    # 100 requests a day with half the overhead: $0.00575 - $0.00015 saved per request.
    slow = cells[(100, 1150)]
    assert slow.prompted_per_request == pytest.approx(0.00575)
    assert slow.break_even_requests == 8929  # ceil(50 / 0.0056)
    assert slow.break_even_days == pytest.approx(89.29)
    assert slow.savings_over_horizon == pytest.approx(0.0056 * 100 * 365 - 50)
    # Ten times the volume, twice the overhead: paid back within the first hours.
    fast = cells[(10_000, 4600)]
    assert fast.break_even_requests == 2189  # ceil(50 / 0.02285)
    assert fast.break_even_days == pytest.approx(0.2189)


def test_never_when_the_fine_tuned_request_is_not_cheaper():
    report = report_of(
        {"traffic.requests_per_day": 1000, "prompted.cost_per_request": 0.001, "finetuned.cost_per_request": 0.002, "training.cost": 50.0}
    )
    assert report.never and report.break_even_requests is None and report.break_even_days is None
    assert report.verdict.startswith("never:")
    assert report.savings_total == pytest.approx(-0.001 * 365_000 - 50)
    assert all(cell.break_even_requests is None for cell in report.sensitivity)
    assert not report.sensitivity_overhead_varies  # a per-request prompted cost has no token axis
    equal = report_of({"prompted.cost_per_request": 0.002, "finetuned.cost_per_request": 0.002, "training.cost": 50.0})
    assert equal.never


def test_self_hosted_cost_is_gpu_hourly_over_sustained_requests_per_hour():
    report = report_of(
        {**GPT4O_WORKED_EXAMPLE, "finetuned.cost_per_request": None, "finetuned.gpu": "NVIDIA L4", "finetuned.requests_per_s": 2.0}
    )
    hourly = (0.43 + 0.70) / 2  # the table's specialist range for an L4, mid-point
    assert report.finetuned_per_request == pytest.approx(hourly / 7200)
    gpu = report.figure("finetuned.gpu_per_hour")
    assert gpu.value == pytest.approx(hourly)
    assert "gpus.l4.per_hour.specialist" in gpu.source and "as of 2025-06-01" in gpu.source
    # At 1,000 requests a day one L4 idles most of the day; the report says what that costs.
    assert any("busy 0.6% of the day" in note for note in report.notes)
    always_on = report_of({**GPT4O_WORKED_EXAMPLE, "finetuned.cost_per_request": None, "finetuned.gpu": "l4",
                           "finetuned.requests_per_s": 2.0, "finetuned.billing": "always_on"})  # fmt: skip
    assert always_on.finetuned_per_request == pytest.approx(hourly * 24 / 1000)


def test_api_fine_tune_is_priced_per_token_and_per_training_token():
    report = report_of({
        "traffic.requests_per_day": 1000, "traffic.overhead_tokens": 2000, "traffic.input_tokens": 300, "traffic.output_tokens": 100,
        "prompted.model": "gpt-4o", "finetuned.hosting": "api", "finetuned.model": "ft:gpt-4o-mini", "training.tokens": 1_500_000,
    })  # fmt: skip
    assert report.prompted_per_request == pytest.approx(2300 * 2.5 / 1e6 + 100 * 10 / 1e6)
    assert report.finetuned_per_request == pytest.approx(300 * 0.30 / 1e6 + 100 * 1.20 / 1e6)
    assert report.training_cost == pytest.approx(1.5 * 3.0)
    assert report.figure("training.per_m_tokens").source.endswith("api.ft:gpt-4o-mini.training_per_m")


def test_the_plot_marks_the_crossover_and_is_a_png(tmp_path):
    report = report_of(GPT4O_WORKED_EXAMPLE)
    marks = plot_cost_curves(report, tmp_path / "curves.png")
    assert marks.crossover == (pytest.approx(50 / 0.01135), pytest.approx(0.0115 * 50 / 0.01135))
    assert marks.panels == [4 * 4406, 365_000]  # the crossover up close, then the 12 months
    assert marks.label == "break-even: 4,406 requests, 4.4 days"
    from PIL import Image

    with Image.open(marks.path) as image:
        assert image.format == "PNG" and image.width > 1000 and image.height > 400
    never = plot_cost_curves(report_of({"prompted.cost_per_request": 0.001, "finetuned.cost_per_request": 0.002, "training.cost": 5.0}),
                             tmp_path / "never.png")  # fmt: skip
    assert never.crossover is None and never.label.startswith("never")
    assert never.path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_cli_writes_the_plot(tmp_path):
    report = cost_json("--prompted-cost-per-request", "0.02", "--finetuned-cost-per-request", "0.005", "--training-cost", "500",
                       "--requests-per-day", "2000", "--plot", str(tmp_path / "curves.png"))  # fmt: skip
    assert report["plot"] == str(tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--requests-per-day", "-5"], "traffic.requests_per_day: Input should be greater than 0 (got -5.0, from --requests-per-day)"),
        (["--prompted-model", "gpt-9"], "prompted.model: model 'gpt-9' is not in the price table"),
        (["--hosting", "cloud"], "finetuned.hosting: Input should be 'self_hosted' or 'api'"),
        (["--serve-gpu", "tpu-v9", "--requests-per-s", "2", "--finetuned-cost-per-request", ""], "GPU 'tpu-v9' is not in the price table"),
    ],
    ids=["negative", "unknown-model", "bad-choice", "unknown-gpu"],
)
def test_bad_flags_are_one_clear_error_with_the_key(args, expected):
    base = {"--finetuned-cost-per-request": "0.001", "--training-cost": "5"}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    flat = [item for flag, value in base.items() if value for item in (flag, value)]
    result = tunekit("cost", *flat)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert expected in out
    assert "Traceback" not in out


def test_unknown_key_in_the_inputs_file_names_the_key_and_the_file(tmp_path):
    inputs = tmp_path / "inputs.yaml"
    inputs.write_text("traffic:\n  requests_per_dya: 1000\ntraining: {cost: 5}\nfinetuned: {cost_per_request: 0.001}\n", encoding="utf-8")
    result = tunekit("cost", str(inputs))
    out = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in out
    assert f"traffic.requests_per_dya: unknown key (in {inputs})" in out
    with pytest.raises(TunekitError, match="traffic.requests_per_dya: unknown key"):
        load_inputs(inputs_file=inputs)


def test_missing_price_and_training_cost_say_what_to_give():
    with pytest.raises(TunekitError, match="training: the training cost is unknown"):
        report_of({"prompted.cost_per_request": 0.01, "finetuned.cost_per_request": 0.001})
    with pytest.raises(TunekitError, match="finetuned.requests_per_s: required for self_hosted"):
        report_of({"prompted.cost_per_request": 0.01, "training.cost": 5.0})


def test_a_price_file_overrides_single_entries(tmp_path):
    override = tmp_path / "prices.yaml"
    override.write_text(
        "as_of: 2026-11-01\napi:\n  gpt-4o: {input_per_m: 5.0, output_per_m: 15.0}\n"
        "gpus:\n  h100-80gb: {per_hour: {specialist: [1.85, 2.49]}}\n",
        encoding="utf-8",
    )
    prices = load_prices(override)
    assert str(prices.as_of) == "2026-11-01" and prices.api["gpt-4o-mini"].input_per_m == 0.15
    # One price replaced; the entry keeps its other providers and the device names it matches.
    key, h100 = prices.gpu("NVIDIA H100 80GB HBM3")
    assert key == "h100-80gb" and h100.per_hour["specialist"] == (1.85, 2.49) and h100.per_hour["marketplace"] == (1.4, 2.5)
    report = report_of({**GPT4O_WORKED_EXAMPLE, "prompted.input_per_m": None, "prompted.output_per_m": None}, prices)
    assert report.break_even_requests == 4406
    assert f"+ {override}" in report.figure("prompted.input_per_m").source
    bad = tmp_path / "bad.yaml"
    bad.write_text("as_of: 2026-11-01\napi:\n  gpt-4o: {input_per_m: -1, output_per_m: 15.0}\n", encoding="utf-8")
    with pytest.raises(TunekitError, match="api.gpt-4o.input_per_m"):
        load_prices(bad)


def _keys(model, prefix=""):
    from pydantic import BaseModel

    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from _keys(field.annotation, f"{prefix}{name}.")
        elif name != "sources":  # set by tunekit, not by the user
            yield f"{prefix}{name}"


def test_docs_name_every_input_key_flag_and_price():
    from tunekit.cli.cost import ADVISE_FLAGS, COST_FLAGS
    from tunekit.cost import CostInputs, Situation

    docs = (Path(__file__).resolve().parents[2] / "docs" / "cost.md").read_text(encoding="utf-8")
    for key in [*_keys(CostInputs), *_keys(Situation)]:
        assert f"| `{key}` |" in docs, key
    for flag in [*COST_FLAGS, *ADVISE_FLAGS]:
        assert f"`--{flag.replace('_', '-')}`" in docs, flag
    prices = load_prices()
    assert f"as of {prices.as_of}" in docs
    for key, entry in prices.api.items():
        assert f"| `{key}` | {entry.provider} | {entry.input_per_m:g} | {entry.output_per_m:g} |" in docs, key
    for key, entry in prices.gpus.items():
        low, high = entry.per_hour["specialist"]
        assert f"| `{key}` | {entry.memory_gib:g} |" in docs and f"{low:g}–{high:g}" in docs, key
