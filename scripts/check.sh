#!/usr/bin/env bash
# Lint, type-check and test evalkit in ./.venv (or $EVALKIT_VENV); extra arguments go to pytest
# (e.g. `bash scripts/check.sh -m "not slow"` for the fast subset).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${EVALKIT_VENV:-.venv}"
"$venv/bin/ruff" check .
"$venv/bin/mypy"
"$venv/bin/python" -m pytest -q "$@"
