"""Training stage: SFT, DPO and continued pre-training with LoRA, QLoRA, DoRA, rsLoRA or full fine-tuning.

`train(recipe, run, *, resume=False) -> TrainResult` is the one entry point; the method comes from
`recipe.train.method`. Importing this package loads no ML library (the runner imports its
transformers-based pieces when it runs), so the CLI's help and `tunekit validate` stay fast.
"""

from tunekit.train.common import TrainResult
from tunekit.train.runner import train

__all__ = ["TrainResult", "train"]
