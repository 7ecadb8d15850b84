#!/usr/bin/env bash
# PyTorch DDP and Ray Train doing the work of troupe-train's bench
# (libs/train/benches/train_perf.rs), one after the other on this machine:
# all-reduce of 100 MB, MLP samples/s on 2 workers (and 1, DDP-less), and
# the cost per step of a step that only all-reduces and reports.
#
#   benches/ray/train_compare.sh              # full runs (a few minutes)
#   TRAIN_QUICK=1 benches/ray/train_compare.sh # short runs: a smoke test
#
# Both run from a cached, git-ignored venv (.cache/train-venv) with the
# pinned versions of benches/ray/train_requirements.txt (Ray 2.60 with Train,
# PyPI's torch, NumPy). Each worker gets one torch thread; Ray gets
# ray.init(num_cpus=2). Ray Train's report() waits for its controller's poll
# (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s by default), so its per-step figures
# are taken with that interval at 0.001 s, and step_overhead_ms_default_poll
# gives the default's (see train_bench.py). Then troupe-train's bench, in
# one process and on two node processes (built before anything is timed).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
venv="$root/.cache/train-venv"
reqs="$root/benches/ray/train_requirements.txt"
wheels="$root/.cache/wheels"
python="${PYTHON:-python3}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

args=()
if [[ -n "${TRAIN_QUICK:-}" && "${TRAIN_QUICK}" != 0 ]]; then
    args=(--quick)
fi

want="$(sha256sum "$reqs" | cut -c1-16)"
if [[ ! -x "$venv/bin/python" || "$(cat "$venv/.troupe-reqs" 2>/dev/null)" != "$want" ]]; then
    echo "train_compare: creating $venv (about 3 GB: torch and its CUDA wheels, which run on CPU)" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv"
    find_links=()
    if [[ -d "$wheels" ]]; then
        find_links=(--find-links "$wheels")
    fi
    "$venv/bin/pip" install --quiet --only-binary=:all: "${find_links[@]}" -r "$reqs"
    echo "$want" >"$venv/.troupe-reqs"
fi

echo "train_compare: torch $("$venv/bin/python" -c 'import torch; print(torch.__version__)'), ray $("$venv/bin/python" -c 'import ray; print(ray.__version__)')" >&2

echo "train_compare: building troupe-train's train_perf bench (and libtorch if needed)" >&2
scripts/setup-libtorch.sh
cargo bench -p troupe-train --features cluster --bench train_perf --no-run --quiet
quick_env=()
if [[ ${#args[@]} -gt 0 ]]; then
    quick_env=(TROUPE_PERF_QUICK=1)
fi

echo "train_compare: running PyTorch DDP (gloo, 2 processes)" >&2
"$venv/bin/python" benches/ray/train_bench.py --mode ddp "${args[@]}" >"$out/ddp.txt"

echo "train_compare: running Ray Train (TorchTrainer, 2 workers)" >&2
"$venv/bin/ray" stop --force >/dev/null 2>&1 || true
"$venv/bin/python" benches/ray/train_bench.py --mode ray "${args[@]}" >"$out/ray.txt"
"$venv/bin/ray" stop --force >/dev/null 2>&1 || true

echo "== PyTorch DDP (gloo, 2 processes; 1 thread each) =="
cat "$out/ddp.txt"
echo "== Ray Train $("$venv/bin/python" -c 'import ray; print(ray.__version__)') (TorchTrainer, 2 workers) =="
cat "$out/ray.txt"

echo "train_compare: running troupe-train (one process, then two node processes)" >&2
echo "== troupe-train, one process (2 workers: threads, shared memory) =="
env "${quick_env[@]}" cargo bench -p troupe-train --features cluster --bench train_perf --quiet 2>/dev/null
echo "== troupe-train, two node processes (1 worker each, over the transport) =="
env "${quick_env[@]}" TROUPE_TRAIN_BENCH_NODES=1 cargo bench -p troupe-train --features cluster --bench train_perf --quiet 2>/dev/null
