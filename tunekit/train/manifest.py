"""manifest.json: what a user needs to reproduce or audit a run, readable without tunekit."""

from __future__ import annotations

import hashlib
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from tunekit.runs import sha256_file

PACKAGES = ("tunekit", "torch", "transformers", "peft", "trl", "accelerate", "datasets", "tokenizers", "safetensors", "bitsandbytes")


def source_fingerprint(source) -> str | None:
    """sha256 of a data input: a file's bytes, a saved dataset folder's files (sorted by path),
    or None for a hub id (its revision is part of the id) and inputs that no longer exist."""
    if isinstance(source, Path) and source.is_file():
        return sha256_file(source)
    if isinstance(source, Path) and source.is_dir():
        digest = hashlib.sha256()
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            digest.update(str(path.relative_to(source)).encode())
            digest.update(sha256_file(path).encode())
        return digest.hexdigest()
    return None


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit(cwd: Path) -> dict | None:
    """The commit of the repository the recipe lives in, and whether it had local changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(dirty)}


def hardware() -> dict:
    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": _cpu_count()}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def model_fingerprint(model_path: str) -> dict:
    """Identify the base model: its id, and for local dirs a hash of the config and weight files."""
    path = Path(model_path)
    if not path.is_dir():
        return {"id": model_path}
    files = sorted(p for p in path.iterdir() if p.suffix in {".json", ".safetensors"})
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        digest.update(sha256_file(file).encode())
    return {"path": str(path), "sha256": digest.hexdigest(), "files": [p.name for p in files]}


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
