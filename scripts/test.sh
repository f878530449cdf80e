#!/usr/bin/env bash
# Set everything up and run the tests (what .ci/run calls).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest tests "$@"
