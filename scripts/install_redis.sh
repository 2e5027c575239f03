#!/usr/bin/env bash
# Install Debian's redis-server when it is missing: the Redis tier's tests and `lf-ext bench replicas`
# start their own. Idempotent and silent when redis-server is present; needs root (or sudo) and apt-get.
set -euo pipefail
command -v redis-server >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO=(sudo -n)
else
  echo "[setup] redis-server missing and not root: apt-get install redis-server (its tests are skipped until then)" >&2
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "[setup] redis-server missing and no apt-get: install Redis >= 6 (its tests are skipped until then)" >&2
  exit 0
fi
echo "[setup] installing redis-server (apt-get)" >&2
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq >/dev/null
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends redis-server >/dev/null
