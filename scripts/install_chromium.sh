#!/usr/bin/env bash
# Install headless Chromium for the report's browser test (tests/test_report.py).
# Idempotent: does nothing when a chromium binary is already on PATH or at the Debian path.
# Needs root (or sudo) and access to the Debian apt mirror; nothing else is downloaded.
set -euo pipefail

for candidate in chromium chromium-browser google-chrome; do
  if command -v "$candidate" >/dev/null 2>&1; then
    echo "chromium present: $(command -v "$candidate")"
    exit 0
  fi
done
if [ -x /usr/bin/chromium ]; then
  echo "chromium present: /usr/bin/chromium"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_chromium.sh: apt-get not found; install chromium with your package manager" >&2
  exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo -n"  # never prompt: a test may run this unattended
  else
    echo "install_chromium.sh: need root or sudo to install chromium" >&2
    exit 1
  fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends chromium fonts-dejavu-core
echo "chromium installed: $(command -v chromium)"
