"""Training stages. Today: supervised fine-tuning with LoRA."""

from tunekit.train.sft import TrainResult, run_sft

__all__ = ["TrainResult", "run_sft"]
