#!/usr/bin/env bash
# Installs Debian's Chromium and its WebDriver (chromedriver) for the
# dashboard's browser test (tests/dashboard_browser.rs). Idempotent: does
# nothing when both are there. Needs root (CI and the development machines
# run as root) and Debian's package archive.
#   scripts/setup-chromium.sh
set -euo pipefail

if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "setup-chromium: chromium or chromedriver is missing and this is not root;" >&2
    echo "  install them with: apt-get install -y chromium chromium-driver" >&2
    exit 1
fi
echo "setup-chromium: installing Debian's chromium and chromium-driver"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
/usr/bin/chromium --version
/usr/bin/chromedriver --version
