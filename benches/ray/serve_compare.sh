#!/usr/bin/env bash
# Ray Serve and troupe-serve side by side on this machine, with wrk:
#
#   benches/ray/serve_compare.sh                  # 20 s per wrk run
#   WRK_SECONDS=5 benches/ray/serve_compare.sh    # shorter runs
#
# Ray Serve (benches/ray/serve_bench.py, ray.init(num_cpus=2)) is measured
# with wrk at 64 connections (requests/s) and 8 connections (p50/p99), for
# the no-op and the batched deployment; then troupe-serve's own bench runs
# (`cargo bench -p troupe-serve --bench serve_perf`, bare axum included)
# with the same wrk (TROUPE_SERVE_LOADGEN=wrk) and run length, medians of
# its 3 rounds. Ray runs from a cached, git-ignored venv
# (.cache/ray-serve-venv) with benches/ray/serve_requirements.txt; wrk is
# Debian's (scripts/setup-wrk.sh). The two sides run one after the other.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
venv="$root/.cache/ray-serve-venv"
reqs="$root/benches/ray/serve_requirements.txt"
python="${PYTHON:-python3}"
seconds="${WRK_SECONDS:-20}"
out="$(mktemp -d)"
server=""
cleanup() {
    if [[ -n "$server" ]]; then kill "$server" 2>/dev/null || true; fi
    "$venv/bin/ray" stop --force >/dev/null 2>&1 || true
    rm -rf "$out"
}
trap cleanup EXIT

scripts/setup-wrk.sh
want="$(sha256sum "$reqs" | cut -c1-16)"
if [[ ! -x "$venv/bin/python" || "$(cat "$venv/.troupe-reqs" 2>/dev/null)" != "$want" ]]; then
    echo "serve_compare: creating $venv" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --only-binary=:all: -r "$reqs"
    echo "$want" >"$venv/.troupe-reqs"
fi
echo "serve_compare: building troupe-serve's bench" >&2
cargo bench -p troupe-serve --bench serve_perf --no-run --quiet

# wrk's summary: requests/s, and the latency distribution's 50% and 99%.
wrk_run() { # connections
    wrk -t2 -c"$1" -d"${seconds}s" --latency http://127.0.0.1:8000/ >"$out/wrk.txt"
    local rate p50 p99
    rate="$(awk '/^Requests\/sec:/ {print $2}' "$out/wrk.txt")"
    p50="$(awk '$1 == "50%" {print $2}' "$out/wrk.txt")"
    p99="$(awk '$1 == "99%" {print $2}' "$out/wrk.txt")"
    echo "$rate $p50 $p99"
}

for mode in noop batched; do
    "$venv/bin/python" benches/ray/serve_bench.py "$mode" >"$out/ray-$mode.log" 2>&1 &
    server=$!
    for _ in $(seq 1 240); do
        grep -q '^ready' "$out/ray-$mode.log" && break
        sleep 0.5
    done
    grep -q '^ready' "$out/ray-$mode.log" || { cat "$out/ray-$mode.log" >&2; exit 1; }
    wrk -t2 -c8 -d2s http://127.0.0.1:8000/ >/dev/null # warm-up
    read -r rate64 _ _ < <(wrk_run 64)
    echo "ray_serve ${mode}_requests_per_s (64 connections) $rate64"
    if [[ "$mode" == noop ]]; then
        read -r rate8 p50 p99 < <(wrk_run 8)
        echo "ray_serve noop at 8 connections: $rate8 requests/s, p50 $p50, p99 $p99"
    fi
    kill "$server"
    wait "$server" 2>/dev/null || true
    server=""
    "$venv/bin/ray" stop --force >/dev/null 2>&1 || true
done

echo "troupe-serve (wrk, ${seconds} s runs, medians of 3 rounds):"
TROUPE_SERVE_LOADGEN=wrk SERVE_PERF_SECONDS="$seconds" \
    cargo bench -p troupe-serve --bench serve_perf --quiet 2>/dev/null
