"""llama.cpp's quantizer log: kept off the terminal, summed up as one line per type, raw with --verbose."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunekit.export.gguf import convert_to_gguf, fallback_line, quantize_gguf, read_gguf_metadata, summarize_fallbacks

# Two tensors' warnings as llama.cpp logs them: the message and its continuation come in two pieces.
LOG = (
    "llama_model_loader: loaded meta data with 33 key-value pairs and 272 tensors from x.gguf\n"
    "warning: blk.0.attn_q.weight                  - ncols    576 not divisible by 256 (required for type    q4_K) "
    "-> falling back to    q5_0\n"
    "[   3/ 272]   blk.0.attn_k.weight - [  576,   192,     1,     1], type =    f16, converting to q4_K .. size = 0.21 MiB\n"
    "warning: blk.0.attn_v.weight                  - ncols    576 not divisible by 256 (required for type    q6_K) "
    "-> falling back to    q8_0\n"
    "warning: blk.1.attn_q.weight                  - ncols    576 not divisible by 256 (required for type    q4_K) "
    "-> falling back to    q5_0\n"
)


def test_summary_counts_each_fallback_by_type_and_reason():
    summary = summarize_fallbacks(LOG)
    assert summary == {
        "tensors": 272,
        "fell_back": 3,
        "by_type": {"q4_K -> q5_0": 2, "q6_K -> q8_0": 1},
        "reasons": [
            "rows of 576 values are not a multiple of the 256-value blocks q4_K needs",
            "rows of 576 values are not a multiple of the 256-value blocks q6_K needs",
        ],
    }
    line = fallback_line("Q4_K_M", summary)
    assert line.startswith("Q4_K_M: 3 of 272 tensors fell back to another type (q4_K -> q5_0 ×2, q6_K -> q8_0 ×1)")
    assert fallback_line("Q8_0", summarize_fallbacks("no warnings here")) is None


@pytest.fixture(scope="module")
def f16_file(tmp_path_factory, tiny_model_dir):
    return convert_to_gguf(tiny_model_dir, tmp_path_factory.mktemp("quiet") / "tiny-F16.gguf")


def test_quantizer_log_stays_off_the_terminal(f16_file, capfd, monkeypatch):
    monkeypatch.delenv("TUNEKIT_VERBOSE", raising=False)
    capfd.readouterr()
    out, summary = quantize_gguf(f16_file, f16_file.with_name("tiny-Q4_K_M.gguf"), "Q4_K_M", threads=1)
    printed = capfd.readouterr()
    assert "falling back" not in printed.err + printed.out
    assert read_gguf_metadata(out)["file_type"] == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    # Hidden size 64 fits no 256-value k-quant block, so every k-quantized matrix fell back.
    assert summary["tensors"] == read_gguf_metadata(f16_file)["tensors"]
    assert 0 < summary["fell_back"] < summary["tensors"]  # norms stay f32 and are never k-quantized
    assert all(reason.startswith("rows of 64 values") or reason.startswith("rows of 128 values") for reason in summary["reasons"])
    assert sum(summary["by_type"].values()) == summary["fell_back"]


def test_verbose_shows_the_raw_log(f16_file, capfd, monkeypatch):
    monkeypatch.setenv("TUNEKIT_VERBOSE", "1")
    capfd.readouterr()
    _, summary = quantize_gguf(f16_file, f16_file.with_name("tiny-Q5_K_M.gguf"), "Q5_K_M", threads=1)
    printed = capfd.readouterr().err
    assert printed.count("falling back") == summary["fell_back"] > 0


def test_gguf_base_conversion_shows_no_raw_progress_bar(f16_file, capfd, monkeypatch):
    """A `.gguf` base model is dequantised once; transformers' own tqdm bar must not reach the terminal."""
    from safetensors.torch import load_file

    from tunekit.models import resolve_model

    from transformers.utils import logging as transformers_logging

    monkeypatch.delenv("TUNEKIT_VERBOSE", raising=False)
    transformers_logging.disable_progress_bar()  # what the CLI's HF_HUB_DISABLE_PROGRESS_BARS does at start
    capfd.readouterr()
    try:
        converted = resolve_model(str(f16_file))
    finally:
        transformers_logging.enable_progress_bar()
    printed = capfd.readouterr()
    assert "de-quantizing" not in printed.err + printed.out and "it/s" not in printed.err
    weights = load_file(next(Path(converted).glob("*.safetensors")))
    assert weights["model.embed_tokens.weight"].shape[1] == 64

