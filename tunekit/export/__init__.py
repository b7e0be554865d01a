"""The export stage: the adapter directory, a merged safetensors model and its parity check, GGUF files
with their own parity check and quantization gate, and an Ollama Modelfile.

`export(recipe, run) -> ExportResult` is the stage's entry point (tunekit.export.stage).
"""

from tunekit.export.merge import copy_adapter, merge_adapter
from tunekit.export.parity import check_parity, parity_prompts
from tunekit.export.stage import ExportResult, check_export_requirements, export

__all__ = [
    "ExportResult", "check_export_requirements", "check_parity", "copy_adapter", "export", "merge_adapter", "parity_prompts",
]
