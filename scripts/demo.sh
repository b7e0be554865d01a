#!/usr/bin/env bash
# Set up (if needed) and run the whole pipeline on the shipped example, on CPU:
# prepare → train → eval (base vs tuned) → export.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/tunekit run examples/ticket_triage/recipe.yaml --overwrite "$@"
