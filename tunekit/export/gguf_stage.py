"""The GGUF and Ollama part of the export stage: F16 conversion, parity, other types, the quantization
gate, the Modelfile."""

from __future__ import annotations

import time
from pathlib import Path

from tunekit.console import console
from tunekit.errors import TunekitError
from tunekit.export.gguf import CONVERTER_TYPES, REFERENCE_TYPE, GgufError, convert_to_gguf, fallback_line, quantize_gguf, read_gguf_metadata
from tunekit.runs import write_json

# Parity needs only a few tokens to show a divergence; long eval budgets would only slow it down.
MAX_PARITY_TOKENS = 64


def _check_embedded_chat_format(path: Path, tokenizer) -> dict:
    """The chat template and eos must travel inside the file, or llama.cpp users get a raw-text model."""
    metadata = read_gguf_metadata(path)
    if tokenizer.chat_template and not metadata["chat_template"]:
        raise GgufError(f"{path.name} has no chat template although the merged model has one")
    if metadata["eos_token_id"] is None:
        raise GgufError(f"{path.name} has no eos token id")
    return {k: metadata[k] for k in ("architecture", "file_type", "eos_token_id", "bos_token_id", "add_bos_token")}


def _write_types(recipe, run, merged_dir: Path, reference: Path, fallbacks: dict) -> dict[str, Path]:
    """Write every asked type; `fallbacks` gets, per quantized type, the tensors llama.cpp wrote in another type."""
    written: dict[str, Path] = {}
    for type_name in recipe.export.gguf.types:
        if type_name == REFERENCE_TYPE:
            continue
        target = run.gguf_file(recipe.run_name, type_name)
        console.print(f"writing {target.name}…", soft_wrap=True)
        if type_name in CONVERTER_TYPES:
            written[type_name] = convert_to_gguf(merged_dir, target, type_name)
        else:
            written[type_name], fallbacks[type_name] = quantize_gguf(reference, target, type_name)
            line = fallback_line(type_name, fallbacks[type_name])
            if line:
                console.print(f"  {line}", soft_wrap=True, markup=False)
    return written


def _parity(recipe, run, merged_dir: Path, reference: Path) -> dict:
    from tunekit.export.gguf_parity import check_gguf_parity
    from tunekit.export.parity import parity_prompts

    options = recipe.export.gguf
    prompts = parity_prompts(run, recipe.data.system_prompt, count=options.parity_prompts)
    tokens = min(recipe.eval.max_new_tokens or MAX_PARITY_TOKENS, MAX_PARITY_TOKENS)
    console.print(f"checking GGUF parity on {len(prompts)} prompts (merged model vs {reference.name}, greedy)…", soft_wrap=True)
    return check_gguf_parity(merged_dir, reference, prompts, tokens, options.min_parity)


def export_gguf(recipe, run, merged_dir: Path) -> dict:
    """Write the GGUF files; returns {files, metadata, parity, quant_report, blocked, timings_s}.
    Stops after the parity check when it fails (the caller raises): quantizing a wrong file is wasted."""
    from tunekit.export.gguf import require_converter, require_llama_cpp
    from tunekit.export.quant_gate import domain_text, quant_report
    from tunekit.models import load_tokenizer

    require_converter()
    require_llama_cpp()
    options = recipe.export.gguf
    timings: dict[str, float] = {}
    tokenizer = load_tokenizer(str(merged_dir))
    reference = run.gguf_file(recipe.run_name, REFERENCE_TYPE)
    console.print(f"converting the merged model to {reference.name}…", soft_wrap=True)
    t0 = time.perf_counter()
    convert_to_gguf(merged_dir, reference, REFERENCE_TYPE)
    timings["convert_f16"] = round(time.perf_counter() - t0, 1)
    result: dict = {"files": {REFERENCE_TYPE: str(reference)}, "metadata": _check_embedded_chat_format(reference, tokenizer)}
    result.update(parity=None, quant_report=None, blocked=[], timings_s=timings)
    if options.check_parity:
        t0 = time.perf_counter()
        result["parity"] = _parity(recipe, run, merged_dir, reference)
        timings["parity"] = round(time.perf_counter() - t0, 1)
        if not result["parity"]["passed"]:
            return result
    t0 = time.perf_counter()
    fallbacks: dict[str, dict] = {}
    written = _write_types(recipe, run, merged_dir, reference, fallbacks)
    result["fallbacks"] = fallbacks
    timings["other_types"] = round(time.perf_counter() - t0, 1)
    result["files"].update({k: str(v) for k, v in written.items()})
    if written:
        t0 = time.perf_counter()
        text, source = domain_text(run, recipe, tokenizer)
        console.print(f"scoring perplexity of {len(written) + 1} GGUF files on {source}…", soft_wrap=True)
        report = quant_report(reference, written, text, source, options)
        timings["perplexity"] = round(time.perf_counter() - t0, 1)
        for row in report["quantized"]:
            row["fallbacks"] = fallbacks.get(row["type"])  # None for types the converter wrote itself
            if row["blocked"]:
                # A blocked level must not be picked up by anyone: the file goes, the report keeps why.
                Path(row["file"]).unlink(missing_ok=True)
                row["file_removed"] = True
                del result["files"][row["type"]]
        write_json(run.quant_report, report)
        result.update(quant_report=str(run.quant_report), quant=report, blocked=report["blocked"])
    return result


def choose_ollama_gguf(recipe, gguf: dict) -> Path:
    """The Modelfile's file: the configured type, else the smallest file that passed the gate."""
    wanted = recipe.export.ollama.gguf
    files = {k: Path(v) for k, v in gguf["files"].items()}
    if wanted is not None:
        if wanted not in files:
            why = "it was blocked by the quantization gate" if wanted in gguf["blocked"] else "it is not in export.gguf.types"
            raise TunekitError(
                f"export.ollama.gguf: no {wanted} file to point the Modelfile at ({why})",
                hint=f"choose one of {', '.join(files)}",
            )
        return files[wanted]
    return min(files.values(), key=lambda p: p.stat().st_size)


def export_ollama(recipe, run, merged_dir: Path, gguf: dict) -> dict:
    from tunekit.models.loading import end_of_turn_ids
    from tunekit.export.ollama import write_modelfile
    from tunekit.models import load_tokenizer
    from transformers import GenerationConfig

    tokenizer = load_tokenizer(str(merged_dir))
    end_ids = end_of_turn_ids(tokenizer, GenerationConfig.from_pretrained(merged_dir))
    add_bos_token = gguf["metadata"]["add_bos_token"]  # the same in every type: the F16 file's tokenizer metadata
    return write_modelfile(run.modelfile, choose_ollama_gguf(recipe, gguf), tokenizer, end_ids, recipe, add_bos_token)
