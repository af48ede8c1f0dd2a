#!/usr/bin/env bash
# The gate in a pipeline, runnable here: build the demo (quick size), take the control scene's
# run as the "baseline" and the honesty scene's run as the "candidate", and gate.
# Exit code: 0 no regression, 1 regression, 2 bad input - what a CI step needs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/evalkit demo --quick --out reports/ci-example
.venv/bin/evalkit gate --baseline reports/ci-example/control/results.json \
  --candidate reports/ci-example/honesty/results.json \
  --policy examples/gate.yaml --junit reports/ci-example/gate.xml --summary reports/ci-example/gate.md
