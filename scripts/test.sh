#!/usr/bin/env bash
# Set up .venv if needed, then run the whole test suite (offline, CPU). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
