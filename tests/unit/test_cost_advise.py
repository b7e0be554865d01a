"""`tunekit advise`: the decision rules for a handful of situations, each answer with numbers behind
its reasons, and starter recipes that load for the fine-tune answers."""

from __future__ import annotations

import json

import pytest

from tests.unit.cost_helpers import tunekit
from tunekit.config import load_recipe
from tunekit.cost import load_prices
from tunekit.cost.decide import advise, load_situation
from tunekit.errors import TunekitError


def advice_for(tmp_path=None, **situation):
    flags = {key: (value, f"--{key}") for key, value in situation.items()}
    out = tmp_path / "starter.yaml" if tmp_path is not None else None
    return advise(load_situation(None, flags), load_prices(), recipe_out=out)


def finding(advice, rule):
    return next(f for f in advice.findings if f.rule == rule)


CATEGORICAL = {"privacy", "gdpr"}  # a compliance rule is a yes or no, not a threshold


def assert_reasons_carry_numbers(advice):
    for f in advice.findings:
        assert f.numbers, f
        assert f.rule in CATEGORICAL or any(isinstance(v, (int, float)) and not isinstance(v, bool) for v in f.numbers.values()), f


def loads(path):
    recipe = load_recipe(path, check_files=False)
    assert recipe.name
    return recipe


def test_knowledge_that_changes_weekly_goes_to_retrieval(tmp_path):
    advice = advice_for(tmp_path, task="knowledge_qa", knowledge_changes="weekly", labelled_examples=2000, daily_requests=5000)
    assert advice.approach == "rag" and advice.method is None
    often = finding(advice, "knowledge_changes_often")
    assert often.numbers == {"retrains_per_year": 52, "threshold": 12}
    assert "52 retrains a year" in often.text
    # Tuning would pay on tokens alone, but retrieval fills the prompt anyway: the cost reason is set aside.
    assert "set aside" in finding(advice, "cost_at_volume").text
    assert advice.recipes == [] and not (tmp_path / "starter.yaml").exists()
    assert_reasons_carry_numbers(advice)


def test_format_latency_and_privacy_at_volume_fine_tune_a_lora(tmp_path):
    advice = advice_for(
        tmp_path, task="extraction", labelled_examples=2000, daily_requests=20_000, latency_ms=300, compliance="on_prem",
        gpu_memory_gib=24, base_params_b=8, prompt_overhead_tokens=2300,
    )  # fmt: skip
    assert (advice.approach, advice.method, advice.adapter) == ("fine_tune", "sft", "lora")
    assert {"format_or_style", "latency", "privacy", "cost_at_volume", "memory_fits_lora"} <= {f.rule for f in advice.findings}
    cost = finding(advice, "cost_at_volume")
    assert cost.points_to == "fine_tune"
    # gpt-4o ($2.50 / $10 per M) with 2,300 + 300 prompt and 100 output tokens, against ft:gpt-4o-mini ($0.30 / $1.20).
    assert cost.numbers["prompted_per_request"] == pytest.approx(2600 * 2.5e-6 + 100 * 10e-6)
    assert cost.numbers["finetuned_per_request"] == pytest.approx(300 * 0.3e-6 + 100 * 1.2e-6)
    assert cost.numbers["training_tokens"] == 2000 * 400 * 3  # examples x tokens x epochs, at $3 per M
    assert cost.numbers["break_even_days"] < 1
    assert "which compliance on_prem rules out" in cost.text
    memory = finding(advice, "memory_fits_lora").numbers
    assert memory["lora_gib"] == pytest.approx(8e9 * 2 * 1.2 / 2**30, abs=0.05)  # 17.9 GiB, within 24
    assert_reasons_carry_numbers(advice)
    recipe = loads(tmp_path / "starter.yaml")
    assert (recipe.train.method, recipe.train.adapter, recipe.train.epochs) == ("sft", "lora", 2)
    assert advice.recipes == [str(tmp_path / "starter.yaml")]


def test_few_examples_prompt_with_few_shot_first():
    advice = advice_for(task="chat", labelled_examples=30)
    assert advice.approach == "few_shot"
    few = finding(advice, "few_examples")
    assert few.numbers == {"labelled_examples": 30, "few_below": 100, "enough_from": 500}


def test_few_examples_for_a_format_task_distill_then_fine_tune(tmp_path):
    advice = advice_for(tmp_path, task="classification", labelled_examples=40)
    assert advice.approach == "distill_then_fine_tune"
    assert advice.steps[0].startswith("distill labelled examples from a teacher model until you have about 500")
    assert loads(tmp_path / "starter.yaml").train.epochs == 3


