#!/usr/bin/env bash
# Installs Debian's wrk, the HTTP load generator of the serving comparison
# with Ray Serve (benches/ray/serve_compare.sh). Idempotent: does nothing
# when wrk is there. Needs root (CI and the development machines run as
# root) and Debian's package archive.
#   scripts/setup-wrk.sh
set -euo pipefail

if command -v wrk >/dev/null 2>&1; then
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "setup-wrk: wrk is missing and this is not root;" >&2
    echo "  install it with: apt-get install -y wrk" >&2
    exit 1
fi
echo "setup-wrk: installing Debian's wrk"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends wrk >/dev/null
command -v wrk
