"""LLM-as-judge against a real OpenAI-compatible endpoint: tunekit's own server on loopback.

The judges are tiny models built to answer one fixed token: every layer's output projection is
zeroed, so the last hidden state is the embedding of the prompt's final token (always the same
under the chat template), and the output head makes one chosen token win. A "4" judge scores
every answer 4 and then ends its reply (so a budget of 1 token cuts it, 2 do not); an "A" judge
always prefers the first answer shown (pure position bias), which asking in both orders must turn
into ties, and never ends its reply; to a rubric prompt the "A" judge's reply holds no score.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.e2e.serve_helpers import running_server
from tunekit.config import JudgeConfig
from tunekit.eval.judge import Judge, pairwise, rubric_scores, summarize
from tunekit.serve import Engine

PROMPTS = [[{"role": "user", "content": f"Ticket {i}: where is my parcel?"}] for i in range(3)]
REFERENCES = ['{"category": "shipping"}'] * 3
TUNED = ['{"category": "shipping"}', '{"category": "billing"}', "shipping"]
BASE = ["I am not sure.", "Hello!", "shipping"]


def fixed_answer_model(tiny_model_dir: Path, token: str, out: Path, *, then_stop: bool = False) -> Path:
    """A model that answers `token` to every prompt; with `then_stop`, followed by its end-of-turn token."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.tie_word_embeddings = False
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, config=config, dtype=torch.float32)
    last = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], add_generation_prompt=True, return_dict=False)[-1]
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        hidden = model.model.norm(model.model.embed_tokens.weight[last][None])[0]
        model.lm_head.weight.zero_()
        model.lm_head.weight[tokenizer.convert_tokens_to_ids(token)] = hidden * 100
        if then_stop:  # after `token` the last hidden state is its own embedding: the end of turn wins there
            answered = model.model.norm(model.model.embed_tokens.weight[tokenizer.convert_tokens_to_ids(token)][None])[0]
            model.lm_head.weight[tokenizer.eos_token_id] = answered * 100
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def judges(tiny_model_dir, tmp_path_factory):
    """Base URLs of two running servers: {"4": ..., "A": ...}."""
    root = tmp_path_factory.mktemp("judges")
    with running_server(Engine.from_path(fixed_answer_model(tiny_model_dir, "4", root / "judge-four", then_stop=True))) as four, \
         running_server(Engine.from_path(fixed_answer_model(tiny_model_dir, "A", root / "judge-a"))) as first:
        yield {"4": (four, "judge-four"), "A": (first, "judge-a")}


def _judge(url_and_model, cache: Path, retries: int = 1, max_tokens: int = 1) -> Judge:
    url, model = url_and_model
    return Judge(JudgeConfig(enabled=True, base_url=url, model=model, max_tokens=max_tokens, retries=retries), cache)


def test_rubric_scores_are_parsed_and_cached(judges, tmp_path):
    cache = tmp_path / "judge_cache.jsonl"
    judge = _judge(judges["4"], cache)
    rows = {side: rubric_scores(judge, PROMPTS, REFERENCES, answers) for side, answers in (("tuned", TUNED), ("base", BASE))}
    assert [r["score"] for r in rows["tuned"] + rows["base"]] == [4] * 6
    assert [r["reply"] for r in rows["tuned"]] == ["4"] * 3 and rows["tuned"][0]["attempts"] == 1
    # "shipping" is both sides' third answer: one prompt, asked once, then served from the cache.
    assert (judge.calls, judge.cache_hits) == (5, 1)
    assert len(cache.read_text().splitlines()) == 5
    summary = summarize(rows, None)
    assert summary == {
        "failures": 0, "tuned_rubric_mean": 4.0, "base_rubric_mean": 4.0, "truncated": {"n": 6, "of": 6, "max_tokens": [1]}
    }

    again = _judge(judges["4"], cache)  # a rerun pays nothing
    assert [r["score"] for r in rubric_scores(again, PROMPTS, REFERENCES, TUNED)] == [4] * 3
    assert (again.calls, again.cache_hits) == (0, 3)
    other_model = _judge((judges["4"][0], "judge-four"), tmp_path / "other.jsonl")
    other_model.cfg.model = "another-name"  # the cache key includes the judge model
    assert other_model._key("p") != again._key("p")


def test_pairwise_both_orders_cancel_position_bias(judges, tmp_path):
    judge = _judge(judges["A"], tmp_path / "cache.jsonl")
    pairs = pairwise(judge, PROMPTS, REFERENCES, TUNED, BASE)
    # Order 1 shows tuned as A (judge picks tuned), order 2 shows base as A (judge picks base).
    assert [p["orders"] for p in pairs[:2]] == [["tuned", "base"]] * 2
    assert [p["winner"] for p in pairs] == ["tie"] * 3 and [p["agree"] for p in pairs] == [False, False, True]
    assert pairs[2]["identical"]  # the same answer on both sides is a tie without a judge call
    summary = summarize(None, pairs)
    assert summary["win_rate"] == 0.5 and summary["tie_rate"] == 1.0 and summary["order_agreement"] == pytest.approx(1 / 3)
    assert summary["failures"] == 0 and judge.calls == 4
    # The "A" judge never ends its reply: all four replies asked for were cut at max_tokens=1.
    assert [p["cut_at_max_tokens"] for p in pairs] == [[1, 1], [1, 1], []]
    assert summary["truncated"] == {"n": 4, "of": 4, "max_tokens": [1]}


