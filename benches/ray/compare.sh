#!/usr/bin/env bash
# Ray and Troupe side by side, on this machine, in one run:
#
#   benches/ray/compare.sh            # full run (about 9 minutes), writes benches/RESULTS.md
#   benches/ray/compare.sh tasks      # only metrics whose name contains "tasks"
#   TROUPE_PERF_QUICK=1 benches/ray/compare.sh   # short runs, a smoke test
#   COMPARE_CLUSTER=1 benches/ray/compare.sh     # also the cluster section (about 3 more minutes)
#   COMPARE_CLUSTER=only benches/ray/compare.sh  # only the cluster section
#
# The cluster section (opt-in) compares a head and two nodes on loopback:
# Ray's ray.cluster_utils.Cluster (benches/ray/cluster_bench.py) against
# `cargo bench -p troupe --features cluster --bench cluster_perf`. Where that
# bench is absent or fails, the table says "troupe: not available" and the
# run goes on. A filter applies to both sections; a full cluster run (no
# filter, no TROUPE_PERF_QUICK, Troupe's side present) writes its own section
# of benches/RESULTS.md, which a full run of the main section keeps.
#
# Ray runs from a cached, git-ignored venv (.cache/ray-venv) with the pinned
# versions of benches/ray/requirements.txt. Both sides get 2 CPUs: Ray through
# ray.init(num_cpus=2), Troupe through its default (the machine's cores).
# They run one after the other, never at once; Troupe's bench is compiled
# before Ray starts.
set -euo pipefail

cluster="${COMPARE_CLUSTER:-}"
case "$cluster" in
    "" | 0) cluster="" ;;
    1 | only) ;;
    *) echo "compare: COMPARE_CLUSTER is 1 or only, not '$cluster'" >&2; exit 2 ;;
esac

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
venv="$root/.cache/ray-venv"
reqs="$root/benches/ray/requirements.txt"
python="${PYTHON:-python3}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

want="$(sha256sum "$reqs" | cut -c1-16)"
if [[ ! -x "$venv/bin/python" || "$(cat "$venv/.troupe-reqs" 2>/dev/null)" != "$want" ]]; then
    echo "compare: creating $venv" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --only-binary=:all: -r "$reqs"
    echo "$want" >"$venv/.troupe-reqs"
fi

if [[ "$cluster" != only ]]; then
    echo "compare: building Troupe's perf bench (default, and with mimalloc)" >&2
    cargo bench -p troupe --bench perf --no-run --quiet
    cargo bench -p troupe --bench perf --no-run --quiet --features mimalloc
fi

# Troupe's cluster bench may not exist yet (or not build): the section then
# runs Ray alone and says so.
troupe_cluster_missing=""
if [[ -n "$cluster" ]]; then
    echo "compare: building Troupe's cluster_perf bench (--features cluster)" >&2
    if ! cargo bench -p troupe --features cluster --bench cluster_perf --no-run --quiet 2>"$out/cluster-build.txt"; then
        tail -n 5 "$out/cluster-build.txt" >&2
        troupe_cluster_missing="cargo bench -p troupe --features cluster --bench cluster_perf does not build"
        echo "troupe: not available ($troupe_cluster_missing)"
    fi
fi

