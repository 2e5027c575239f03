#!/usr/bin/env bash
# Create .venv with everything lf_ext needs (idempotent; a no-op when already up to date).
# Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${LF_EXT_VENV:-.venv}
PY=${PYTHON:-python3.11}
bash scripts/install_redis.sh  # a system package: checked even when .venv is up to date
stamp="$VENV/.lf_ext_setup_stamp"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
command -v "$PY" >/dev/null || { echo "[setup] needs Python 3.11 ($PY not found; set PYTHON=...)" >&2; exit 1; }
echo "[setup] installing into $VENV (a few minutes the first time)" >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# pip warns about every find-links folder this machine lacks; keep real errors visible
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
pip install -q --upgrade "pip>=24" wheel
# torch first, from the exact pins (pip takes local files where the machine has them)
pip install -q torch==2.14.1 torchvision==0.29.1
# LLaMA-Factory imports torchaudio at start; its own pin would pull another torch.
pip install -q --no-deps torchaudio==2.11.0
pip install -q -e ".[dev]"
echo "$want" > "$stamp"
echo "[setup] done" >&2