def test_replies_cut_at_max_tokens_are_counted_and_the_cache_remembers(judges, tmp_path):
    """The "4" judge ends its reply after the score: cut at a budget of 1 token, whole at 2. A cached
    reply keeps the budget it was cut at; cache lines written without a finish reason count as not cut."""
    import json

    cut_cache, whole_cache = tmp_path / "cut.jsonl", tmp_path / "whole.jsonl"
    cut = rubric_scores(_judge(judges["4"], cut_cache, max_tokens=1), PROMPTS, REFERENCES, TUNED)
    whole_judge = _judge(judges["4"], whole_cache, max_tokens=2)
    whole = rubric_scores(whole_judge, PROMPTS, REFERENCES, TUNED)
    assert [(r["score"], r["reply"], r["cut_at_max_tokens"]) for r in cut] == [(4, "4", 1)] * 3
    assert [(r["score"], r["reply"], r["cut_at_max_tokens"]) for r in whole] == [(4, "4", None)] * 3
    assert summarize({"tuned": cut, "base": whole}, None)["truncated"] == {"n": 3, "of": 6, "max_tokens": [1]}
    assert [json.loads(line)["finish_reason"] for line in whole_cache.read_text().splitlines()] == ["stop"] * 3
    assert [json.loads(line)["finish_reason"] for line in cut_cache.read_text().splitlines()] == ["length"] * 3

    # A rerun with a larger budget is served the cached replies, and still knows they were cut at 1.
    rerun = _judge(judges["4"], cut_cache, max_tokens=64)
    rows = rubric_scores(rerun, PROMPTS, REFERENCES, TUNED)
    assert rerun.calls == 0 and [r["cut_at_max_tokens"] for r in rows] == [1] * 3

    # A cache written before finish reasons were kept.
    old_cache = tmp_path / "old.jsonl"
    old_cache.write_text("".join(json.dumps({k: v for k, v in json.loads(line).items() if k not in ("finish_reason", "max_tokens")}) + "\n"
                                 for line in cut_cache.read_text().splitlines()), encoding="utf-8")
    old = rubric_scores(_judge(judges["4"], old_cache), PROMPTS, REFERENCES, TUNED)
    assert [(r["score"], r["cut_at_max_tokens"]) for r in old] == [(4, None)] * 3


def test_unparseable_replies_are_retried_then_counted_as_failures(judges, tmp_path):
    cache = tmp_path / "cache.jsonl"
    judge = _judge(judges["A"], cache, retries=2)
    rows = rubric_scores(judge, PROMPTS[:2], REFERENCES[:2], TUNED[:2])
    assert [(r["score"], r["reply"], r["attempts"]) for r in rows] == [(None, "A", 3)] * 2
    assert judge.calls == 6 and not cache.exists()  # failures are not cached: a rerun asks again
    assert summarize({"tuned": rows}, None)["failures"] == 2


def test_unreachable_judge_is_a_failure_not_a_crash(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    judge = Judge(JudgeConfig(enabled=True, base_url=f"http://127.0.0.1:{port}/v1", model="m", retries=1, timeout_s=2),
                  tmp_path / "c.jsonl")
    rows = rubric_scores(judge, PROMPTS[:1], REFERENCES[:1], TUNED[:1])
    assert rows[0]["score"] is None and rows[0]["attempts"] == 2 and "error" in rows[0]["reply"].lower()


def test_evaluate_with_judge_gate(judges, run_dir):
    """The judge inside `tunekit eval`: judge.* numbers in the report, judge.jsonl, a gate on win_rate,
    and the judge's replies cut at eval.judge.max_tokens counted, warned about and gated on."""
    import json

    from tunekit.config import load_recipe
    from tunekit.console import console
    from tunekit.eval import evaluate
    from tunekit.eval.gates import GateFailure
    from tunekit.runs import RunPaths, read_jsonl

    url, model = judges["A"]
    gates = "[judge.win_rate >= 0.6, judge.failures <= 0, judge.truncated_share <= 0.5]"
    overrides = ["eval.max_examples=2", "eval.judge.enabled=true", f"eval.judge.base_url={url}", f"eval.judge.model={model}",
                 "eval.judge.mode=pairwise", "eval.judge.max_tokens=1", f"eval.gates={gates}"]
    recipe = load_recipe(run_dir, overrides)
    run = RunPaths(recipe.run_dir)
    with console.capture() as captured, pytest.raises(GateFailure):
        evaluate(recipe, run)
    report = json.loads(run.eval_report.read_text())
    judge = report["judge"]
    assert judge["n"] == 2 and judge["pairs_judged"] == 2 and judge["failures"] == 0
    assert judge["win_rate"] == 0.5 and judge["order_agreement"] == 0.0  # a position-biased judge: ties
    assert judge["truncated"] == {"n": 4, "of": 4, "max_tokens": [1]}  # it never ends a reply by itself
    assert report["metrics"]["judge.win_rate"] == 0.5 and report["metrics"]["judge.truncated_share"] == 1.0
    assert [g["passed"] for g in report["verdict"]["gates"]] == [False, True, False]
    assert "4 of 4 judge replies were cut at eval.judge.max_tokens=1" in " ".join(captured.get().split())
    rows = read_jsonl(run.eval_dir / "judge.jsonl")
    assert [r["pairwise"]["winner"] for r in rows] == ["tie", "tie"]
    assert len((run.eval_dir / "judge_cache.jsonl").read_text().splitlines()) == 4
