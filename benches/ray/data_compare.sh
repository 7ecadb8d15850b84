#!/usr/bin/env bash
# troupe-data, Ray Data and Polars side by side on this machine, one after
# the other, on the same synthetic table (10 columns, 44 bytes a row, the
# same rows for all three through TROUPE_DATA_BENCH_ROWS):
#
#   benches/ray/data_compare.sh                                  # 50M rows, 3 rounds
#   TROUPE_DATA_BENCH_ROWS=10000000 benches/ray/data_compare.sh  # another size
#   TROUPE_PERF_QUICK=1 benches/ray/data_compare.sh              # 1M rows, 1 round
#
# What it compares (medians of the rounds; gigabytes = rows * 44 / 1e9):
#   read_map_filter_groupby_write_seconds  Parquet dir -> score = f0*f1 + f2
#                                          -> score > 0 -> group by key (count,
#                                          mean(score), max(f3)) -> Parquet
#   map_batches_gigabytes_per_s            the score map over the table in memory
#   random_shuffle_gigabytes_per_s         seeded shuffle of the table in memory
#   sort_gigabytes_per_s                   sort by f0 of the table in memory
# troupe-data's lines come from `cargo bench -p troupe-data --bench
# data_perf` (unprefixed), Ray Data's (ray.init(num_cpus=<cores>)) and
# Polars' (one process) from benches/ray/data_bench.py, prefixed `ray_data_`
# and `polars_`. Each side writes its own copy of the Parquet input (not
# timed) to a temporary directory and removes it.
#
# Needs, at 50M rows: ~2.2 GB of disk per input copy plus Ray's spilling
# (under /tmp/ray), and, for Ray, a few times 2.2 GB of object store
# (/dev/shm) and worker memory; Polars peaks at ~3x the table (sort and
# shuffle outputs next to the input).
#
# Ray Data and Polars run from a cached, git-ignored venv (.cache/data-venv)
# pinned by benches/ray/data_requirements.txt, made here if missing or
# stale. The figures go to benches/RESULTS.md.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
venv="$root/.cache/data-venv"
reqs="$root/benches/ray/data_requirements.txt"
python="${PYTHON:-python3}"
quick="${TROUPE_PERF_QUICK:-0}"
if [[ -n "${TROUPE_DATA_BENCH_ROWS:-}" ]]; then
    rows="$TROUPE_DATA_BENCH_ROWS"
elif [[ -n "$quick" && "$quick" != 0 ]]; then
    rows=1000000
else
    rows=50000000
fi
export TROUPE_DATA_BENCH_ROWS="$rows"
cleanup() {
    if [[ -x "$venv/bin/ray" ]]; then "$venv/bin/ray" stop --force >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

# Runs "$@" with its stderr kept aside, shown only if it fails.
quiet() {
    local log status=0
    log="$(mktemp)"
    "$@" 2>"$log" || status=$?
    if [[ $status != 0 ]]; then cat "$log" >&2; fi
    rm -f "$log"
    return "$status"
}

want="$(sha256sum "$reqs" | cut -c1-16)"
if [[ ! -x "$venv/bin/python" || "$(cat "$venv/.troupe-reqs" 2>/dev/null)" != "$want" ]]; then
    echo "data_compare: creating $venv" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --only-binary=:all: -r "$reqs"
    echo "$want" >"$venv/.troupe-reqs"
fi

echo "data_compare: building troupe-data's data_perf bench" >&2
cargo bench -p troupe-data --bench data_perf --no-run --quiet

echo "data_compare: troupe-data (alone), $rows rows" >&2
quiet cargo bench -p troupe-data --bench data_perf --quiet

echo "data_compare: Ray Data (alone), $rows rows" >&2
"$venv/bin/ray" stop --force >/dev/null 2>&1 || true
quiet "$venv/bin/python" benches/ray/data_bench.py --engine ray
"$venv/bin/ray" stop --force >/dev/null 2>&1 || true

echo "data_compare: Polars (alone), $rows rows" >&2
quiet "$venv/bin/python" benches/ray/data_bench.py --engine polars