def test_preference_pairs_add_dpo_after_sft(tmp_path):
    advice = advice_for(tmp_path, task="style", labelled_examples=1500, preference_pairs=800)
    assert advice.approach == "fine_tune" and "then DPO" in advice.summary
    assert finding(advice, "preference_data").numbers == {"preference_pairs": 800, "threshold": 100}
    assert [s.split(" (")[0] for s in advice.steps] == ["supervised fine-tuning", "DPO"]
    sft, dpo = (loads(p) for p in advice.recipes)
    assert sft.train.method == "sft"
    assert dpo.train.method == "dpo" and dpo.data.format == "preference"
    assert dpo.train.dpo.init_from == tmp_path / "runs" / "starter"


def test_domain_vocabulary_with_text_continues_pre_training_first(tmp_path):
    advice = advice_for(tmp_path, task="extraction", labelled_examples=1000, domain_vocabulary=True, domain_text_tokens=5_000_000)
    assert advice.method == "cpt+sft" and advice.steps[0].startswith("continued pre-training")
    assert finding(advice, "domain_vocabulary").numbers == {"domain_text_tokens": 5_000_000, "threshold": 1_000_000}
    sft, cpt = (loads(p) for p in advice.recipes)
    assert cpt.train.method == "cpt" and cpt.data.format == "text"
    thin = advice_for(task="extraction", labelled_examples=1000, domain_vocabulary=True, domain_text_tokens=20_000)
    assert thin.method == "sft" and finding(thin, "domain_vocabulary_thin").points_to == "fine_tune"


def test_a_small_gpu_trains_with_qlora(tmp_path):
    advice = advice_for(tmp_path, task="structured_output", labelled_examples=800, gpu_memory_gib=12, base_params_b=8)
    assert advice.adapter == "qlora"
    memory = finding(advice, "memory_budget").numbers
    assert memory["lora_gib"] > 12 >= memory["qlora_gib"]
    assert memory["qlora_gib"] == pytest.approx(8e9 * (4 + 8 / 64 + 32 / 16384) / 8 * 1.2 / 2**30, abs=0.05)
    assert loads(tmp_path / "starter.yaml").train.adapter == "qlora"
    assert "the memory advice is for a base of 8B parameters: set base_model to it" in (tmp_path / "starter.yaml").read_text()
    too_small = advice_for(task="structured_output", labelled_examples=800, gpu_memory_gib=2, base_params_b=8)
    assert "pick a smaller base" in finding(too_small, "memory_too_small").text


def test_low_volume_does_not_pay_and_a_tight_budget_stays_with_prompting():
    low = advice_for(task="chat", labelled_examples=1000, daily_requests=20)
    assert low.approach == "prompt"
    assert finding(low, "cost_at_volume").numbers["min_yearly_savings"] == 1000
    tight = advice_for(task="classification", labelled_examples=100_000, setup_budget=10)
    assert tight.approach == "few_shot"
    assert finding(tight, "over_budget").numbers["training_cost"] > 10


def test_the_cli_writes_a_starter_recipe_and_prints_json(tmp_path):
    out = tmp_path / "recipe.yaml"
    args = ("advise", "--task", "classification", "--labelled-examples", "2000", "--daily-requests", "10000", "--recipe-out", str(out))
    result = tunekit(*args, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    advice = json.loads(result.stdout)
    assert advice["approach"] == "fine_tune" and advice["recipes"] == [str(out)]
    assert loads(out).train.method == "sft"
    again = tunekit(*args)
    assert again.returncode == 1 and f"--recipe-out: {out} exists" in again.stderr and "Traceback" not in again.stderr
    assert tunekit(*args, "--force").returncode == 0
    # An answer that writes no recipe does not care what is at --recipe-out.
    rag = tunekit("advise", "--task", "knowledge_qa", "--knowledge-changes", "daily", "--recipe-out", str(out))
    assert rag.returncode == 0 and "retrieval-augmented generation" in rag.stderr


@pytest.mark.parametrize("command", ["cost", "advise"])
def test_help(command):
    result = tunekit(command, "--help")
    assert result.returncode == 0 and "Usage:" in result.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "task: required"),
        (["--task", "poetry"], "task: Input should be"),
        (["--task", "chat", "--labelled-examples", "-3"], "labelled_examples: Input should be greater than or equal to 0"),
        (["--task", "chat", "--daily-requests", "100", "--prompted-model", "gpt-9"], "prompted_model: model 'gpt-9' is not in the price table"),
    ],
    ids=["no-task", "bad-task", "negative", "unknown-model"],
)
def test_bad_situations_are_one_clear_error(tmp_path, args, expected):
    result = tunekit("advise", *args, cwd=tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in out, out
    assert expected in out
    with pytest.raises(TunekitError):
        load_situation(None, {"task": ("poetry", "--task")})
