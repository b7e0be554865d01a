"""The content-addressed artifact store: `$TUNEKIT_HOME/registry/artifacts/<sha256>/`.

A registered version's files are copied out of its run directory into a folder named by the
digest of its content, laid out like a run directory (adapter/ or model/, export/, eval/,
recipe.yaml, manifest.json, data/test.jsonl), so the stages that read a run read it too and
deleting or editing the run cannot change the version.

Copies are written into `tmp/` first and renamed into place in one step: a process killed while
copying leaves only a folder under `tmp/` (named by its process id, removed by the next register
once that process is gone), never a half-filled artifact folder, and the database row that makes
a version visible is written after the rename. Stored files are made read-only to
discourage editing in place; `verify` re-hashes them against the digests recorded at register time.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path

from tunekit.runs import RunPaths, sha256_file

_CHUNK = 1 << 20


@dataclass(frozen=True)
class StoredFile:
    path: str  # relative to the version's folder, with forward slashes
    sha256: str
    size: int


@dataclass(frozen=True)
class StoredTree:
    digest: str  # sha256 over every (path, sha256) pair: the folder's name
    path: Path  # the folder under artifacts/
    files: tuple[StoredFile, ...]


def tree_digest(files) -> str:
    """One digest for a set of files: sha256 over sorted `path\\0sha256\\n` lines (names and contents both count)."""
    digest = hashlib.sha256()
    for item in sorted(files, key=lambda f: f.path):
        digest.update(f"{item.path}\0{item.sha256}\n".encode())
    return digest.hexdigest()


def subtree_digest(files, prefix: str) -> str:
    """The digest of the files under `prefix/`, named relative to it (the adapter's own digest)."""
    inside = [StoredFile(f.path[len(prefix) + 1 :], f.sha256, f.size) for f in files if f.path.startswith(prefix + "/")]
    return tree_digest(inside)


def run_sources(run: RunPaths, artifact_dir: Path) -> dict[str, Path]:
    """{stored relative path: source file} for everything a version keeps from `run`."""
    sources: dict[str, Path] = {}
    for top in (artifact_dir, run.export_dir, run.eval_dir):
        if top.is_dir():
            for path in sorted(p for p in top.rglob("*") if p.is_file()):
                sources[path.relative_to(run.root).as_posix()] = path
    # Besides those folders (all optional): what reproduces and judges it, and the test set it was scored on.
    for path in (run.recipe, run.manifest, run.split("test"), run.data_report):
        if path.is_file():
            sources[path.relative_to(run.root).as_posix()] = path
    return sources


def _copy_file(source: Path, target: Path) -> StoredFile:
    """Copy one file, hashing the bytes as they are written (the digest is of what was stored)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    with source.open("rb") as src, target.open("wb") as dst:
        while block := src.read(_CHUNK):
            digest.update(block)
            dst.write(block)
            size += len(block)
        dst.flush()
        os.fsync(dst.fileno())
    return StoredFile("", digest.hexdigest(), size)


def store(root: Path, sources: dict[str, Path]) -> StoredTree:
    """Copy `sources` into the store under `root`; the stored tree (reused when identical content is stored)."""
    remove_stale_copies(root)
    tmp = scratch_folder(root)
    try:
        files = []
        for rel, source in sources.items():
            copied = _copy_file(source, tmp / rel)
            files.append(StoredFile(rel, copied.sha256, copied.size))
        digest = tree_digest(files)
        final = root / "artifacts" / digest
        place(tmp, final)
        return StoredTree(digest, final, tuple(sorted(files, key=lambda f: f.path)))
    finally:
        remove_tree(tmp)


def scratch_folder(root: Path) -> Path:
    """A new folder under `root/tmp/`, named so `remove_stale_copies` removes it once this process is gone."""
    tmp = root / "tmp" / f"{os.getpid()}-{uuid.uuid4().hex}"
    tmp.mkdir(parents=True)
    return tmp


def place(tmp: Path, final: Path) -> None:
    """Make the filled folder `tmp` read-only and rename it to `final` in one step (kept: an identical copy already there)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        return
    _make_read_only(tmp)
    try:
        os.rename(tmp, final)  # atomic on one file system: the folder appears whole or not at all
    except OSError:
        if not final.exists():  # not a lost race with an identical copy
            raise


def remove_tree(folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder, onerror=_force_remove)


def remove_stale_copies(root: Path) -> list[Path]:
    """Remove half copies under tmp/ left by registers that were killed (their process is gone); the removed folders."""
    removed = []
    for folder in sorted((root / "tmp").glob("*-*")) if (root / "tmp").is_dir() else []:
        pid = folder.name.split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, onerror=_force_remove)
            removed.append(folder)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _make_read_only(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)


def _force_remove(function, path, _exc_info) -> None:
    os.chmod(path, stat.S_IWUSR | stat.S_IRUSR | stat.S_IXUSR)
    function(path)


def verify_tree(folder: Path, files: list[dict]) -> list[str]:
    """Problems of a stored folder against its recorded files: missing, altered (digest or size), unexpected."""
    if not folder.is_dir():
        return [f"artifact folder {folder} is missing"]
    problems = []
    recorded = {f["path"] for f in files}
    for item in files:
        path = folder / item["path"]
        if not path.is_file():
            problems.append(f"{item['path']}: missing")
            continue
        actual = sha256_file(path)
        if actual != item["sha256"]:
            problems.append(f"{item['path']}: altered (sha256 {actual[:12]}..., recorded {item['sha256'][:12]}...)")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel not in recorded:
            problems.append(f"{rel}: not part of the registered version")
    return problems
