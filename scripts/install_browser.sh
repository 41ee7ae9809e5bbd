#!/usr/bin/env bash
# Install Debian's Chromium for the browser test (tests/test_browser.py), if it is missing.
# Idempotent: does nothing when /usr/bin/chromium exists. Playwright drives this binary
# (never `playwright install`, which downloads its own browser).
set -euo pipefail

CHROMIUM=/usr/bin/chromium
if [ -x "$CHROMIUM" ]; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
if [ ! -x "$CHROMIUM" ]; then
    echo "install_browser.sh: $CHROMIUM still missing after apt-get install chromium" >&2
    exit 1
fi
echo "install_browser.sh: installed $("$CHROMIUM" --version 2>/dev/null)"
