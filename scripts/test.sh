#!/usr/bin/env bash
# The whole test suite, GPU crate included (on CPU when there is no GPU):
# installs libtorch first if needed (scripts/setup-libtorch.sh, cached).
#   scripts/test.sh              # everything
#   scripts/test.sh --test gpu   # extra arguments go to cargo test
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-libtorch.sh
cargo test --workspace --features troupe/gpu "$@"
