#!/usr/bin/env bash
# Set up .venv if needed, then run the demo (tiny checkpoint + scenes + a yaml/ recipe via llamafactory-cli).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/lf-ext demo "$@"
