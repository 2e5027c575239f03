#!/usr/bin/env bash
# What the LlamaBoard browser test needs beyond .venv: Debian's chromium (Playwright's own browser download is
# not used). Idempotent: returns at once when chromium is present. Usage: bash scripts/setup_browser.sh
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || [ -x "${LF_EXT_CHROMIUM:-/nonexistent}" ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "[setup] the browser test needs chromium: install it (or set LF_EXT_CHROMIUM=/path/to/chromium)" >&2
  exit 1
fi
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
echo "[setup] installing chromium (apt, once)" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
command -v chromium >/dev/null
echo "[setup] chromium: $(command -v chromium)" >&2
