#!/usr/bin/env bash
# Ray Tune with RLlib's PPO and troupe-tune with troupe-rl's PPO side by
# side, on this machine, one after the other: the tune_ppo_cartpole
# example's ASHA search (16 configs, 2 trials at a time, the same space
# and budgets), timed until some trial's mean return over its last 100
# episodes reaches 475. Prints both sides' `metric value unit` lines.
#
#   benches/ray/tune_asha_compare.sh            # 3 search seeds each
#   SEEDS=1 benches/ray/tune_asha_compare.sh    # 1 seed: a smoke test
#
# Ray's side (benches/ray/rllib_tune_asha.py) runs from the venv that
# benches/ray/rllib_compare.sh makes (.cache/rllib-venv, pinned by
# benches/ray/rllib_requirements.txt), created here if missing.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
venv="$root/.cache/rllib-venv"
reqs="$root/benches/ray/rllib_requirements.txt"
python="${PYTHON:-python3}"
seeds="${SEEDS:-3}"

want="$(sha256sum "$reqs" | cut -c1-16)"
if [[ ! -x "$venv/bin/python" || "$(cat "$venv/.troupe-reqs" 2>/dev/null)" != "$want" ]]; then
    echo "tune_asha_compare: creating $venv (about 3 GB: torch and its CUDA wheels, which run on CPU)" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --only-binary=:all: -r "$reqs"
    echo "$want" >"$venv/.troupe-reqs"
fi

echo "tune_asha_compare: building troupe-rl's rl_perf bench with the tune feature" >&2
scripts/setup-libtorch.sh
cargo bench -p troupe-rl --features tune --bench rl_perf --no-run --quiet

echo "tune_asha_compare: Ray Tune + RLlib (alone), $seeds seed(s)" >&2
"$venv/bin/ray" stop --force >/dev/null 2>&1 || true
"$venv/bin/python" benches/ray/rllib_tune_asha.py --seeds "$seeds" 2>/dev/null | grep '^rllib_'
"$venv/bin/ray" stop --force >/dev/null 2>&1 || true

echo "tune_asha_compare: troupe-tune + troupe-rl (alone), $seeds seed(s)" >&2
RL_PERF_SEEDS="$seeds" cargo bench -p troupe-rl --features tune --bench rl_perf --quiet -- asha 2>/dev/null
