#!/usr/bin/env bash
# RLlib and troupe-rl side by side, on this machine, in one run: PPO on
# CartPole-v1 (seconds and env steps until the mean return of the last 100
# episodes reaches 475, and 450, the figure quoted for RLlib) and
# rollout sampling speed with policy inference.
#
#   benches/ray/rllib_compare.sh            # 3 seeds each (about 15-30 minutes), writes
#                                           # the RL section of benches/RESULTS.md
#   RL_QUICK=1 benches/ray/rllib_compare.sh # 1 seed, RLlib capped at 120 s: a smoke test
#
# RLlib runs from a cached, git-ignored venv (.cache/rllib-venv) with the
# pinned versions of benches/ray/rllib_requirements.txt (Ray 2.60 with
# RLlib, PyPI's torch, Gymnasium). Both sides get the machine's 2 CPUs:
# RLlib through ray.init(num_cpus=2) with 2 env runners, troupe-rl through
# its default 2 rollout workers. They run one after the other, never at
# once; troupe-rl's bench is compiled before RLlib starts.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
venv="$root/.cache/rllib-venv"
reqs="$root/benches/ray/rllib_requirements.txt"
python="${PYTHON:-python3}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

seeds=3
rllib_args=()
if [[ -n "${RL_QUICK:-}" ]]; then
    seeds=1
    rllib_args=(--max-seconds 120 --sampling-rounds 2)
fi

want="$(sha256sum "$reqs" | cut -c1-16)"
if [[ ! -x "$venv/bin/python" || "$(cat "$venv/.troupe-reqs" 2>/dev/null)" != "$want" ]]; then
    echo "rllib_compare: creating $venv (about 3 GB: torch and its CUDA wheels, which run on CPU)" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --only-binary=:all: -r "$reqs"
    echo "$want" >"$venv/.troupe-reqs"
fi

echo "rllib_compare: building troupe-rl's rl_perf bench (and libtorch if needed)" >&2
scripts/setup-libtorch.sh
cargo bench -p troupe-rl --bench rl_perf --no-run --quiet

echo "rllib_compare: running RLlib (alone), $seeds seed(s)" >&2
"$venv/bin/ray" stop --force >/dev/null 2>&1 || true
"$venv/bin/python" benches/ray/rllib_ppo.py --seeds "$seeds" "${rllib_args[@]}" >"$out/rllib.txt"
"$venv/bin/ray" stop --force >/dev/null 2>&1 || true

echo "rllib_compare: running troupe-rl (alone), $seeds seed(s)" >&2
RL_PERF_SEEDS="$seeds" cargo bench -p troupe-rl --bench rl_perf --quiet >"$out/troupe.txt"

write=()
if [[ -z "${RL_QUICK:-}" ]]; then
    write=(--write "$root/benches/RESULTS.md")
fi
"$python" benches/ray/rl_table.py "$out/rllib.txt" "$out/troupe.txt" \
    --seeds "$seeds" \
    --command "${RL_QUICK:+RL_QUICK=1 }benches/ray/rllib_compare.sh" \
    --rllib-version "$("$venv/bin/python" -c 'import ray; print(ray.__version__)')" \
    --troupe-version "$(git describe --always --dirty 2>/dev/null || echo unknown)" \
    "${write[@]}"
