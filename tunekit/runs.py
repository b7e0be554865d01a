"""The layout of a run directory, in one place. Every stage reads and writes through this."""

from __future__ import annotations

import hashlib
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
    def data_html(self) -> Path:
        return self.data_dir / "data_report.html"

    @property
    def lengths_plot(self) -> Path:
        return self.data_dir / "lengths.png"

    @property
    def diversity_plot(self) -> Path:
        return self.data_dir / "diversity.png"

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
    def eval_html(self) -> Path:
        return self.eval_dir / "eval_report.html"

    @property
    def predictions(self) -> Path:
        """Per-example prompts, references, outputs and metric values of the last eval."""
        return self.eval_dir / "predictions.jsonl"

    @property
    def verdict(self) -> Path:
        """The gate verdict a promotion step reads: {"passed": bool, "gates": [...]}."""
        return self.eval_dir / "verdict.json"

    @property
    def forgetting_predictions(self) -> Path:
        return self.eval_dir / "forgetting_predictions.jsonl"

    @property
    def preference_predictions(self) -> Path:
        """Per held-out pair: each model's log-likelihood of the chosen and the rejected answer."""
        return self.eval_dir / "preference_predictions.jsonl"

    @property
    def judge_rows(self) -> Path:
        return self.eval_dir / "judge.jsonl"

    @property
    def judge_cache(self) -> Path:
        return self.eval_dir / "judge_cache.jsonl"

    @property
    def export_dir(self) -> Path:
        return self.root / "export"

    @property
    def merged_dir(self) -> Path:
        return self.export_dir / "merged"

    @property
    def export_adapter_dir(self) -> Path:
        return self.export_dir / "adapter"

    @property
    def export_report(self) -> Path:
        return self.export_dir / "export_report.json"

    @property
    def quant_report(self) -> Path:
        return self.export_dir / "quant_report.json"

    @property
    def modelfile(self) -> Path:
        return self.export_dir / "Modelfile"

    def gguf_file(self, model_name: str, type_name: str) -> Path:
        """`export/<run>-F16.gguf`, `export/<run>-Q4_K_M.gguf`, ..."""
        return self.export_dir / f"{model_name}-{type_name}.gguf"

    @property
    def tensorboard_dir(self) -> Path:
        return self.root / "tensorboard"

    def require(self, path: Path, stage: str) -> Path:
        """Fail with a clear message when an earlier stage's output is missing."""
        if not path.exists():
            raise RunDirError(f"{path} not found", hint=f"run `tunekit {stage}` first (or `tunekit run` for every stage)")
        return path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes (data splits, artifacts, GGUF files)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


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
