#!/usr/bin/env bash
# The whole test suite, GPU crate and dashboard included (on CPU when there
# is no GPU): installs libtorch first if needed (scripts/setup-libtorch.sh,
# cached), and Debian's Chromium and chromedriver for the dashboard's
# browser test (scripts/setup-chromium.sh, once).
#   scripts/test.sh              # everything
#   scripts/test.sh --test gpu   # extra arguments go to cargo test
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-libtorch.sh
scripts/setup-chromium.sh
. scripts/features.sh
cargo test --workspace --features "$all_features" "$@"