if [[ "$cluster" != only ]]; then
    echo "compare: running Ray (alone)" >&2
    # A Ray left over from an earlier run would share the machine: stop it.
    "$venv/bin/ray" stop --force >/dev/null 2>&1 || true
    "$venv/bin/python" benches/ray/ray_perf.py "$@" >"$out/ray.txt"
    "$venv/bin/ray" stop --force >/dev/null 2>&1 || true

    echo "compare: running Troupe (alone)" >&2
    cargo bench -p troupe --bench perf --quiet -- "$@" >"$out/troupe.txt"
    # The same bench with the opt-in mimalloc feature (glibc's malloc maps every
    # 100 MB buffer afresh, and actor creation is allocation-bound).
    echo "compare: running Troupe with --features mimalloc (alone)" >&2
    cargo bench -p troupe --bench perf --quiet --features mimalloc -- "$@" >"$out/troupe-mimalloc.txt"

    # Only a full run (no filter, full timings) replaces the recorded results.
    write=()
    if [[ $# -eq 0 && -z "${TROUPE_PERF_QUICK:-}" ]]; then
        write=(--write "$root/benches/RESULTS.md")
    fi
    # The RL section (benches/ray/rllib_compare.sh writes it), the cluster
    # section and the hand-kept figures survive the rewrite.
    rl_section=""
    cluster_section=""
    manual_section=""
    if [[ ${#write[@]} -gt 0 && -f "$root/benches/RESULTS.md" ]]; then
        rl_section="$(sed -n '/<!-- troupe-rl:begin -->/,/<!-- troupe-rl:end -->/p' "$root/benches/RESULTS.md")"
        cluster_section="$(sed -n '/<!-- troupe-cluster:begin -->/,/<!-- troupe-cluster:end -->/p' "$root/benches/RESULTS.md")"
        manual_section="$(sed -n '/<!-- troupe-manual:begin -->/,/<!-- troupe-manual:end -->/p' "$root/benches/RESULTS.md")"
    fi
    "$venv/bin/python" benches/ray/table.py "$out/ray.txt" "$out/troupe.txt" \
        --also "mimalloc" "$out/troupe-mimalloc.txt" \
        --command "${TROUPE_PERF_QUICK:+TROUPE_PERF_QUICK=1 }benches/ray/compare.sh${*:+ $*}" \
        --ray-version "$("$venv/bin/python" -c 'import ray; print(ray.__version__)')" \
        --troupe-version "$(git describe --always --dirty 2>/dev/null || echo unknown)" \
        --rustc "$(rustc --version)" \
        "${write[@]}"
    if [[ -n "$rl_section" ]]; then
        printf '\n%s\n' "$rl_section" >>"$root/benches/RESULTS.md"
    fi
    if [[ -n "$cluster_section" ]]; then
        printf '\n%s\n' "$cluster_section" >>"$root/benches/RESULTS.md"
    fi
    if [[ -n "$manual_section" ]]; then
        printf '\n%s\n' "$manual_section" >>"$root/benches/RESULTS.md"
    fi
fi

if [[ -n "$cluster" ]]; then
    echo "compare: running Ray's cluster (alone)" >&2
    "$venv/bin/ray" stop --force >/dev/null 2>&1 || true
    "$venv/bin/python" benches/ray/cluster_bench.py "$@" >"$out/ray-cluster.txt"
    "$venv/bin/ray" stop --force >/dev/null 2>&1 || true

    if [[ -z "$troupe_cluster_missing" ]]; then
        echo "compare: running Troupe's cluster (alone)" >&2
        if ! cargo bench -p troupe --features cluster --bench cluster_perf --quiet -- "$@" >"$out/troupe-cluster.txt"; then
            troupe_cluster_missing="cargo bench -p troupe --features cluster --bench cluster_perf failed"
            echo "troupe: not available ($troupe_cluster_missing)"
        fi
    fi

    cluster_write=()
    if [[ $# -eq 0 && -z "${TROUPE_PERF_QUICK:-}" && -z "$troupe_cluster_missing" ]]; then
        cluster_write=(--write "$root/benches/RESULTS.md")
    fi
    echo
    "$venv/bin/python" benches/ray/cluster_table.py "$out/ray-cluster.txt" "$out/troupe-cluster.txt" \
        --troupe-missing "$troupe_cluster_missing" \
        --command "${TROUPE_PERF_QUICK:+TROUPE_PERF_QUICK=1 }COMPARE_CLUSTER=$cluster benches/ray/compare.sh${*:+ $*}" \
        --ray-version "$("$venv/bin/python" -c 'import ray; print(ray.__version__)')" \
        --troupe-version "$(git describe --always --dirty 2>/dev/null || echo unknown)" \
        --rustc "$(rustc --version)" \
        "${cluster_write[@]}"
fi
