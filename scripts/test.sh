#!/usr/bin/env bash
# Set everything up, run the tests, then the CI regression check (what .ci/run calls).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest tests "$@"
# Every metric of the ci suite against results/baselines/ci.json (a few minutes on 2 cores). Exit 1 lists each
# regression; after a change meant to move numbers: .venv/bin/repbench check --update, and commit the baseline.
# REPBENCH_SKIP_CHECK=1 runs the tests only.
if [ "${REPBENCH_SKIP_CHECK:-0}" != 1 ]; then
  exec .venv/bin/repbench check
fi
