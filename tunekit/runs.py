"""The layout of a run directory, in one place. Every stage reads and writes through this."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tunekit.errors import RunDirError


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def recipe(self) -> Path:
        return self.root / "recipe.yaml"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def split(self, name: str) -> Path:
        """Prepared split file: name is train, val or test."""
        return self.data_dir / f"{name}.jsonl"

    @property
    def quarantine(self) -> Path:
        return self.data_dir / "quarantine.jsonl"

    @property
    def data_report(self) -> Path:
        return self.data_dir / "data_report.json"

    @property
    def adapter_dir(self) -> Path:
        return self.root / "adapter"

    @property
    def model_dir(self) -> Path:
        """Full fine-tuning's complete model (safetensors + tokenizer); such a run has no adapter/."""
        return self.root / "model"

    @property
    def mixed_train(self) -> Path:
        """The training rows after general data was mixed in (train.mix), as trained on."""
        return self.data_dir / "train_mixed.jsonl"

    @property
    def mix_quarantine(self) -> Path:
        """Rows of the train.mix file that could not be used, with the reason."""
        return self.data_dir / "mix_quarantine.jsonl"

    @property
    def checkpoints_dir(self) -> Path:
        return self.root / "checkpoints"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def loss_plot(self) -> Path:
        return self.root / "loss.png"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    @property
    def eval_report(self) -> Path:
        return self.eval_dir / "eval_report.json"

    @property
    def export_dir(self) -> Path:
        return self.root / "export"

    @property
    def merged_dir(self) -> Path:
        return self.export_dir / "merged"

    def require(self, path: Path, stage: str) -> Path:
        """Fail with a clear message when an earlier stage's output is missing."""
        if not path.exists():
            raise RunDirError(f"{path} not found", hint=f"run `tunekit {stage}` first (or `tunekit run` for every stage)")
        return path


def read_jsonl(path: Path) -> list[dict]:
    """Read a JSONL file that tunekit itself wrote (user files go through tunekit.data)."""
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def write_jsonl(path: Path, rows) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
