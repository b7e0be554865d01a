"""`tunekit cost` / `tunekit advise` as a subprocess, shared by the cost tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def tunekit(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "tunekit", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def cost_json(*args: str, cwd: Path | None = None) -> dict:
    result = tunekit("cost", *args, "--json", cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)
