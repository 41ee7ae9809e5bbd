#!/usr/bin/env bash
# Install the Debian packages some tests drive, if they are missing: Chromium for the browser
# test (tests/test_browser.py, driven by Playwright: never `playwright install`, which
# downloads its own browser) and Prometheus for reading metrics from a Prometheus server
# (tests/test_prometheus.py). Idempotent: does nothing when both binaries exist.
set -euo pipefail

declare -A BINARY=([chromium]=/usr/bin/chromium [prometheus]=/usr/bin/prometheus)
missing=()
for package in "${!BINARY[@]}"; do
    [ -x "${BINARY[$package]}" ] || missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
for package in "${missing[@]}"; do
    # Debian's prometheus package tries to start its service; where there is no init system
    # it cannot, which is fine: the tests start their own server on a loopback port. Its
    # recommends (node exporter, web console assets) are not needed.
    options=()
    [ "$package" = prometheus ] && options=(--no-install-recommends)
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${options[@]}" \
        "$package" >/dev/null
done
for package in "${missing[@]}"; do
    if [ ! -x "${BINARY[$package]}" ]; then
        echo "install_test_tools.sh: ${BINARY[$package]} still missing after apt-get install" >&2
        exit 1
    fi
    echo "install_test_tools.sh: installed $package"
done
