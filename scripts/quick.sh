#!/usr/bin/env bash
# The main job: set everything up, run the quick suite, print its table (README, "Quick start").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
.venv/bin/repbench data fetch fashion-mnist
exec .venv/bin/repbench run --suite quick --no-progress "$@"
