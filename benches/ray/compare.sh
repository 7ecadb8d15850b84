#!/usr/bin/env bash
# Ray and Troupe side by side, on this machine, in one run:
#
#   benches/ray/compare.sh            # full run (about 9 minutes), writes benches/RESULTS.md
#   benches/ray/compare.sh tasks      # only metrics whose name contains "tasks"
#   TROUPE_PERF_QUICK=1 benches/ray/compare.sh   # short runs, a smoke test
#
# Ray runs from a cached, git-ignored venv (.cache/ray-venv) with the pinned
# versions of benches/ray/requirements.txt. Both sides get 2 CPUs: Ray through
# ray.init(num_cpus=2), Troupe through its default (the machine's cores).
# They run one after the other, never at once; Troupe's bench is compiled
# before Ray starts.
set -euo pipefail

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

echo "compare: building Troupe's perf bench (default, and with mimalloc)" >&2
cargo bench -p troupe --bench perf --no-run --quiet
cargo bench -p troupe --bench perf --no-run --quiet --features mimalloc

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
# The RL section (benches/ray/rllib_compare.sh writes it) survives the rewrite.
rl_section=""
if [[ ${#write[@]} -gt 0 && -f "$root/benches/RESULTS.md" ]]; then
    rl_section="$(sed -n '/<!-- troupe-rl:begin -->/,/<!-- troupe-rl:end -->/p' "$root/benches/RESULTS.md")"
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
