#!/usr/bin/env bash
# Installs Debian's chromium and chromium-driver for the browser test of the live page
# (tests/test_serve.py; selenium itself is in the test extra). Idempotent and quiet when both are
# already installed; .ci/run calls it before the tests. Without root (or sudo) it says so and
# exits 0: the browser test then skips.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
if [[ "$(id -u)" -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "[setup_browser] chromium / chromium-driver missing and not root: the browser test" \
         "will skip (run as root: apt-get install chromium chromium-driver)" >&2
    exit 0
  fi
fi
echo "[setup_browser] installing chromium and chromium-driver (apt)..." >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
echo "[setup_browser] done" >&2
