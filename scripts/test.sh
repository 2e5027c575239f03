#!/usr/bin/env bash
# Set up .venv if needed, then run the whole test suite (offline, CPU). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup_browser.sh || echo "[test] no chromium: tests/test_board_e2e.py will be skipped" >&2
exec .venv/bin/python -m pytest "$@"
